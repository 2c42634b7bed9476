"""Output folders: one run per folder at a time, and a run's files published as one set.

A run locks its output folder for the life of its process (the operating system drops the
lock however the process ends), writes its files into a hidden staging folder there, and
publishes them together when it succeeds: the previous run's set moves to previous/ first,
so the folder never holds half of one run and half of another. A run that fails takes back
what it added. Imports nothing heavy.
"""

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

from digitkit.errors import RunError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None

log = logging.getLogger("digit_classifier")

# Directories this process created, removed again if the run fails before writing a result.
CREATED_DIRS = []
STAGING_DIRS = []  # this process's unpublished run folders, dropped if the run fails
# The files of one training run, which belong together: published, or moved aside, as a set.
RUN_FILES = ("model.keras", "metrics.json", "report.html", "history.csv", "confusion_matrix.png",
             "confusion_matrix_normalized.png", "training_curves.png", "misclassified.png",
             "calibration.png", "robustness.png", "corruptions.png", "samples.png",
             "tuning.csv", "tuning_history.png", "tuning_importance.png", "comparison.csv",
             "comparison.md", "comparison.png", "comparison.json")
# What describes the model a training run saved: --evaluate's folder and --predict's files.
# They move to previous/ with that model when a new training run replaces it.
MODEL_NOTES = ("evaluation", "predictions.csv", "predictions.png", "explain")
LOCK_NAME = ".digit_classifier.lock"
HELD_LOCKS = {}  # resolved output directory -> (its open, locked lock file, whether new)


def prepare_output_dir(path, lock=False, what="run"):
    """Create the output directory, lock it for this run if asked, and prove it writable.

    All before any training starts, and before anything in the directory is touched.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"--output-dir {path}: exists and is not a directory")
    try:
        missing = [parent for parent in (path, *path.parents) if not parent.exists()]
        path.mkdir(parents=True, exist_ok=True)
        CREATED_DIRS.extend(missing)
        if lock:
            lock_output_dir(path, what)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RunError(f"--output-dir {path}: not writable ({err.strerror})") from None
    return path.resolve()


def lock_output_dir(path, what):
    """Hold an OS lock on the directory's lock file for the life of this process.

    The operating system releases it when the process ends, however it ends, so a killed run
    leaves no stale lock. A second run finds it held and stops before touching anything.
    """
    if fcntl is None:
        return
    key = Path(path).resolve()
    if key in HELD_LOCKS:
        return
    lock_path = key / LOCK_NAME
    created = not lock_path.exists()
    try:  # never through a link: a planted one would have the run write where it points
        handle = os.fdopen(os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644),
                           "r+")
    except OSError:
        if os.path.islink(lock_path):
            raise RunError(f"{lock_path} is a symbolic link, not this program's lock file; "
                           f"remove it") from None
        raise  # the folder's own trouble (read-only, full): prepare_output_dir names it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunError(f"--output-dir {path} is in use by {holder}; wait for it to finish, "
                       f"or pass another --output-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} ({what} started "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    handle.flush()
    HELD_LOCKS[key] = (handle, created)


def staging_dir(output_dir):
    """A hidden folder in output_dir where a run writes its files, to publish them whole.

    The run holds the folder's lock, so any other staging folder there is a killed run's
    leftover: it goes.
    """
    for stale in Path(output_dir).glob(".run-*"):
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(output_dir) / f".run-{os.getpid()}"
    stage.mkdir()
    STAGING_DIRS.append(stage)
    return stage


def publish(stage, output_dir, names=RUN_FILES, prefix=""):
    """Put the staged files in output_dir as one set; returns where the previous set went.

    A previous set's files (those of names there) move first, all of them, to
    previous/<prefix><when it finished>/: nothing a user saved is overwritten, and the folder
    never holds half of one run and half of another. Each move is a rename within the
    folder, so a full disk cannot stop it midway.
    """
    output_dir = Path(output_dir)
    old = [output_dir / name for name in names if (output_dir / name).exists()]
    moved = None
    if old:
        finished = next((path for path in old if path.name == "metrics.json"), old[0])
        moved = output_dir / "previous" / (prefix + time.strftime(
            "%Y-%m-%d_%H-%M-%S", time.localtime(finished.stat().st_mtime)))
        while moved.exists():
            moved = moved.with_name(moved.name + "+")
        moved.mkdir(parents=True)
        for path in old:
            os.replace(path, moved / path.name)
    for path in sorted(stage.iterdir()):
        os.replace(path, output_dir / path.name)
    stage.rmdir()
    STAGING_DIRS.remove(stage)
    return moved


def release_output_dirs(failed):
    """Drop this process's locks. After a failure, take back what the run added before it
    wrote any result: a lock file it created, and the directories it created, if empty."""
    for key, (handle, created) in list(HELD_LOCKS.items()):
        if failed and created:
            (key / LOCK_NAME).unlink(missing_ok=True)
        handle.close()
        del HELD_LOCKS[key]
    for stage in STAGING_DIRS:  # an unpublished set: the previous one stays as it was
        shutil.rmtree(stage, ignore_errors=True)
    STAGING_DIRS.clear()
    if failed:
        for directory in CREATED_DIRS:  # deepest first; non-empty ones stay
            try:
                directory.rmdir()
            except OSError:
                pass
    CREATED_DIRS.clear()


@contextlib.contextmanager
def staged(output_dir, what="run", names=None, prefix=""):
    """A staging folder in output_dir for the block to write a run's files into.

    Published as one set when the block ends (the previous set moves to previous/, and the
    log says where), dropped when it raises: the previous set then stays as it was. names:
    the files of a set, RUN_FILES; for a training run (what="run") with MODEL_NOTES too.
    """
    if names is None:
        names = RUN_FILES + MODEL_NOTES if what == "run" else RUN_FILES
    stage = staging_dir(output_dir)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        STAGING_DIRS.remove(stage)
        raise
    moved = publish(stage, output_dir, names, prefix)
    if moved:
        log.info(f"the previous {what}'s files are now in {moved}")
