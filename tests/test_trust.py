"""How far to trust an answer: temperature scaling, corrupted test sets, and "unsure"."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import digit_classifier as dc
from conftest import FAST, run_cli, synthetic_digits


def digits(count, seed):
    images, labels = synthetic_digits(count, seed)
    return images.astype(np.float32) / 255, labels.astype(np.int64)


# --- calibration -------------------------------------------------------------------------

def test_fitted_temperature_recovers_the_one_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(1, 20000, 10))
    probabilities = dc.softmax_average(logits, 2.5)
    labels = np.array([rng.choice(10, p=p) for p in probabilities])
    assert dc.fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_expected_calibration_error_of_a_hand_computed_example():
    # Two images at confidence 0.95 (one right), two at 0.55 (both right): bins 15 and 9.
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 0])
    expected = 0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.55)
    assert dc.expected_calibration_error(probabilities, labels) == pytest.approx(expected)
    table = dc.calibration_bins(probabilities, labels)
    assert table["count"].sum() == 4 and table["count"][14] == 2 and table["count"][8] == 2


@pytest.fixture(scope="module")
def small_model():
    """A small network trained in-process, calibrated by the pipeline."""
    x_train, y_train = synthetic_digits(600, seed=1)
    x_test, y_test = synthetic_digits(300, seed=2)
    arrays = dict(x_train=x_train, y_train=y_train.astype(np.int32), x_test=x_test,
                  y_test=y_test.astype(np.int32))
    config = dc.Config(hidden=(16,), epochs=2, batch_size=64, augment=None, quiet=True, seed=5,
                       validation_split=0.2)
    dc.setup_keras(config)
    data = dc.split_and_scale(arrays, config.validation_split, config.seed)
    return dc.train_and_evaluate(config, data, dc.StopSignals()), data


def test_the_model_outputs_the_temperature_scaled_probabilities(small_model):
    result, data = small_model
    calibration = result["calibration"]
    assert calibration["fitted"] and calibration["temperature"] != 1.0
    logits = dc.network_logits(result["final"], data["x_test"])  # already divided by T
    uncalibrated = dc.softmax_average(logits * calibration["temperature"])
    output = result["final"].predict(data["x_test"], verbose=0)
    np.testing.assert_allclose(output, dc.softmax_average(logits), atol=1e-5)
    np.testing.assert_allclose(output, dc.softmax_average(logits * calibration["temperature"],
                                                          calibration["temperature"]), atol=1e-5)
    for key, probabilities in (("before", uncalibrated), ("after", output)):
        assert calibration[key]["nll"] == pytest.approx(
            dc.negative_log_likelihood(probabilities, data["y_test"]), abs=1e-4)
    # Temperature scaling never changes which class wins.
    np.testing.assert_array_equal(output.argmax(1), uncalibrated.argmax(1))


def test_without_a_validation_split_no_temperature_is_fitted(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    result = run_cli("--data-dir", synthetic_dir, "--output-dir", out, *FAST,
                     "--validation-split", "0")
    assert result.returncode == 0, result.stderr
    assert "calibration: none fitted (no validation split)" in result.stdout
    calibration = json.loads((out / "metrics.json").read_text())["calibration"]
    assert calibration["fitted"] is False and calibration["temperature"] == 1.0
    assert calibration["after"] == calibration["before"]
    assert "No calibration fitted" in (out / "report.html").read_text()


def test_a_plain_keras_program_gets_the_scripts_probabilities(trained_synthetic, tmp_path):
    out, _ = trained_synthetic
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibration"]["fitted"]
    images, _ = synthetic_digits(6, seed=9)
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"digit{i}.png")
        Image.fromarray(image).save(files[-1])
    result = run_cli("--predict", *files, "--model", out / "model.keras", "--json",
                     "--output-dir", tmp_path / "predictions")
    assert result.returncode == 0, result.stderr
    script = [json.loads(line) for line in result.stdout.splitlines()]
    # The images exactly as --predict feeds them, handed to a program that knows only Keras.
    np.save(tmp_path / "x.npy", np.stack([dc.to_mnist_format(dc.read_image(f)) for f in files]))
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

@pytest.mark.parametrize("name", list(dc.CORRUPTIONS))
def test_corruptions_are_deterministic_and_severity_zero_is_the_clean_set(name):
    images, _ = digits(50, seed=3)
    np.testing.assert_array_equal(dc.corrupt(images, name, 0), images)
    previous = images
    for severity in (1, 2, 3):
        once = dc.corrupt(images, name, severity)
        assert once.shape == images.shape and once.dtype == images.dtype
        np.testing.assert_array_equal(once, dc.corrupt(images, name, severity))
        assert not np.array_equal(once, images) and not np.array_equal(once, previous)
        assert np.isfinite(once).all() and once.min() >= -1e-6 and once.max() <= 1 + 1e-6
        previous = once


@pytest.mark.parametrize("name", ["gaussian noise", "rotation", "translation", "occlusion"])
def test_the_random_corruptions_follow_their_seed(name):
    images, _ = digits(50, seed=3)
    np.testing.assert_array_equal(dc.corrupt(images, name, 2, seed=1),
                                  dc.corrupt(images, name, 2, seed=1))
    assert not np.array_equal(dc.corrupt(images, name, 2, seed=1),
                              dc.corrupt(images, name, 2, seed=2))


def test_geometric_corruptions_move_pixels_as_named():
    image = np.zeros((1, 28, 28), np.float32)
    image[0, 14, 14] = 1.0
    rotated = dc.resample(image, np.array([np.pi / 2]), np.ones(1), np.zeros(1), np.zeros(1))
    assert rotated[0, 14, 13] == pytest.approx(1.0)  # (row 14, col 14) about centre 13.5
    shifted = dc.resample(image, np.zeros(1), np.ones(1), np.array([2.0]), np.array([-3.0]))
    assert shifted[0, 16, 11] == pytest.approx(1.0) and shifted.sum() == pytest.approx(1.0)
    line = np.zeros((1, 28, 28), np.float32)
    line[0, 10, 5:20] = 1.0
    assert dc.corrupt(line, "thickening", 2).sum() > line.sum() > dc.corrupt(line, "thinning", 1).sum()


def test_robustness_at_severity_zero_reproduces_the_clean_accuracy(small_model):
    result, data = small_model
    for name in dc.CORRUPTIONS:
        assert dc.corrupted_accuracy(result["final"], data["x_test"], data["y_test"], name,
                                     0) == result["scores"]["test_accuracy"]
    record = dc.robustness(result["final"], data["x_test"], data["y_test"],
                           result["scores"]["test_accuracy"])
    assert list(record["corruptions"]) == list(dc.CORRUPTIONS)
    assert all(len(r["accuracy"]) == 3 for r in record["corruptions"].values())
    assert record["mean_accuracy"] == pytest.approx(np.mean(
        [a for r in record["corruptions"].values() for a in r["accuracy"]]))


def test_a_training_run_records_calibration_and_robustness(trained_synthetic):
    out, result = trained_synthetic
    metrics = json.loads((out / "metrics.json").read_text())
    calibration, robust = metrics["calibration"], metrics["robustness"]
    for key in ("before", "after"):
        assert set(calibration[key]) == {"ece", "nll", "reliability"}
        assert sum(calibration[key]["reliability"]["count"]) == metrics["dataset"]["test_size"]
    assert [row["min_confidence"] for row in calibration["validation_unsure"]] == list(
        dc.CONFIDENCE_LEVELS)
    assert robust["clean_accuracy"] == metrics["test_accuracy"]
    assert set(robust["corruptions"]) == set(dc.CORRUPTIONS)
    for name in ("calibration.png", "robustness.png", "corruptions.png"):
        assert (out / name).stat().st_size > 10_000
    page = (out / "report.html").read_text()
    assert "Robustness: test accuracy under corruptions" in page and "occlusion" in page
    assert "test ECE" in result.stdout and "robustness: mean accuracy" in result.stdout


def test_evaluate_reports_the_saved_models_calibration_and_robustness(trained_synthetic,
                                                                      synthetic_dir, tmp_path):
    out, _ = trained_synthetic
    result = run_cli("--evaluate", "--model", out / "model.keras", "--data-dir", synthetic_dir,
                     "--output-dir", tmp_path / "evaluation", "--quiet")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    trained = json.loads((out / "metrics.json").read_text())
    assert evaluated["calibration"]["before"]["ece"] == pytest.approx(
        trained["calibration"]["after"]["ece"], abs=1e-6)
    for name, result in trained["robustness"]["corruptions"].items():
        assert evaluated["robustness"]["corruptions"][name]["accuracy"] == pytest.approx(
            result["accuracy"], abs=1e-9)


# --- unsure -------------------------------------------------------------------------------

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
    first = run_cli("--predict", *files, *model, "--json", "--min-confidence", "0")
    assert first.returncode == 0, first.stderr
    answers = [json.loads(line) for line in first.stdout.splitlines()]
    assert not any(a["unsure"] for a in answers)
    probabilities = sorted(a["probability"] for a in answers)
    level = (probabilities[0] + probabilities[-1]) / 2
    assert probabilities[0] < level < probabilities[-1]
    marked = run_cli("--predict", *files, *model, "--json", "--min-confidence", f"{level}")
    assert marked.returncode == 0  # unsure is an answer, not a failure
    for answer in map(json.loads, marked.stdout.splitlines()):
        assert answer["unsure"] == (answer["probability"] < level)
    text = run_cli("--predict", *files, *model, "--min-confidence", "1")
    assert text.returncode == 0
    lines = text.stdout.splitlines()[:len(files)]
    assert sum("UNSURE" in line for line in lines) == sum(a["probability"] < 1 for a in answers)


@pytest.mark.parametrize("argv", [["--min-confidence", "0.5"],
                                  ["--predict", "x.png", "--min-confidence", "1.5"]])
def test_min_confidence_is_checked(argv):
    result = run_cli(*argv)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_calibration_lowers_the_test_ece_of_the_default_model(trained_mnist):
    calibration = json.loads((trained_mnist / "metrics.json").read_text())["calibration"]
    assert calibration["fitted"]
    assert calibration["after"]["ece"] < calibration["before"]["ece"]
    assert calibration["after"]["nll"] < 1.05 * calibration["before"]["nll"]
