"""Training end to end on synthetic data: files, their contents, and the model contract."""

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

import digit_classifier as dc
from conftest import FAST, run_cli

PNGS = ["confusion_matrix.png", "confusion_matrix_normalized.png", "training_curves.png",
        "misclassified.png", "samples.png"]


def test_training_run_writes_every_output(trained_synthetic):
    out, result = trained_synthetic
    for name in PNGS + ["metrics.json", "history.csv", "report.html", "model.keras"]:
        assert (out / name).is_file(), name
    assert not (out / "checkpoint").exists()  # removed once training finished
    assert not list(out.glob(".*partial*"))
    assert "test accuracy" in result.stdout
    for name in ("metrics.json", "model.keras", "confusion_matrix.png"):
        assert str((out / name).resolve()) in result.stdout


def test_metrics_json_has_the_documented_keys(trained_synthetic):
    out, _ = trained_synthetic
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "test_loss", "error_rate", "confusion_matrix", "per_class",
                "history", "config", "dataset", "timing", "versions", "interrupted"):
        assert key in metrics
    assert metrics["interrupted"] is False
    assert metrics["error_rate"] == pytest.approx(1 - metrics["test_accuracy"])
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == metrics["dataset"]["test_size"]
    assert np.trace(confusion) / confusion.sum() == pytest.approx(metrics["test_accuracy"])
    assert [row["label"] for row in metrics["per_class"]] == list(dc.DIGITS)
    assert {"precision", "recall", "f1", "support"} <= set(metrics["per_class"][0])
    assert sum(row["support"] for row in metrics["per_class"]) == 200
    assert len(metrics["history"]["loss"]) == 2 and len(metrics["history"]["val_accuracy"]) == 2
    assert metrics["dataset"] == dict(metrics["dataset"], train_size=540, validation_size=60,
                                      test_size=200, name="mnist")
    for key in ("train_seconds", "samples_per_second", "total_seconds", "load_seconds",
                "import_seconds", "evaluate_seconds", "report_seconds", "save_seconds"):
        assert metrics["timing"][key] > 0, key
    assert {"python", "keras", "numpy", "tensorflow"} <= set(metrics["versions"])
    assert metrics["config"]["epochs"] == 2 and metrics["config"]["hidden"] == [32]
    assert metrics["test_accuracy"] > 0.5  # it learned: chance is 0.1


def test_history_csv_has_one_row_per_epoch(trained_synthetic):
    out, _ = trained_synthetic
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(rows[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert float(rows[-1]["loss"]) == pytest.approx(metrics["history"]["loss"][-1], rel=1e-4)


def test_pngs_are_valid_images_of_sensible_size(trained_synthetic):
    out, _ = trained_synthetic
    for name in PNGS:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            width, height = image.size
        assert image.format == "PNG"
        assert 400 <= width <= 2000 and 250 <= height <= 2000, (name, image.size)
    with Image.open(out / "confusion_matrix.png") as image:
        assert image.size == (1000, 700)  # figure size 10x7 at 100 dpi


def test_report_html_embeds_every_png_and_the_accuracy(trained_synthetic):
    out, _ = trained_synthetic
    page = (out / "report.html").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{metrics['test_accuracy']:.4%}" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == len(PNGS)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for row in metrics["per_class"]:
        assert f"<td>{row['support']}</td>" in page


def test_misclassified_grid_shows_the_available_errors(trained_synthetic):
    out, _ = trained_synthetic
    metrics = json.loads((out / "metrics.json").read_text())
    errors = round(metrics["error_rate"] * metrics["dataset"]["test_size"])
    assert metrics["misclassified_shown"] == min(errors, 40)


def test_saved_model_loads_and_predicts_probabilities(trained_synthetic):
    import keras

    out, _ = trained_synthetic
    model = keras.models.load_model(out / "model.keras")
    probabilities = model.predict(np.zeros((3, 28, 28), np.float32), verbose=0)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_evaluate_reproduces_the_training_accuracy(trained_synthetic, synthetic_dir, tmp_path):
    out, _ = trained_synthetic
    result = run_cli("--evaluate", "--model", out / "model.keras", "--data-dir", synthetic_dir,
                     "--output-dir", tmp_path, "--quiet")
    assert result.returncode == 0, result.stderr
    trained = json.loads((out / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    assert evaluated["test_accuracy"] == trained["test_accuracy"]
    assert evaluated["confusion_matrix"] == trained["confusion_matrix"]
    assert evaluated["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-5)
    for name in PNGS:
        assert (tmp_path / name).is_file() == (name != "training_curves.png")
    assert not (tmp_path / "model.keras").exists()


def test_fashion_mnist_uses_clothing_names(tmp_path, synthetic_dir):
    result = run_cli("--dataset", "fashion-mnist", "--data-dir", synthetic_dir,
                     "--output-dir", tmp_path, *FAST)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["label"] for row in metrics["per_class"]] == list(
        dc.DATASETS["fashion-mnist"]["classes"])
    assert "Ankle boot" in result.stdout
    assert "Fashion-MNIST" in (tmp_path / "report.html").read_text()


def test_quiet_prints_nothing(tmp_path, synthetic_dir):
    result = run_cli("--data-dir", synthetic_dir, "--output-dir", tmp_path, "--quiet",
                     "--epochs", "1", "--hidden", "8")
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == ""


def test_output_dir_that_is_a_file_fails_before_training(tmp_path, synthetic_dir):
    target = tmp_path / "taken"
    target.write_text("keep me")
    result = run_cli("--data-dir", synthetic_dir, "--output-dir", target)
    assert result.returncode == 1
    assert "not a directory" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert target.read_text() == "keep me"


# Contract tests on the model itself (in-process).

def test_default_model_shape_and_parameter_count():
    model = dc.build_model(dc.Config().hidden)
    assert model.input_shape == (None, 28, 28) and model.output_shape == (None, 10)
    expected = 0
    widths = [784, *dc.Config().hidden, 10]
    for fan_in, fan_out in zip(widths, widths[1:]):
        expected += fan_in * fan_out + fan_out
    assert model.count_params() == expected
    assert [layer.activation.__name__ for layer in model.layers if hasattr(layer, "units")] == \
        ["relu"] * len(dc.Config().hidden) + ["softmax"]


def test_seed_network_has_99710_parameters():
    assert dc.build_model((100, 100, 100)).count_params() == 99_710


def test_no_hidden_layer_is_softmax_regression():
    model = dc.build_model(())
    assert model.count_params() == 784 * 10 + 10


def test_dropout_adds_one_layer_per_hidden_layer():
    import keras

    model = dc.build_model((64, 32, 16), dropout=0.3)
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == 3 and all(layer.rate == 0.3 for layer in dropouts)
    names = [layer.name for layer in model.layers]
    assert names.index("dropout_1") == names.index("hidden_1") + 1


def test_augmentation_acts_in_training_only():
    import keras

    keras.utils.set_random_seed(0)
    model = dc.build_model((16,), augment=True)
    augment = keras.Sequential(model.layers[:4])  # reshape, rotate, shift, zoom
    images = np.zeros((8, 28, 28), np.float32)
    images[:, 10:18, 12:16] = 1.0
    training = np.asarray(augment(images, training=True))[..., 0]
    inference = np.asarray(augment(images, training=False))[..., 0]
    np.testing.assert_array_equal(inference, images)
    assert not np.allclose(training, images)
    np.testing.assert_array_equal(model.predict(images, verbose=0),
                                  model.predict(images, verbose=0))


def test_score_matches_a_hand_computed_example():
    probabilities = np.array([[0.9, 0.1] + [0] * 8, [0.2, 0.8] + [0] * 8,
                              [0.6, 0.4] + [0] * 8], dtype=np.float32)
    labels = np.array([0, 1, 1])
    scores = dc.score(probabilities, labels)
    assert scores["test_accuracy"] == pytest.approx(2 / 3)
    assert scores["confusion_matrix"][1, 0] == 1 and scores["confusion_matrix"][0, 0] == 1
    assert scores["precision"][0] == pytest.approx(0.5) and scores["recall"][1] == pytest.approx(0.5)
    assert scores["test_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4])), rel=1e-5)
    assert dc.top_confusions(scores["confusion_matrix"], dc.DIGITS) == [("1", "0", 1)]


def test_patience_stops_early_and_keeps_the_best_epoch():
    import keras

    from conftest import synthetic_digits

    x, y = synthetic_digits(600, seed=4)
    x = x.astype(np.float32) / 255
    y = y.astype(np.int32)
    # Every validation label is wrong, so validation loss worsens as the network learns.
    data = dict(x_train=x[100:], y_train=y[100:], x_val=x[:100], y_val=(y[:100] + 1) % 10)
    config = dc.Config(hidden=(32,), dropout=0.0, epochs=30, batch_size=50, patience=1,
                       lr_schedule="constant", steps_per_execution=1, quiet=True)
    keras.utils.set_random_seed(0)
    model = dc.compile_model(dc.build_model(config.hidden), config, steps_per_epoch=10)

    class NoSignal:
        received = None

    training = dc.train(model, data, config, NoSignal())
    assert training["kept_epoch"] == 1
    assert training["epochs_completed"] == 2  # one epoch without improvement, then stop
    losses = [row["val_loss"] for row in training["history"]]
    assert losses[1] > losses[0]
