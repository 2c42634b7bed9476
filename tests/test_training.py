"""Training end to end on synthetic data: files, their contents, and the model contract."""

import csv
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import digit_classifier as dc
from digitkit import augment, backend, metrics, networks, plots, report
from digitkit.checkpoint import Checkpoint
from digitkit.config import DATASETS, DIGITS, Config
from digitkit.errors import RunError
from digitkit.interrupts import StopSignals
from helpers import FAST, built, run_main

PNGS = ["confusion_matrix.png", "confusion_matrix_normalized.png", "training_curves.png",
        "misclassified.png", "samples.png", "calibration.png", "robustness.png", "corruptions.png"]


def test_training_run_writes_every_output(trained_synthetic):
    out, result = trained_synthetic
    for name in PNGS + ["metrics.json", "history.csv", "report.html", "model.keras"]:
        assert (out / name).is_file(), name
    assert not (out / "checkpoint").exists()  # removed once training finished
    assert not list(out.glob(".*partial*"))
    assert "test accuracy" in result.stdout
    assert result.stderr == ""  # a default run: no framework noise, no warning
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
    assert [row["label"] for row in metrics["per_class"]] == list(DIGITS)
    assert {"precision", "recall", "f1", "support"} <= set(metrics["per_class"][0])
    assert sum(row["support"] for row in metrics["per_class"]) == 200
    assert len(metrics["history"]["loss"]) == 2 and len(metrics["history"]["val_accuracy"]) == 2
    assert metrics["dataset"] == dict(metrics["dataset"], train_size=540, validation_size=60,
                                      test_size=200, name="mnist")
    timing = metrics["timing"]
    stages = ("load_seconds", "import_seconds", "train_seconds", "evaluate_seconds",
              "save_seconds", "robustness_seconds", "report_seconds")
    assert all(timing[stage] >= 0 for stage in stages)
    # The stages happen one after another within the run, but for the pictures, drawn while
    # the robustness check runs: together no longer than the run.
    one_after_another = sum(timing[stage] for stage in stages[:-2])
    assert one_after_another + max(timing["robustness_seconds"], timing["report_seconds"]) \
        <= timing["total_seconds"] + 0.01
    # Training's own parts: the first epoch, the second, and the checkpoint after each.
    parts = ("first_epoch_seconds", "later_epochs_seconds", "checkpoint_seconds")
    assert all(timing[part] > 0 for part in parts)
    assert sum(timing[part] for part in parts) <= timing["train_seconds"] + 0.01
    assert timing["samples_per_second"] == pytest.approx(
        2 * 540 / timing["train_seconds"], rel=0.01)  # 2 epochs of 540 training images
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
        assert 400 <= width <= 2000 and 200 <= height <= 2000, (name, image.size)
    with Image.open(out / "confusion_matrix.png") as image:
        assert image.size == (1000, 700)  # figure size 10x7 at 100 dpi


@pytest.mark.slow
def test_no_plots_writes_every_record_and_no_picture(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    result = run_main("--data-dir", synthetic_dir, "--output-dir", out, *FAST, "--no-plots",
                      "--quiet")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        "history.csv", "metrics.json", "model.keras", "report.html"]
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["plots"] is False and len(record["robustness"]["corruptions"]) == 9
    page = (out / "report.html").read_text()
    assert "None drawn (--no-plots)" in page and "data:image/png" not in page
    assert "Robustness" in page and "Calibration" in page  # the tables are all there
    evaluated = run_main("--evaluate", "--model", out / "model.keras", "--data-dir",
                         synthetic_dir, "--output-dir", out, "--no-plots", "--quiet")
    assert evaluated.returncode == 0, evaluated.stderr
    assert sorted(path.name for path in (out / "evaluation").iterdir()) == [
        "metrics.json", "report.html"]


def test_report_html_embeds_every_png_and_the_accuracy(trained_synthetic):
    out, _ = trained_synthetic
    page = (out / "report.html").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{metrics['test_accuracy']:.4%}" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == len(PNGS)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for row in metrics["per_class"]:
        assert f"<td>{row['support']}</td>" in page


def test_misclassified_shows_the_most_confident_mistakes_first(monkeypatch, tmp_path):
    drawn = {}
    monkeypatch.setattr(plots, "plot_digit_grid", lambda images, captions, title, path, **_:
                        drawn.update(images=images, captions=captions, title=title))
    rng = np.random.default_rng(0)
    labels = np.arange(100) % 10
    predicted = labels.copy()
    wrong = rng.choice(100, 50, replace=False)
    predicted[wrong] = (labels[wrong] + 1) % 10
    confidence = rng.random(100)
    images = np.arange(100, dtype=np.float32)[:, None, None] * np.ones((1, 28, 28), np.float32)
    shown = plots.plot_misclassified(images, labels, dict(predicted=predicted,
                                                          confidence=confidence),
                                     DIGITS, "MNIST", tmp_path / "m.png")
    expected = sorted(wrong, key=lambda i: -confidence[i])[:40]
    assert [int(image[0, 0]) for image in drawn["images"]] == expected and shown == 40
    assert drawn["title"] == "MNIST test set: the 40 most confident of 50 misclassified images"
    first = expected[0]
    assert drawn["captions"][0] == (f"true {labels[first]}\npred {predicted[first]} "
                                    f"{confidence[first]:.1%}")


def test_the_cosine_schedule_ends_near_zero(trained_synthetic):
    out, _ = trained_synthetic
    rates = [float(row["learning_rate"]) for row in csv.DictReader((out / "history.csv").open())]
    peak = Config().learning_rate
    assert rates[0] == pytest.approx(peak / 2, rel=0.05)  # halfway through 2 epochs: cos 90°
    assert rates[-1] < 1e-3 * peak


def test_the_summary_ends_with_the_weakest_classes_then_the_files(trained_synthetic):
    out, result = trained_synthetic
    lines = result.stdout.splitlines()
    metrics = json.loads((out / "metrics.json").read_text())
    order = [next(i for i, line in enumerate(lines) if line.startswith(start))
             for start in ("test accuracy", "class  precision", "lowest recall:", "wrote:")]
    assert order == sorted(order)
    weakest = sorted(metrics["per_class"], key=lambda row: row["recall"])[:5]
    assert lines[order[2]] == "lowest recall: " + ", ".join(
        f"{row['label']} ({row['recall']:.2%})" for row in weakest)
    assert all(line.startswith("  /") for line in lines[order[3] + 1:] if line.strip())


def test_saved_model_loads_and_predicts_probabilities(trained_synthetic):
    import keras

    out, _ = trained_synthetic
    model = keras.models.load_model(out / "model.keras")
    probabilities = model.predict(np.zeros((3, 28, 28), np.float32), verbose=0)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


@pytest.mark.slow
def test_evaluate_reproduces_the_training_accuracy(trained_synthetic, synthetic_dir, tmp_path):
    out, _ = trained_synthetic
    result = run_main("--evaluate", "--model", out / "model.keras", "--data-dir", synthetic_dir,
                      "--output-dir", tmp_path, "--quiet")
    assert result.returncode == 0, result.stderr
    trained = json.loads((out / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert evaluated["test_accuracy"] == trained["test_accuracy"]
    assert evaluated["confusion_matrix"] == trained["confusion_matrix"]
    # The same predictions give the same loss up to float32 rounding in another summation
    # order (threads): relative for ordinary losses, a few epsilons absolute for a loss near
    # zero (1.1951e-07 against 1.1921e-07 was seen on a loaded machine).
    assert evaluated["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-5,
                                                   abs=16 * float(np.finfo(np.float32).eps))
    for name in PNGS:
        assert (tmp_path / "evaluation" / name).is_file() == (name != "training_curves.png")
    assert not (tmp_path / "evaluation" / "model.keras").exists()
    # The same record and page as training: the model described, and where it came from.
    assert evaluated["architecture"] == trained["architecture"]
    assert evaluated["parameters"] == trained["parameters"]
    assert evaluated["model"] == str((out / "model.keras").resolve())
    page = (tmp_path / "evaluation" / "report.html").read_text()
    assert f'<b id="test-accuracy">{trained["test_accuracy"]:.4%}</b>' in page
    assert html.escape(trained["architecture"]) in page


@pytest.mark.slow
def test_fashion_mnist_uses_clothing_names(tmp_path, synthetic_dir):
    result = run_main("--dataset", "fashion-mnist", "--data-dir", synthetic_dir,
                      "--output-dir", tmp_path, *FAST)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["label"] for row in metrics["per_class"]] == list(
        DATASETS["fashion-mnist"]["classes"])
    assert "Ankle boot" in result.stdout
    assert "Fashion-MNIST" in (tmp_path / "report.html").read_text()
    # The record says which defaults the run started from: Fashion-MNIST's own.
    assert (metrics["defaults"]["augment"], metrics["defaults"]["learning_rate"],
            metrics["defaults"]["epochs"]) == (None, 1e-3, 40)
    assert metrics["config"]["learning_rate"] == 1e-3  # not given: the dataset's default


def test_output_dir_that_is_a_file_fails_before_training(tmp_path, synthetic_dir):
    target = tmp_path / "taken"
    target.write_text("keep me")
    result = run_main("--data-dir", synthetic_dir, "--output-dir", target)
    assert result.returncode == 1
    assert "not a directory" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert target.read_text() == "keep me"


# Contract tests on the model itself (in-process).

def test_default_model_shape_and_parameter_count():
    model = built(Config(augment=None, dropout=0.0))
    assert model.input_shape == (None, 28, 28) and model.output_shape == (None, 10)
    expected = 0
    widths = [784, *Config().hidden, 10]
    for fan_in, fan_out in zip(widths, widths[1:]):
        expected += fan_in * fan_out + fan_out
    assert model.count_params() == expected
    assert [layer.activation.__name__ for layer in model.layers if hasattr(layer, "units")] == \
        ["relu"] * len(Config().hidden) + ["softmax"]


def test_seed_network_has_99710_parameters():
    assert built(Config(hidden=(100, 100, 100))).count_params() == 99_710


def test_no_hidden_layer_is_softmax_regression():
    model = built(Config(hidden=()))
    assert model.count_params() == 784 * 10 + 10


def test_dropout_adds_one_layer_per_hidden_layer():
    import keras

    model = built(Config(hidden=(64, 32, 16), dropout=0.3))
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == 3 and all(layer.rate == 0.3 for layer in dropouts)
    names = [layer.name for layer in model.layers]
    assert names.index("dropout_1") == names.index("hidden_1") + 1


@pytest.mark.parametrize("kind", ["affine", "elastic"])
def test_augmentation_acts_in_training_only(kind):
    import keras

    keras.utils.set_random_seed(0)
    model = built(Config(hidden=(16,), augment=kind))
    distort = model.layers[0]
    assert isinstance(distort, augment.RandomDistortion)
    images = np.zeros((8, 28, 28), np.float32)
    images[:, 10:18, 12:16] = 1.0
    training = np.asarray(distort(images, training=True))
    np.testing.assert_array_equal(np.asarray(distort(images, training=False)), images)
    assert not np.allclose(training, images)
    assert training.min() >= 0 and training.max() <= 1  # a blend of pixels, nothing invented
    np.testing.assert_array_equal(model.predict(images, verbose=0),
                                  model.predict(images, verbose=0))


def test_bilinear_sampling_shifts_and_interpolates_exactly():
    images = np.random.default_rng(0).random((2, 28, 28)).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(28.0), np.arange(28.0), indexing="ij")
    rows, cols = np.broadcast_to(rows, images.shape), np.broadcast_to(cols, images.shape)
    sample = augment.RandomDistortion.bilinear
    np.testing.assert_allclose(np.asarray(sample(images, rows, cols)), images, atol=1e-6)
    up = np.asarray(sample(images, rows + 1, cols))  # read one row down: the image moves up
    np.testing.assert_allclose(up[:, :-1], images[:, 1:], atol=1e-6)
    np.testing.assert_array_equal(up[:, -1], 0)  # read from outside the image: 0
    half = np.asarray(sample(images, rows, cols + 0.5))
    np.testing.assert_allclose(half[:, :, :-1], (images[:, :, :-1] + images[:, :, 1:]) / 2,
                               atol=1e-6)


def test_elastic_field_is_smooth_and_independent_in_x_and_y():
    import keras

    keras.utils.set_random_seed(0)
    layer = augment.RandomDistortion(elastic=34.0, sigma=4.0)
    field = np.asarray(layer.smoothed_noise(64, 28, 28))
    assert field.shape == (64, 2, 28, 28)
    # Keras' own RandomElasticTransform draws both from one seed: x and y move together.
    assert abs(np.corrcoef(field[:, 0].ravel(), field[:, 1].ravel())[0, 1]) < 0.1
    # Smoothed: neighbouring displacements are alike, unlike raw uniform noise.
    neighbours = np.corrcoef(field[:, 0, 10:18, 10:17].ravel(), field[:, 0, 10:18, 11:18].ravel())
    assert neighbours[0, 1] > 0.9


def test_gaussian_matrix_blurs_as_a_zero_padded_convolution():
    sigma = 4.0
    radius = 12  # 3 sigma
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    signal = np.random.default_rng(3).uniform(-1, 1, 28)
    expected = np.convolve(signal, taps, mode="same")  # zeros beyond both ends
    np.testing.assert_allclose(augment.gaussian_matrix(28, sigma) @ signal, expected, atol=1e-6)


def test_bilinear_sampling_matches_a_reference_anywhere_in_and_around_the_image():
    rng = np.random.default_rng(4)
    images = rng.random((3, 28, 28)).astype(np.float32)
    src_y = rng.uniform(-8, 36, images.shape).astype(np.float32)
    src_x = rng.uniform(-8, 36, images.shape).astype(np.float32)
    src_y[0, 0, :6], src_x[0, 0, :6] = [-1, 0, 27, 28, 27.5, -0.5], [0, -1, 28, 27, 3, 13]

    def pixel(b, row, col):  # 0 outside the image
        return images[b, row, col] if 0 <= row < 28 and 0 <= col < 28 else 0.0

    expected = np.zeros(images.shape)
    for b, i, j in np.ndindex(images.shape):
        y, x = float(src_y[b, i, j]), float(src_x[b, i, j])
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        dy, dx = y - y0, x - x0
        expected[b, i, j] = ((1 - dy) * ((1 - dx) * pixel(b, y0, x0) + dx * pixel(b, y0, x0 + 1))
                             + dy * ((1 - dx) * pixel(b, y0 + 1, x0) + dx * pixel(b, y0 + 1, x0 + 1)))
    sample = augment.RandomDistortion.bilinear
    np.testing.assert_allclose(np.asarray(sample(images, src_y, src_x)), expected, atol=1e-5)


def sheared_bar(skew, centre=(14.0, 14.0)):
    """A bar 17 pixels tall leaning by skew pixels sideways per pixel down, as an image."""
    image = np.zeros((28, 28), np.float32)
    for row in range(int(centre[0]) - 8, int(centre[0]) + 9):
        col = centre[1] + skew * (row - centre[0])
        left = int(np.floor(col))
        image[row, left - 1:left + 2] = 1.0
    return image


def image_moments(image):
    rows, cols = np.mgrid[:28, :28]
    mass = image.sum()
    cy, cx = (image * rows).sum() / mass, (image * cols).sum() / mass
    skew = (image * (rows - cy) * (cols - cx)).sum() / (image * (rows - cy) ** 2).sum()
    return cy, cx, skew


def test_deskewing_stands_a_slanted_stroke_upright_and_centres_it():
    slanted = sheared_bar(0.5, centre=(12.0, 17.0))
    assert image_moments(slanted)[2] == pytest.approx(0.5, abs=0.05)
    upright, blank = np.asarray(augment.deskew_model()(np.stack([slanted, np.zeros((28, 28))])))
    cy, cx, skew = image_moments(upright)
    assert abs(skew) < 0.05 and cy == pytest.approx(14, abs=0.3) and cx == pytest.approx(14, abs=0.3)
    assert upright.sum() == pytest.approx(slanted.sum(), rel=0.05)  # ink moved, not lost
    np.testing.assert_array_equal(blank, 0)  # nothing to deskew: no NaN, nothing invented
    straight = sheared_bar(0.0)
    np.testing.assert_allclose(np.asarray(augment.deskew_model()(straight[None]))[0], straight,
                               atol=0.02)


@pytest.mark.slow
def test_a_deskewing_model_deskews_in_use_and_after_loading(tmp_path):
    import keras

    model = networks.for_inference(built(Config(hidden=(16,), augment="elastic",
                                                          deskew=True, dropout=0.0)))
    assert networks.architecture(model).startswith("Deskew -> Flatten")
    images = np.stack([sheared_bar(0.6), sheared_bar(-0.4)]).astype(np.float32)
    path = tmp_path / "model.keras"
    model.save(path)
    # Loaded again, it gives the same probabilities (a program that imports only Keras
    # does too: the committee test, whose members deskew).
    np.testing.assert_allclose(keras.models.load_model(path).predict(images, verbose=0),
                               model.predict(images, verbose=0), atol=1e-6)
    # The two slants are deskewed to nearly the same image, so the network sees nearly the same.
    body = keras.Sequential(model.layers[:1])
    upright = np.asarray(body(images))
    assert np.abs(upright[0] - upright[1]).mean() < 0.25 * np.abs(images[0] - images[1]).mean()


@pytest.mark.slow
def test_one_network_runs_one_op_at_a_time_on_a_cpu_and_a_committee_side_by_side(fresh_run):
    # A fresh process each, since TensorFlow takes thread settings only before it starts:
    # conftest.FRESH_RUN's for one network, this one's for a committee.
    check = subprocess.run([sys.executable, "-c", (
        "from digitkit import backend; from digitkit.config import Config; "
        "backend.start(Config(committee=3)); import tensorflow as tf; "
        "print(tf.config.threading.get_inter_op_parallelism_threads())")],
        capture_output=True, text=True, timeout=120, cwd=Path(dc.__file__).parent)
    assert check.returncode == 0, check.stderr
    assert fresh_run["inter_op_threads"] == 1
    assert int(check.stdout.split()[-1]) == 0  # TensorFlow's default: members side by side


def test_committee_trains_each_member_on_its_own_loss_and_averages_them():
    import keras

    keras.utils.set_random_seed(0)
    model = built(Config(hidden=(16,), augment="elastic", committee=3, dropout=0.0))
    assert model.output_shape == (None, 3, 10)  # one answer per member, each with its loss
    final = networks.for_inference(model)
    assert final.output_shape == (None, 10) and final.name == model.name
    assert not any(isinstance(layer, augment.RandomDistortion)
                   for member in final.layers for layer in getattr(member, "layers", []))
    images = np.random.default_rng(1).random((5, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(final.predict(images, verbose=0),
                               model.predict(images, verbose=0).mean(axis=1), atol=1e-6)
    members = [layer for layer in final.layers if isinstance(layer, keras.Sequential)]
    assert len(members) == 3  # distinct initial weights
    assert not np.allclose(members[0].layers[-2].get_weights()[0],
                           members[1].layers[-2].get_weights()[0])


@pytest.mark.slow
def test_committee_run_saves_a_plain_keras_model_and_evaluates_it_again(tmp_path, synthetic_dir):
    import keras

    out = tmp_path / "out"
    result = run_main("--data-dir", synthetic_dir, "--output-dir", out, "--augment", "elastic",
                      "--deskew", "--committee", "2", "--epochs", "2",
                      "--hidden", "16", "--batch-size", "64", "--no-plots")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["committee"] == 2 and metrics["config"]["augment"] == "elastic"
    assert metrics["config"]["deskew"] is True
    assert metrics["architecture"].startswith("average of 2 x (Deskew -> Flatten")
    assert len(metrics["member_test_accuracy"]) == 2
    members = re.search(r'<span id="members">([^<]*)</span>', (out / "report.html").read_text())
    assert members.group(1) == ", ".join(f"{a:.2%}" for a in metrics["member_test_accuracy"])
    # model.keras needs nothing from this script: a program that imports only Keras loads
    # it and gets the same probabilities, the members' deskewing included.
    images = np.random.default_rng(4).random((4, 28, 28)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    check = subprocess.run([sys.executable, "-c", (
        "import sys, keras, numpy as np; m = keras.models.load_model(sys.argv[1]); "
        "np.save(sys.argv[3], m.predict(np.load(sys.argv[2]), verbose=0))"),
        str(out / "model.keras"), str(tmp_path / "images.npy"), str(tmp_path / "p.npy")],
        capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), keras.models.load_model(
        out / "model.keras").predict(images, verbose=0), atol=1e-6)
    again = run_main("--evaluate", "--model", out / "model.keras", "--data-dir", synthetic_dir,
                     "--output-dir", tmp_path, "--quiet", "--no-plots")
    assert again.returncode == 0, again.stderr
    evaluated = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert evaluated["test_accuracy"] == metrics["test_accuracy"]


@pytest.mark.slow
def test_jax_backend_trains_a_model_that_tensorflow_evaluates_alike(tmp_path, synthetic_dir,
                                                                   jax_run):
    out, _ = jax_run
    trained = json.loads((out / "metrics.json").read_text())
    assert trained["versions"]["backend"] == "jax"  # what Keras really ran on
    assert trained["architecture"].startswith("average of 2 x (Deskew -> Flatten")
    again = run_main("--evaluate", "--model", out / "model.keras", "--data-dir", synthetic_dir,
                     "--output-dir", tmp_path, "--quiet")  # TensorFlow
    assert again.returncode == 0, again.stderr
    evaluated = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    # The same weights on another backend: at most one of the 200 test images read differently.
    assert evaluated["test_accuracy"] == pytest.approx(trained["test_accuracy"], abs=0.0051)


# The model checkpointed here never trained, so its optimizer has no state yet; Keras says so
# when the loaded model's (built) optimizer finds nothing to read. A trained run's has state.
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer:UserWarning")
def test_checkpoint_of_a_distorting_committee_loads_for_resume(tmp_path):
    config = Config(hidden=(8,), augment="elastic", deskew=True, committee=2, quiet=True)
    model = built(config)
    checkpoint = Checkpoint(tmp_path)
    checkpoint.save(model, 1, [{"epoch": 1}], config)
    loaded, epochs_done, history = checkpoint.load(config)
    images = np.random.default_rng(2).random((3, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0),
                               atol=1e-6)
    assert epochs_done == 1 and history == [{"epoch": 1}]


def test_a_checkpoint_that_cannot_load_says_why_in_one_line(tmp_path):
    config = Config(hidden=(8,), augment=None, quiet=True)
    model = built(config)
    checkpoint = Checkpoint(tmp_path)
    checkpoint.save(model, 1, [{"epoch": 1}], config)
    (checkpoint.directory / "epoch-0001.keras").write_bytes(b"not a zip")
    with pytest.raises(RunError) as error:
        checkpoint.load(config)
    message = str(error.value)
    assert re.search(r"cannot load checkpoint \((ValueError|OSError|BadZipFile): \S", message)
    assert "\n" not in message and "to start over" in message


def test_the_record_the_page_and_the_summary_name_the_device_that_trained(trained_synthetic):
    import tensorflow as tf

    out, result = trained_synthetic
    gpus = tf.config.list_physical_devices("GPU")
    record = json.loads((out / "metrics.json").read_text())
    if gpus:
        assert record["device"].startswith(f"{len(gpus)} x "), record["device"]
    else:
        assert record["device"] == "CPU"
    page = (out / "report.html").read_text()
    assert f'<span id="device">{html.escape(record["device"])}</span>' in page
    assert f"(device: {record['device']})" in result.stdout


def test_score_matches_a_hand_computed_example():
    probabilities = np.array([[0.9, 0.1] + [0] * 8, [0.2, 0.8] + [0] * 8,
                              [0.6, 0.4] + [0] * 8], dtype=np.float32)
    labels = np.array([0, 1, 1])
    scores = metrics.score(probabilities, labels)
    assert scores["test_accuracy"] == pytest.approx(2 / 3)
    assert scores["confusion_matrix"][1, 0] == 1 and scores["confusion_matrix"][0, 0] == 1
    assert scores["precision"][0] == pytest.approx(0.5) and scores["recall"][1] == pytest.approx(0.5)
    assert scores["test_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4])), rel=1e-5)
    assert metrics.top_confusions(scores["confusion_matrix"], DIGITS) == [("1", "0", 1)]


def test_patience_stops_early_and_keeps_the_best_epoch():
    import keras

    from helpers import synthetic_digits

    x, y = synthetic_digits(600, seed=4)
    x = x.astype(np.float32) / 255
    y = y.astype(np.int32)
    # Every validation label is wrong, so validation loss worsens as the network learns.
    data = dict(x_train=x[100:], y_train=y[100:], x_val=x[:100], y_val=(y[:100] + 1) % 10)
    config = Config(hidden=(32,), dropout=0.0, epochs=30, batch_size=50, patience=1,
                    lr_schedule="constant", steps_per_execution=1, quiet=True, augment=None)
    keras.utils.set_random_seed(0)
    result = dc.train_and_evaluate(config, data, StopSignals(), test=False)
    model, trained = result["model"], result["training"]
    assert trained["kept_epoch"] == 1
    assert trained["epochs_completed"] == 2  # one epoch without improvement, then stop
    losses = [row["val_loss"] for row in trained["history"]]
    assert losses[1] > losses[0]
    # The weights kept are the best epoch's, not the last one's.
    kept_loss = model.evaluate(data["x_val"], data["y_val"], verbose=0)[0]
    assert kept_loss == pytest.approx(losses[0], rel=1e-3)


def test_pipeline_runs_in_process_on_small_arrays_and_its_record_is_plain_json():
    from helpers import synthetic_digits

    x_train, y_train = synthetic_digits(600, seed=1)
    x_test, y_test = synthetic_digits(200, seed=2)
    arrays = dict(x_train=x_train, y_train=y_train.astype(np.int32), x_test=x_test,
                  y_test=y_test.astype(np.int32))
    config = Config(hidden=(32,), epochs=3, batch_size=64, augment=None, quiet=True, seed=3)
    backend.start(config)
    data = dc.split_and_scale(arrays, config.validation_split, config.seed)
    result = dc.train_and_evaluate(config, data, StopSignals())
    trained, scores = result["training"], result["scores"]
    assert trained["epochs_completed"] == 3 and not trained["interrupted"]
    assert [row["epoch"] for row in trained["history"]] == [1, 2, 3]
    assert scores["test_accuracy"] > 0.5  # it learned: chance is 0.1
    assert result["parameters"] == 784 * 32 + 32 + 32 * 10 + 10
    np.testing.assert_allclose(result["final"].predict(data["x_test"], verbose=0).argmax(1),
                               scores["predicted"])
    info = dict(name="mnist", title="MNIST", source="arrays", train_size=540,
                validation_size=60, test_size=200)
    record = report.build_record(config, info, scores, training=trained,
                                 architecture=result["architecture"],
                                 timing={"train_seconds": trained["seconds"]})
    temperature = result["calibration"]["temperature"]
    assert record["architecture"] == ("Flatten -> Dense(32, relu) -> Dropout(0.2) -> "
                                      f"Dense(10) -> Temperature({temperature:.4g}) -> Softmax")
    assert record["test_accuracy"] == scores["test_accuracy"] and record["epochs_completed"] == 3
    assert json.loads(json.dumps(record)) == record  # plain values only



def test_the_record_says_when_how_and_where_the_run_was_made(trained_synthetic):
    import datetime

    out, _ = trained_synthetic
    record = json.loads((out / "metrics.json").read_text())
    run = record["run"]
    recorded = datetime.datetime.fromisoformat(run["recorded_at"])
    assert recorded.tzinfo is not None
    assert abs(datetime.datetime.now(datetime.timezone.utc) - recorded) < datetime.timedelta(days=1)
    assert "digit_classifier.py --data-dir" in run["command"] and "--epochs" in run["command"]
    git = subprocess.run(["git", "-C", str(Path(dc.__file__).parent), "rev-parse", "HEAD"],
                         capture_output=True, text=True)
    if git.returncode == 0:  # a checkout (CI's clean clone is one)
        assert run["git"]["commit"] == git.stdout.strip()
        assert isinstance(run["git"]["local_changes"], bool)
    assert run["cpu"].endswith(" cores") and len(run["cpu"]) > len(" cores")
    assert record["error_rate"] == round(record["error_rate"], 6)  # k/N, not 1 - k/N
    page = (out / "report.html").read_text()
    assert "<h2>The run</h2>" in page and html.escape(run["command"]) in page
    assert "<h2>Timings</h2><table><tr><th>stage</th><th>seconds</th>" in page
    assert "<h2>Versions</h2><table><tr><th>package</th><th>version</th>" in page


def test_the_recorded_command_never_holds_a_database_password(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["digit_classifier.py", "--tune", "5", "--tune-storage",
                                      "postgresql://tuner:hunter2@dbhost:5432/db"])
    command = report.provenance()["command"]
    assert "hunter2" not in command
    assert command == ("python digit_classifier.py --tune 5 --tune-storage "
                       "postgresql://tuner:***@dbhost:5432/db")
