"""Fixtures: synthetic IDX data, short training runs shared by many tests, the real MNIST and
Fashion-MNIST files. The helpers they use are in helpers.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (FAST, PICTURED, ROOT, built_once, cli_environment, run_cli, run_main,
                     write_dataset)


def pytest_sessionstart(session):
    """Keras imported as a run's start imports it (digitkit.backend.imported_once), before
    the test modules import it at their top: no garbage collection in the tests then walks
    TensorFlow's millions of start-up objects (an in-process training run about a fifth
    faster). pytest-xdist's controller runs no test, and imports nothing."""
    config = session.config
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    from digitkit.backend import NativeStderrSilenced, imported_once

    with NativeStderrSilenced():  # pytest captures nothing yet: TensorFlow's notices
        imported_once("keras", [])


@pytest.fixture(autouse=True)
def no_default_data_dir(monkeypatch):
    """Tests name their data: a developer's DIGIT_CLASSIFIER_DATA_DIR does not reach them."""
    monkeypatch.delenv("DIGIT_CLASSIFIER_DATA_DIR", raising=False)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """A small learnable dataset in the standard gzip IDX format."""
    return write_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def trained_synthetic(tmp_path_factory, synthetic_dir):
    """One short training run of the real CLI on synthetic data, shared by report tests; in a
    real process, so that what it prints is all a user would see."""
    def train(folder):
        result = run_cli("--data-dir", synthetic_dir, "--output-dir", folder / "out", *PICTURED)
        assert result.returncode == 0, result.stderr
        (folder / "stdout").write_text(result.stdout)
        (folder / "stderr").write_text(result.stderr)

    folder = built_once(tmp_path_factory, "trained_synthetic", train)
    return folder / "out", subprocess.CompletedProcess(
        [], 0, (folder / "stdout").read_text(), (folder / "stderr").read_text())


# What a fresh process holds after one training run on TensorFlow, as a user's run leaves it
# (TensorFlow takes thread settings, and a library's imports happen, only once a process).
FRESH_RUN = """
import gc, importlib, importlib.util, json, sys
import digit_classifier
status = digit_classifier.main(sys.argv[1:])
import tensorflow as tf
def loaded(*names):
    return [name for name in names if name in sys.modules]
facts = dict(status=status, collecting=gc.isenabled(),
             inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
             trained=loaded("jax", "sklearn", "pandas", "cv2", "matplotlib", "scipy.stats"),
             exporters=loaded("tf2onnx", "onnx", "onnxruntime", "ai_edge_litert"))
from digitkit import plots
facts.update(drawing=loaded("jax", "scipy.stats"), seaborn=plots.sns.__name__)
for name in ("jax", "sklearn", "pandas", "cv2", "matplotlib.pyplot", "scipy.stats"):
    if importlib.util.find_spec(name.split(".")[0]):
        importlib.import_module(name)  # left out of the run, yet importable after it
facts["importable"] = True
print(json.dumps(facts))
"""


@pytest.fixture(scope="session")
def fresh_run(tmp_path_factory, synthetic_dir):
    """The facts FRESH_RUN prints: a short training run (--no-plots) in a process of its own,
    then what that process holds. One process serves every test that asks about a fresh
    start: its threads, the libraries it loaded, and those it did not."""
    def train(folder):
        result = subprocess.run(
            [sys.executable, "-c", FRESH_RUN, "--data-dir", str(synthetic_dir),
             "--output-dir", str(folder / "out"), *FAST, "--quiet"],
            capture_output=True, text=True, timeout=300, cwd=ROOT, env=cli_environment())
        assert result.returncode == 0, result.stderr
        (folder / "facts.json").write_text(result.stdout.splitlines()[-1])

    return json.loads((built_once(tmp_path_factory, "fresh_run", train) / "facts.json")
                      .read_text())


@pytest.fixture(scope="session")
def jax_run(tmp_path_factory, synthetic_dir):
    """One training run of the real CLI on Keras' JAX backend (a process of its own: Keras
    fixes its backend when first imported), shared by the tests of that backend: a
    distorting, deskewing committee of two, logged for TensorBoard."""
    pytest.importorskip("jax", reason="the JAX backend needs jax (requirements-dev.txt)")

    def train(folder):
        result = run_cli("--data-dir", synthetic_dir, "--output-dir", folder / "out",
                         "--backend", "jax", *FAST, "--augment", "elastic", "--deskew",
                         "--committee", "2", "--tensorboard")
        assert result.returncode == 0, result.stderr
        # Nothing on stderr: not even the notices of TensorFlow, which --tensorboard imports.
        assert result.stderr == "", result.stderr
        (folder / "stdout").write_text(result.stdout)

    folder = built_once(tmp_path_factory, "jax_run", train)
    return folder / "out", (folder / "stdout").read_text()


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
def fashion_dir():
    """The official Fashion-MNIST files, found via FASHION_MNIST_DIR (Debian's
    dataset-fashion-mnist package puts them in /usr/share/datasets/fashion-mnist)."""
    path = os.environ.get("FASHION_MNIST_DIR")
    if not path or not (Path(path) / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("FASHION_MNIST_DIR does not hold the Fashion-MNIST files: "
                    "apt-get install -y dataset-fashion-mnist (bash .ci/run does)")
    return Path(path)


@pytest.fixture(scope="session")
def trained_mnist(tmp_path_factory, mnist_dir):
    """A model trained with the default settings on full MNIST, as a user would, but for 3
    epochs instead of 30: about 98% on the test set, enough for what its tests check (they
    were re-checked at this size: docs/development.md). No test looks at its pictures, so
    it draws none (--no-plots)."""
    def train(folder):
        result = run_main("--data-dir", mnist_dir, "--output-dir", folder / "out", "--quiet",
                          "--epochs", "3", "--no-plots")
        assert result.returncode == 0, result.stderr

    return built_once(tmp_path_factory, "trained_mnist", train) / "out"


REAL_DATA = {"mnist_dir", "fashion_dir", "trained_mnist"}


def pytest_collection_modifyitems(items):
    """Tests on the real datasets are slow ones too: they train or read 70,000 images."""
    for item in items:
        if REAL_DATA & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
