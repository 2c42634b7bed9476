"""What the tests share: the real CLI (as a subprocess or in-process), synthetic IDX data, and
a folder built once per test run. Imported by the tests and by conftest.py, which holds only
fixtures (pytest advises against importing from conftest.py)."""

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "digit_classifier.py"
sys.path.insert(0, str(ROOT))

# Flags that keep a synthetic run to a couple of seconds of training. The synthetic classes
# are bars two pixels apart, which the default distortion (shifts of up to 2 px) would blur
# into each other, so these runs train on the images as they are. PICTURED runs draw the
# pictures too (some three seconds a run): for the tests that look at them; the others
# leave them out (--no-plots).
PICTURED = ["--epochs", "2", "--hidden", "32", "--batch-size", "64", "--augment", "none"]
FAST = [*PICTURED, "--no-plots"]


def run_cli(*args, timeout=300, env=None, cwd=None):
    """Run the real command line; return the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=cli_environment(env), cwd=cwd or ROOT)


def run_main(*args):
    """Run the command line in this process: main(argv) with its output captured, as a
    CompletedProcess like run_cli's. Some three seconds faster a run (TensorFlow is already
    imported); for tests where only exit statuses, messages and files matter. Signals,
    locks held by another process, framework noise on stderr, --deterministic (which cannot
    be switched off again in a process), another backend, another environment or working
    directory need run_cli's real process."""
    import contextlib
    import io

    import digit_classifier

    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = digit_classifier.main(argv)
        except SystemExit as exit:  # argparse: --help (0) or a usage error (2)
            status = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session()  # each run's graphs, not all of them
    return subprocess.CompletedProcess(argv, status, stdout.getvalue(), stderr.getvalue())


def cli_environment(extra=None):
    """The environment the CLI runs in: this one, less what importing TensorFlow here added.

    Importing TensorFlow in this test process sets TF_CPP_MIN_LOG_LEVEL=1 in its environment;
    a user's shell has none, so the CLI runs here without it too. A developer's own
    DIGIT_CLASSIFIER_DATA_DIR (--data-dir's default) is left out too: tests name their data.
    """
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "DIGIT_CLASSIFIER_DATA_DIR")}
    env.update(extra or {})
    return env


def write_idx(path, array):
    """Write a uint8 array in IDX format, gzip-compressed when the name ends in .gz."""
    header = (0x0800 + array.ndim).to_bytes(4, "big")
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    Path(path).write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)


def synthetic_digits(count, seed):
    """Images a small network separates in a few epochs: one bright bar per class, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row = 3 + 2 * label + rng.integers(0, 2)
        images[i, row:row + 2, 4:24] = 255
    return images, labels.astype(np.uint8)


def write_dataset(directory, train=600, test=200, gz=True):
    """The four standard IDX files of a synthetic dataset in directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    x_train, y_train = synthetic_digits(train, seed=1)
    x_test, y_test = synthetic_digits(test, seed=2)
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", x_train)
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", y_train)
    write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", x_test)
    write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", y_test)
    return directory


def built_once(tmp_path_factory, name, build):
    """The folder `name`, made by build(folder) once per test run, even when pytest-xdist
    spreads the tests over several workers: the first to arrive builds it while the others
    wait on the lock, then all read it."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this run's folder, which its workers share
    folder = base / name
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / "complete").write_text("")
    return folder


def built(config):
    """The model the script's recipe builds and compiles for config, trained for no epoch:
    train_and_evaluate on a few blank images, stopping before the test set."""
    import dataclasses

    import digit_classifier
    from digitkit.interrupts import StopSignals

    blank, labels = np.zeros((8, 28, 28), np.float32), np.zeros(8, np.int32)
    data = dict(x_train=blank, y_train=labels, x_val=blank[:0], y_val=labels[:0])
    result = digit_classifier.train_and_evaluate(
        dataclasses.replace(config, epochs=0, quiet=True), data, StopSignals(), test=False)
    return result["model"]
