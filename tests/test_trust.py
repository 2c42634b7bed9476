"""How far to trust an answer: temperature scaling, corrupted test sets, and "unsure"."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import digit_classifier as dc
from digitkit import backend, calibration, images, metrics, robustness
from digitkit.calibration import CONFIDENCE_LEVELS
from digitkit.config import Config
from digitkit.interrupts import StopSignals
from helpers import FAST, built, run_main, synthetic_digits


def digits(count, seed):
    images, labels = synthetic_digits(count, seed)
    return images.astype(np.float32) / 255, labels.astype(np.int64)


# --- calibration -------------------------------------------------------------------------

def test_fitted_temperature_recovers_the_one_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(1, 20000, 10))
    probabilities = calibration.softmax_average(logits, 2.5)
    labels = np.array([rng.choice(10, p=p) for p in probabilities])
    assert calibration.fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_expected_calibration_error_of_a_hand_computed_example():
    # Two images at confidence 0.95 (one right), two at 0.55 (both right): bins 15 and 9.
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 0])
    expected = 0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.55)
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(expected)
    table = calibration.calibration_bins(probabilities, labels)
    assert table["count"].sum() == 4 and table["count"][14] == 2 and table["count"][8] == 2


@pytest.fixture(scope="module")
def small_model():
    """A small network trained in-process, calibrated by the pipeline."""
    x_train, y_train = synthetic_digits(600, seed=1)
    x_test, y_test = synthetic_digits(300, seed=2)
    arrays = dict(x_train=x_train, y_train=y_train.astype(np.int32), x_test=x_test,
                  y_test=y_test.astype(np.int32))
    config = Config(hidden=(16,), epochs=2, batch_size=64, augment=None, quiet=True, seed=5,
                       validation_split=0.2)
    backend.start(config)
    data = dc.split_and_scale(arrays, config.validation_split, config.seed)
    return dc.train_and_evaluate(config, data, StopSignals()), data


def test_the_model_outputs_the_temperature_scaled_probabilities(small_model):
    import keras

    result, data = small_model
    record, final = result["calibration"], result["final"]
    assert record["fitted"] and record["temperature"] != 1.0
    # The calibration is a layer of its own, between the logits and the softmax.
    assert [layer.name for layer in final.layers[-3:]] == ["logits", "temperature", "output"]
    logits = keras.Model(final.inputs, final.get_layer("logits").output).predict(
        data["x_test"], verbose=0)[None].astype(np.float64)
    uncalibrated = calibration.softmax_average(logits)
    output = final.predict(data["x_test"], verbose=0)
    np.testing.assert_allclose(output, calibration.softmax_average(logits, record["temperature"]),
                               atol=1e-5)
    for key, probabilities in (("before", uncalibrated), ("after", output)):
        assert record[key]["nll"] == pytest.approx(
            metrics.negative_log_likelihood(probabilities, data["y_test"]), abs=1e-4)


@pytest.mark.slow
def test_a_committee_is_calibrated_with_one_temperature_for_all_members():
    import keras

    from digitkit import networks

    keras.utils.set_random_seed(1)
    config = Config(hidden=(8,), committee=3, augment=None, dropout=0.0)
    final = networks.for_inference(built(config))
    before = [member.layers[-1].get_weights() for member in networks.networks(final)]
    x, y = digits(300, seed=4)
    data = dict(x_val=x[:200], y_val=y[:200], x_test=x[200:], y_test=y[200:])
    calibrated, record = calibration.calibrate(final, data)
    temperature = record["temperature"]
    assert record["fitted"] and temperature != pytest.approx(1.0)
    members = networks.networks(calibrated)
    assert len(members) == 3 and calibrated is not final  # a new model; final is untouched
    for member, network, (kernel, bias) in zip(members, networks.networks(final), before):
        # Each member: its own logits, unchanged, then the same temperature, then the softmax.
        np.testing.assert_array_equal(network.layers[-1].get_weights()[0], kernel)
        logits = member.get_layer("logits").get_weights()
        np.testing.assert_array_equal(logits[0], kernel)
        np.testing.assert_array_equal(logits[1], bias)
        assert member.get_layer("temperature").scale == pytest.approx(1 / temperature)
    images = x[200:].astype(np.float32)
    np.testing.assert_allclose(
        calibrated.predict(images, verbose=0),
        calibration.softmax_average(calibration.network_logits(final, images), temperature),
        atol=1e-5)


@pytest.mark.slow
def test_without_a_validation_split_no_temperature_is_fitted(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    result = run_main("--data-dir", synthetic_dir, "--output-dir", out, *FAST,
                      "--validation-split", "0", "--no-plots")
    assert result.returncode == 0, result.stderr
    assert "calibration: none fitted (no validation split)" in result.stdout
    record = json.loads((out / "metrics.json").read_text())["calibration"]
    assert record["fitted"] is False and record["temperature"] == 1.0
    assert record["after"] == record["before"]
    assert "No calibration fitted" in (out / "report.html").read_text()


@pytest.mark.slow
def test_a_plain_keras_program_gets_the_scripts_probabilities(trained_synthetic, tmp_path):
    out, _ = trained_synthetic
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibration"]["fitted"]
    digit_images, _ = synthetic_digits(6, seed=9)
    files = []
    for i, image in enumerate(digit_images):
        files.append(tmp_path / f"digit{i}.png")
        Image.fromarray(image).save(files[-1])
    result = run_main("--predict", *files, "--model", out / "model.keras", "--json",
                      "--output-dir", tmp_path / "predictions")
    assert result.returncode == 0, result.stderr
    script = [json.loads(line) for line in result.stdout.splitlines()]
    # The images exactly as --predict feeds them, handed to a program that knows only Keras.
    np.save(tmp_path / "x.npy",
            np.stack([images.to_mnist_format(images.read_image(f)) for f in files]))
    plain = subprocess.run(
        [sys.executable, "-c", "import sys, numpy, keras; "
         "m = keras.models.load_model(sys.argv[1]); "
         "numpy.save(sys.argv[3], m.predict(numpy.load(sys.argv[2]), verbose=0))",
         out / "model.keras", tmp_path / "x.npy", tmp_path / "p.npy"],
        capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    probabilities = np.load(tmp_path / "p.npy")
    for row, answer in zip(probabilities, script):
        assert str(row.argmax()) == answer["prediction"]
        assert row.max() == pytest.approx(answer["probability"], abs=1e-6)


# --- robustness -------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(robustness.CORRUPTIONS))
def test_corruptions_are_deterministic_and_severity_zero_is_the_clean_set(name):
    images, _ = digits(50, seed=3)
    np.testing.assert_array_equal(robustness.corrupt(images, name, 0), images)
    previous = images
    for severity in (1, 2, 3):
        once = robustness.corrupt(images, name, severity)
        assert once.shape == images.shape and once.dtype == images.dtype
        np.testing.assert_array_equal(once, robustness.corrupt(images, name, severity))
        assert not np.array_equal(once, images) and not np.array_equal(once, previous)
        assert np.isfinite(once).all() and once.min() >= -1e-6 and once.max() <= 1 + 1e-6
        previous = once


@pytest.mark.parametrize("name", ["gaussian noise", "rotation", "translation", "occlusion"])
def test_the_random_corruptions_follow_their_seed(name):
    images, _ = digits(50, seed=3)
    np.testing.assert_array_equal(robustness.corrupt(images, name, 2, seed=1),
                                  robustness.corrupt(images, name, 2, seed=1))
    assert not np.array_equal(robustness.corrupt(images, name, 2, seed=1),
                              robustness.corrupt(images, name, 2, seed=2))


def test_geometric_corruptions_move_pixels_as_named():
    image = np.zeros((1, 28, 28), np.float32)
    image[0, 14, 14] = 1.0
    rotated = robustness.resample(image, np.array([np.pi / 2]), np.ones(1), np.zeros(1), np.zeros(1))
    assert rotated[0, 14, 13] == pytest.approx(1.0)  # (row 14, col 14) about centre 13.5
    shifted = robustness.resample(image, np.zeros(1), np.ones(1), np.array([2.0]), np.array([-3.0]))
    assert shifted[0, 16, 11] == pytest.approx(1.0) and shifted.sum() == pytest.approx(1.0)
    line = np.zeros((1, 28, 28), np.float32)
    line[0, 10, 5:20] = 1.0
    assert robustness.corrupt(line, "thickening", 2).sum() > line.sum() > robustness.corrupt(line, "thinning", 1).sum()


def reference_resample(images, angle, scale, shift_y, shift_x):
    """The inverse map and bilinear sampling written out in NumPy (the version before the
    corruptions moved to Keras' affine transform), to hold the new one against."""
    count, height, width = images.shape
    y, x = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                       indexing="ij")
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    column = lambda values: np.asarray(values, np.float64)[:, None, None]  # noqa: E731
    cos, sin = column(np.cos(angle) / scale), column(np.sin(angle) / scale)
    out_y, out_x = y - centre_y - column(shift_y), x - centre_x - column(shift_x)
    src_y = cos * out_y - sin * out_x + centre_y
    src_x = sin * out_y + cos * out_x + centre_x
    out = np.zeros(images.shape)
    for b, i, j in np.ndindex(images.shape):
        y0, x0 = int(np.floor(src_y[b, i, j])), int(np.floor(src_x[b, i, j]))
        dy, dx = src_y[b, i, j] - y0, src_x[b, i, j] - x0
        for row, col, weight in ((y0, x0, (1 - dy) * (1 - dx)), (y0, x0 + 1, (1 - dy) * dx),
                                 (y0 + 1, x0, dy * (1 - dx)), (y0 + 1, x0 + 1, dy * dx)):
            if 0 <= row < height and 0 <= col < width:
                out[b, i, j] += weight * images[b, row, col]
    return out


def test_geometric_corruptions_match_a_reference_resampler():
    images, _ = digits(6, seed=9)
    rng = np.random.default_rng(10)
    angle, scale = rng.uniform(-0.8, 0.8, 6), rng.choice([0.5, 0.8, 1.25, 2.0], 6)
    shift_y, shift_x = rng.uniform(-6, 6, 6), rng.uniform(-6, 6, 6)
    np.testing.assert_allclose(robustness.resample(images, angle, scale, shift_y, shift_x),
                               reference_resample(images, angle, scale, shift_y, shift_x),
                               atol=2e-5)


def test_blur_is_a_separable_gaussian_with_zeros_beyond_the_border():
    images, _ = digits(3, seed=11)
    for severity, sigma in enumerate(robustness.CORRUPTIONS["blur"][1], start=1):
        radius = int(np.ceil(3 * sigma))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps /= taps.sum()
        rows = np.apply_along_axis(np.convolve, 1, images, taps, mode="same")
        expected = np.apply_along_axis(np.convolve, 2, rows, taps, mode="same")
        np.testing.assert_allclose(robustness.corrupt(images, "blur", severity), expected, atol=1e-5)


def test_robustness_at_severity_zero_reproduces_the_clean_accuracy(small_model):
    result, data = small_model
    for name in robustness.CORRUPTIONS:
        assert robustness.corrupted_accuracy(result["final"], data["x_test"], data["y_test"], name,
                                        0) == result["scores"]["test_accuracy"]


def test_robustness_of_a_model_that_always_answers_zero_is_the_share_of_zeros():
    import keras

    always_zero = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                                    keras.layers.Dense(10, activation="softmax")])
    always_zero.layers[-1].set_weights([np.zeros((784, 10)), np.eye(10)[0] * 5])
    images, labels = digits(150, seed=7)
    share = float((labels == 0).mean())
    record = robustness.robustness(always_zero, images, labels, max_images=1000)
    assert list(record["corruptions"]) == list(robustness.CORRUPTIONS)
    for result in record["corruptions"].values():
        assert result["accuracy"] == [share] * 3  # whatever the images look like
    assert record["mean_accuracy"] == pytest.approx(share)
    assert record["clean_accuracy"] == pytest.approx(share) and record["images"] == 150


def test_robustness_is_measured_on_a_fixed_subset_with_its_interval_stated():
    import keras

    images, labels = digits(3000, seed=5)
    labels[:1000], labels[1000:] = 0, 1  # a model answering 0 is right on the first third
    always_zero = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                                    keras.layers.Dense(10, activation="softmax")])
    always_zero.layers[-1].set_weights([np.zeros((784, 10)), np.eye(10)[0] * 5])
    first = robustness.robustness(always_zero, images, labels, images=1000)
    again = robustness.robustness(always_zero, images, labels, images=1000)
    assert first == again and first["images"] == 1000  # the same images every time
    share = first["clean_accuracy"]
    assert abs(share - 1 / 3) < 0.05  # drawn from the whole test set, not its first 1,000
    # The 95% interval of an accuracy p measured on n images: 1.96 * sqrt(p (1 - p) / n).
    expected = 1.96 * (share * (1 - share) / 1000) ** 0.5
    for result in first["corruptions"].values():
        assert result["interval95"] == pytest.approx([expected] * 3)


def test_a_training_run_records_calibration_and_robustness(trained_synthetic):
    out, result = trained_synthetic
    metrics = json.loads((out / "metrics.json").read_text())
    calibration, robust = metrics["calibration"], metrics["robustness"]
    for key in ("before", "after"):
        assert set(calibration[key]) == {"ece", "nll", "reliability"}
        assert sum(calibration[key]["reliability"]["count"]) == metrics["dataset"]["test_size"]
    assert [row["min_confidence"] for row in calibration["validation_unsure"]] == list(
        CONFIDENCE_LEVELS)
    assert set(robust["corruptions"]) == set(robustness.CORRUPTIONS)
    for name in ("calibration.png", "robustness.png", "corruptions.png"):
        assert (out / name).stat().st_size > 10_000
    page = (out / "report.html").read_text()
    assert "Robustness: test accuracy under corruptions" in page and "occlusion" in page
    assert "test ECE" in result.stdout and "robustness: mean accuracy" in result.stdout


@pytest.mark.slow
def test_evaluate_reports_the_saved_models_calibration_and_robustness(trained_synthetic,
                                                                      synthetic_dir, tmp_path):
    out, _ = trained_synthetic
    result = run_main("--evaluate", "--model", out / "model.keras", "--data-dir", synthetic_dir,
                      "--output-dir", tmp_path, "--quiet")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    trained = json.loads((out / "metrics.json").read_text())
    assert evaluated["calibration"]["before"]["ece"] == pytest.approx(
        trained["calibration"]["after"]["ece"], abs=1e-6)
    for name, result in trained["robustness"]["corruptions"].items():
        assert evaluated["robustness"]["corruptions"][name]["accuracy"] == pytest.approx(
            result["accuracy"], abs=1e-9)


# --- unsure -------------------------------------------------------------------------------

@pytest.mark.slow
def test_min_confidence_marks_answers_below_it_unsure(trained_synthetic, tmp_path):
    out, _ = trained_synthetic
    images, _ = synthetic_digits(8, seed=11)
    rng = np.random.default_rng(0)
    files = []
    for i, image in enumerate(images):  # some clean, some with the bar half erased: less sure
        if i % 2:
            image = image.copy()
            image[rng.integers(0, 28, 200), rng.integers(0, 28, 200)] = 255
        files.append(tmp_path / f"d{i}.png")
        Image.fromarray(image).save(files[-1])
    model = ["--model", out / "model.keras", "--output-dir", tmp_path / "p"]
    first = run_main("--predict", *files, *model, "--json", "--min-confidence", "0")
    assert first.returncode == 0, first.stderr
    answers = [json.loads(line) for line in first.stdout.splitlines()]
    assert not any(a["unsure"] for a in answers)
    probabilities = sorted(a["probability"] for a in answers)
    level = (probabilities[0] + probabilities[-1]) / 2
    assert probabilities[0] < level < probabilities[-1]
    marked = run_main("--predict", *files, *model, "--json", "--min-confidence", f"{level}")
    assert marked.returncode == 0  # unsure is an answer, not a failure
    for answer in map(json.loads, marked.stdout.splitlines()):
        assert answer["unsure"] == (answer["probability"] < level)
    text = run_main("--predict", *files, *model, "--min-confidence", "1")
    assert text.returncode == 0
    lines = text.stdout.splitlines()[:len(files)]
    assert sum("UNSURE" in line for line in lines) == sum(a["probability"] < 1 for a in answers)


@pytest.mark.parametrize("argv", [["--min-confidence", "0.5"],
                                  ["--predict", "x.png", "--min-confidence", "1.5"]])
def test_min_confidence_is_checked(argv):
    result = run_main(*argv)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_calibration_keeps_the_default_models_test_probabilities_honest(trained_mnist):
    record = json.loads((trained_mnist / "metrics.json").read_text())["calibration"]
    assert record["fitted"] and 0.5 < record["temperature"] < 2
    # At 99% accuracy the test ECE is a few tenths of a percent either way, and a temperature
    # fitted on other images may move it by a few hundredths (README, "Can I trust an
    # answer?"): what calibration promises is that it stays small, never that it falls.
    assert record["after"]["ece"] < 0.005
    assert record["after"]["ece"] < record["before"]["ece"] + 0.0005
    assert record["after"]["nll"] < 1.05 * record["before"]["nll"]
