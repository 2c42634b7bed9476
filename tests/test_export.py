"""--export: the saved model in ONNX, LiteRT and SavedModel form, each read back in its own
runtime (onnxruntime, LiteRT's interpreter, TensorFlow: the few lines docs/export.md shows,
in digitkit/export.py's RUNNERS) and answering as the Keras model does."""

import json
import subprocess
import sys

import numpy as np
import pytest

from digitkit import data
from helpers import FAST, ROOT, built_once, cli_environment, run_main, synthetic_digits

FILES = {"onnx": "model.onnx", "litert": "model.tflite", "savedmodel": "savedmodel"}


def exported_answers(model, out, export_format, images):
    """Export model with the CLI into out; the export's and Keras' probabilities for images."""
    import keras

    result = run_main("--export", export_format, "--model", model, "--output-dir", out)
    assert result.returncode == 0, result.stderr
    assert "checked in " in result.stdout and "the same top class for all" in result.stdout
    from digitkit.export import RUNNERS  # imported now: Keras is up

    got = np.asarray(RUNNERS[export_format](out / FILES[export_format], images))
    expected = keras.models.load_model(model).predict(images, verbose=0)
    return got, expected


@pytest.mark.parametrize("export_format", ["onnx", "litert", "savedmodel"])
def test_each_export_answers_as_keras_on_1000_real_test_images(trained_mnist, mnist_dir, tmp_path,
                                                               export_format):
    arrays, _ = data.read_data_dir(mnist_dir, "mnist")
    images = (arrays["x_test"][:1000] / 255).astype(np.float32)
    got, expected = exported_answers(trained_mnist / "model.keras", tmp_path, export_format,
                                     images)
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    about = json.loads((tmp_path / (FILES[export_format] + ".json"
                                    if export_format != "savedmodel" else "savedmodel.json"))
                       .read_text())
    recorded = json.loads((trained_mnist / "metrics.json").read_text())
    assert about["test_accuracy"] == recorded["test_accuracy"]
    assert about["classes"] == list("0123456789") and about["input"]["shape"] == [None, 28, 28]
    assert about["input"]["polarity"] == "white ink on black"
    assert about["check"]["checked"] and about["check"]["largest_difference"] <= 1e-4


@pytest.fixture(scope="session")
def committee(tmp_path_factory, synthetic_dir):
    """A committee of two trained on the synthetic data: one model for every format."""
    def train(folder):
        trained = run_main("--data-dir", synthetic_dir, "--output-dir", folder / "out", *FAST,
                           "--committee", "2", "--quiet")
        assert trained.returncode == 0, trained.stderr

    return built_once(tmp_path_factory, "committee", train) / "out" / "model.keras"


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["onnx", "litert"])
def test_a_committee_exports_and_answers_as_keras(committee, tmp_path, export_format):
    images, _ = synthetic_digits(300, seed=9)
    got, expected = exported_answers(committee, tmp_path / "export", export_format,
                                     (images / 255).astype(np.float32))
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.slow
def test_a_deskewing_model_is_refused_in_one_line_where_the_format_cannot_hold_it(
        synthetic_dir, tmp_path):
    trained = run_main("--data-dir", synthetic_dir, "--output-dir", tmp_path, *FAST,
                       "--deskew", "--no-plots", "--quiet")
    assert trained.returncode == 0, trained.stderr
    for export_format in ("onnx", "litert"):
        refused = run_main("--export", export_format, "--model", tmp_path / "model.keras",
                           "--output-dir", tmp_path / "export")
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "deskews its input (--deskew)" in refused.stderr
        assert "--export savedmodel" in refused.stderr
        assert not (tmp_path / "export" / FILES[export_format]).exists()
    # Among several formats, one that refuses stops the run before any is written.
    refused = run_main("--export", "savedmodel", "onnx", "--model", tmp_path / "model.keras",
                       "--output-dir", tmp_path / "export")
    assert refused.returncode == 1 and "--export onnx: the model deskews" in refused.stderr
    assert not (tmp_path / "export" / "savedmodel").exists()
    assert not (tmp_path / "export" / "savedmodel.json").exists()
    images, _ = synthetic_digits(100, seed=9)
    got, expected = exported_answers(tmp_path / "model.keras", tmp_path / "export",
                                     "savedmodel", (images / 255).astype(np.float32))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_missing_converter_is_named_with_its_pip_install(trained_synthetic, tmp_path,
                                                           monkeypatch):
    import importlib.util

    from digitkit import backend
    from digitkit.config import Config

    backend.start(Config())
    from digitkit import export

    found = importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec",
                        lambda name, *args: None if name == "tf2onnx" else found(name, *args))
    result = run_main("--export", "onnx", "--model", trained_synthetic[0] / "model.keras",
                      "--output-dir", tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: --export onnx needs tf2onnx; install with: "
                                     "pip install tf2onnx")
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("argv", [["--help"], ["--export", "keras"], ["--export", "onnx",
                                                                      "--epochs", "3"]])
def test_help_and_usage_errors_import_no_export_package(argv):
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, json, digit_classifier\n"
         "try:\n    digit_classifier.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
         "print(json.dumps([m for m in ('tf2onnx', 'onnx', 'onnxruntime', 'ai_edge_litert', "
         "'tensorflow') if m in sys.modules]))", *argv],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=cli_environment())
    assert json.loads(probe.stdout.splitlines()[-1]) == [], probe.stderr


@pytest.mark.slow
def test_a_training_run_imports_no_export_package(fresh_run):
    assert fresh_run["status"] == 0  # conftest.FRESH_RUN: a training run in its own process
    assert fresh_run["exporters"] == []
