"""Shared fixtures: the real CLI as a subprocess, synthetic IDX data, and the real MNIST files."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "digit_classifier.py"
sys.path.insert(0, str(ROOT))

# Flags that keep a synthetic run to a couple of seconds of training. The synthetic classes
# are bars two pixels apart, which the default distortion (shifts of up to 2 px) would blur
# into each other, so these runs train on the images as they are.
FAST = ["--epochs", "2", "--hidden", "32", "--batch-size", "64", "--augment", "none"]


def run_cli(*args, timeout=300, env=None, cwd=None):
    """Run the real command line; return the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=cli_environment(env), cwd=cwd or ROOT)


def cli_environment(extra=None):
    """The environment the CLI runs in: this one, less what importing TensorFlow here added.

    Importing TensorFlow in this test process sets TF_CPP_MIN_LOG_LEVEL=1 in its environment;
    a user's shell has none, so the CLI runs here without it too.
    """
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
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


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """A small learnable dataset in the standard gzip IDX format."""
    return write_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def trained_synthetic(tmp_path_factory, synthetic_dir):
    """One short training run of the real CLI on synthetic data, shared by report tests."""
    out = tmp_path_factory.mktemp("trained")
    result = run_cli("--data-dir", synthetic_dir, "--output-dir", out, *FAST)
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.fixture(scope="session")
def mnist_dir():
    """The official MNIST files (60,000 training, 10,000 test images), found via MNIST_DIR."""
    path = os.environ.get("MNIST_DIR")
    if path and not Path(path).is_absolute():
        path = str(ROOT / path)  # relative to the project root, as .ci/run sets it
    if not path:
        pytest.skip("MNIST_DIR is not set: real-data tests need ../shared/data/mnist "
                    "(bash .ci/run sets it)")
    if not (Path(path) / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST_DIR={path} holds no t10k-images-idx3-ubyte.gz")
    return Path(path)


@pytest.fixture(scope="session")
def trained_mnist(tmp_path_factory, mnist_dir):
    """A model trained with the default settings on full MNIST, as a user would."""
    out = tmp_path_factory.mktemp("mnist_default")
    result = run_cli("--data-dir", mnist_dir, "--output-dir", out, "--quiet", timeout=900)
    assert result.returncode == 0, result.stderr
    return out
