"""Guard rails: files written whole or not at all, one run per output folder, memory checked.

Everything here runs before TensorFlow is imported, so a busy folder, a full disk, a missing
model or a network too large for memory fails in a blink, before anything is touched. Imports
nothing heavy.
"""

import csv
import dataclasses
import importlib.util
import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from digitkit.config import (EVAL_BATCH_SIZE, IMAGE_SHAPE, NUM_CLASSES, RunError,
                             suggested_command)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None


def write_atomically(path, write):
    """Call write(tmp) on a temporary file beside path, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:  # named by the file the user will look for, not the temporary one
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path, text):
    """Write a text file atomically."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path, data):
    """Write JSON atomically, two-space indented."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path, columns, rows):
    """Write dict rows as CSV atomically; floats to 6 significant digits."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else f"{row[c]:.6g}" if isinstance(row[c], float)
                         else row[c] for c in columns])
    return write_text(path, buffer.getvalue())


def write_history_csv(path, rows):
    """One row per finished epoch with every metric recorded."""
    return write_csv(path, list(dict.fromkeys(key for row in rows for key in row)) or ["epoch"],
                     rows)


# Directories this process created, removed again if the run fails before writing a result.
CREATED_DIRS = []
STAGING_DIRS = []  # this process's unpublished run folders, dropped if the run fails
# The files of one training run, which belong together: published, or moved aside, as a set.
RUN_FILES = ("model.keras", "metrics.json", "report.html", "history.csv", "confusion_matrix.png",
             "confusion_matrix_normalized.png", "training_curves.png", "misclassified.png",
             "calibration.png", "robustness.png", "corruptions.png", "samples.png",
             "tuning.csv", "tuning_history.png", "tuning_importance.png", "comparison.csv",
             "comparison.md", "comparison.png", "comparison.json")
LOCK_NAME = ".digit_classifier.lock"
CHECKPOINT_DIR = "checkpoint"  # in the output folder: an unfinished run's last epoch
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


def parameter_count(hidden, committee=1):
    """Weights and biases of build_model's network, counted without building it."""
    widths = [math.prod(IMAGE_SHAPE), *hidden, NUM_CLASSES]
    return committee * sum((a + 1) * b for a, b in zip(widths, widths[1:]))


# What training holds in memory, by this project's accounting (README, "Guard rails"): per
# weight its value, its gradient and Adam's two moments; per unit and image of a batch the
# pre-activation, the activation, the dropout mask and the gradient; the images as float32,
# twice (the arrays and Keras' copy); and the framework itself.
BYTES_PER_WEIGHT = 4 * 4
BYTES_PER_ACTIVATION = 4 * 4
FRAMEWORK_BYTES = 800 * 2 ** 20  # TensorFlow and Keras loaded, before any model: about 0.8 GB
TRAINING_IMAGES = 60000  # both data sets; an estimate made before the data is read


def training_memory(config, specs=None):
    """Estimated peak bytes of training config (each of specs' hidden layers, the largest)."""
    def estimate(hidden):
        """(bytes, weights) of training one set of hidden widths."""
        weights = parameter_count(hidden, config.committee)
        batch = max(config.batch_size, EVAL_BATCH_SIZE)
        units = config.committee * (math.prod(IMAGE_SHAPE) + sum(hidden) + NUM_CLASSES)
        images = 2 * 4 * math.prod(IMAGE_SHAPE) * (TRAINING_IMAGES + 10000)
        return (weights * BYTES_PER_WEIGHT + batch * units * BYTES_PER_ACTIVATION + images
                + FRAMEWORK_BYTES), weights
    return max(estimate(tuple(hidden)) for hidden in (specs or [config.hidden]))


def available_memory():
    """Bytes this process can still use: the system's available memory, or a container's
    (cgroup) limit less its usage, whichever is smaller; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes",
                                    "memory/memory.usage_in_bytes")):
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            usage = Path("/sys/fs/cgroup", usage_file).read_text().strip()
            if limit.isdigit() and int(limit) < 2 ** 60:
                found.append(int(limit) - int(usage))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def check_memory(config, specs=None):
    """Refuse, before TensorFlow is even imported, a model whose training cannot fit in memory."""
    needed, weights = training_memory(config, specs)
    available = available_memory()
    if available is not None and needed > available:
        what = ("--hidden " + " ".join(map(str, config.hidden)) if not specs
                else "the largest --compare SPEC")
        raise RunError(f"{what} needs about {needed / 2 ** 30:.1f} GiB of memory to train "
                       f"({weights:,} weights, with gradients and Adam's state), but only "
                       f"{available / 2 ** 30:.1f} GiB is available; use narrower or fewer "
                       f"layers, or a smaller --committee")
    return needed, weights


def train_first(config, model_path):
    """What to run to make the missing model, with the user's own data and output flags."""
    output_dir = str(Path(model_path).parent)
    return "train one first: " + suggested_command(
        dataclasses.replace(config, output_dir=output_dir))


def require_model_file(path, config):
    """Fail before any slow import when the saved model is not there."""
    if Path(path).exists() and not Path(path).is_file():  # a folder, a device, a pipe
        raise RunError(f"{path}: not a file; a saved model is the model.keras file a "
                       f"training run writes")
    if not Path(path).is_file():
        raise RunError(f"{path}: no saved model there; {train_first(config, path)}")


def check_installed(config):
    """Refuse, before any work, a flag whose package is missing (--tensorboard)."""
    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise RunError("--tensorboard needs the tensorboard package; install it with: "
                       "pip install -r requirements.txt")


def checkpoint_state(output_dir):
    """The state.json of the checkpoint an unfinished run left in output_dir (its last
    finished epoch, for --resume), or None when there is none."""
    state = Path(output_dir) / CHECKPOINT_DIR / "state.json"
    if not state.is_file():
        return None
    try:
        return json.loads(state.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{state}: unreadable checkpoint ({err})") from None


def refuse_unfinished_run(output_dir, config):
    """Refuse to train afresh over a run that left a checkpoint, unless --resume continues it."""
    state = None if config.resume else checkpoint_state(output_dir)
    if state is not None:
        raise RunError(f"{Path(output_dir) / CHECKPOINT_DIR} holds an unfinished run "
                       f"({state.get('epochs_done', '?')} of its epochs done); pass --resume "
                       f"to continue it, or delete it to start over")


def exit_status(run, *args):
    """run(*args)'s exit status, with every failure turned into one line on stderr.

    A RunError exits 1 (2 for a UsageError), an output that cannot be written 1, Ctrl-C 130.
    However it ends, this process's locks are released, and a run that failed before
    writing any result takes back the folders it created.
    """
    failed = True
    try:
        status = run(*args)
        failed = False
        return status
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.status
    except OSError as err:  # output that cannot be written: full disk, permissions
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        release_output_dirs(failed)
