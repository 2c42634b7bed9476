"""--predict on a user's own image files, and the preprocessing that makes them MNIST-like."""

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from digitkit import data, images, ink, plots, saved
from digitkit.config import DIGITS, MIN_CONFIDENCE
from helpers import run_main


def user_style_image(digit, size, style, rng):
    """A real 28x28 MNIST digit redrawn the way a user's file looks: black ink on white paper,
    scaled up, placed off-centre with a margin, saved as RGB, transparent RGBA or JPEG."""
    ink = Image.fromarray(digit).resize((int(size * 0.6), int(size * 0.6)), Image.BICUBIC)
    ink = np.asarray(ink, dtype=np.float32) / 255
    canvas = np.zeros((size, size), np.float32)
    top, left = rng.integers(0, size - ink.shape[0] + 1, size=2)
    canvas[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
    paper = np.uint8(np.round(255 * (1 - canvas)))
    if style == "rgba":  # black ink on a transparent background
        rgba = np.zeros((size, size, 4), np.uint8)
        rgba[..., 3] = np.uint8(np.round(255 * canvas))
        return Image.fromarray(rgba, "RGBA")
    image = Image.fromarray(paper, "L").convert("RGB")
    if style == "rgb-tinted":  # bluish ink on cream paper
        tinted = np.asarray(image, np.float32) * np.array([1.0, 0.97, 0.88])
        tinted[canvas > 0.3] = tinted[canvas > 0.3] * 0.4 + np.array([0, 0, 90])
        image = Image.fromarray(np.uint8(np.clip(tinted, 0, 255)), "RGB")
    return image


STYLES = [("png", "rgb"), ("png", "rgba"), ("jpg", "rgb"), ("png", "rgb-tinted")]
SIZES = [28, 64, 150, 400]


def make_user_images(directory, x_test, y_test, count):
    """Files in every size and style, from the first `count` test digits."""
    rng = np.random.default_rng(0)
    files, labels = [], []
    for i in range(count):
        extension, style = STYLES[i % len(STYLES)]
        size = SIZES[(i // len(STYLES)) % len(SIZES)]
        path = directory / f"digit{i:03d}_{style}_{size}.{extension}"
        image = user_style_image(x_test[i], size, style, rng)
        image.save(path, quality=85) if extension == "jpg" else image.save(path)
        files.append(path)
        labels.append(int(y_test[i]))
    return files, labels


def test_user_images_are_classified_like_mnist(trained_mnist, mnist_dir, tmp_path):
    arrays, _ = data.read_data_dir(mnist_dir, "mnist")
    files, labels = make_user_images(tmp_path, arrays["x_test"], arrays["y_test"], 320)
    result = run_main("--predict", *files, "--model", trained_mnist / "model.keras",
                      "--output-dir", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    predictions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["file"] for p in predictions] == [str(f) for f in files]
    correct = sum(int(p["prediction"]) == label for p, label in zip(predictions, labels))
    accuracy = correct / len(files)
    print(f"user-style images classified correctly: {correct}/{len(files)} = {accuracy:.2%}")
    assert accuracy >= 0.95
    assert (tmp_path / "out" / "predictions.png").is_file()


def test_preprocessing_recovers_an_mnist_digit(mnist_dir):
    arrays, _ = data.read_data_dir(mnist_dir, "mnist")
    rng = np.random.default_rng(1)
    for i in range(20):
        digit = arrays["x_test"][i]
        original = digit.astype(np.float32) / 255
        for style in ("rgb", "rgba"):
            image = user_style_image(digit, 200, style, rng)
            if image.mode == "RGBA":
                gray = np.asarray(images.flatten_transparency(image).convert("L"), np.float32) / 255
            else:
                gray = np.asarray(image.convert("L"), np.float32) / 255
            processed = images.to_mnist_format(gray)
            assert processed.shape == (28, 28) and processed.dtype == np.float32
            assert processed.max() == pytest.approx(1.0)
            ys, xs = np.indices(processed.shape)
            centre = ((ys * processed).sum() / processed.sum(), (xs * processed).sum() / processed.sum())
            assert abs(centre[0] - 14) < 1 and abs(centre[1] - 14) < 1
            correlation = np.corrcoef(processed.ravel(), original.ravel())[0, 1]
            assert correlation > 0.6, (i, style, correlation)


@pytest.fixture(scope="module")
def model_path(trained_synthetic):
    return trained_synthetic[0] / "model.keras"


def test_bad_images_are_reported_and_the_rest_classified(tmp_path, model_path, monkeypatch):
    good = tmp_path / "good.png"
    Image.fromarray(np.uint8(255 - np.pad(np.full((12, 4), 255), 8))).save(good)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (100, 80), "white").save(blank)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    truncated = tmp_path / "truncated.jpg"
    Image.new("RGB", (200, 200), "white").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    folder = tmp_path / "folder.png"
    folder.mkdir()
    missing = tmp_path / "missing.png"
    bad = {blank: "blank", empty: "empty", text: "not an image", truncated: "unreadable",
           folder: "folder with no files", missing: "no such file"}
    drawn = {}
    monkeypatch.setattr(plots, "plot_digit_grid", lambda images, captions, title, path, **_:
                        drawn.update(images=images, captions=captions, title=title))
    result = run_main("--predict", good, *bad, "--model", model_path,
                      "--output-dir", tmp_path / "out")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(bad)
    for (path, reason), line in zip(bad.items(), errors):
        assert line.startswith(f"error: {path}: ") and reason in line, line
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(good))]
    assert len(lines) == 1 and "next:" in lines[0]
    # The picture shows the one image that could be read, as the model saw it, with its answer.
    prediction = lines[0].split(": ")[1].split(" (")[0]
    assert len(drawn["images"]) == 1 and drawn["images"][0].shape == (28, 28)
    assert drawn["captions"][0].startswith(f"good.png\n{prediction} (")


@pytest.mark.parametrize("denied", ["listing", "searching"])
def test_a_folder_named_that_cannot_be_read_is_one_error_and_the_rest_classified(
        tmp_path, model_path, monkeypatch, denied):
    from pathlib import Path

    images = []
    for number in (0, 2):
        images.append(tmp_path / f"ok{number}.png")
        Image.fromarray(np.uint8(np.pad(np.full((12, 4), 255), 8))).save(images[-1])
    locked = tmp_path / "sub_nox"
    locked.mkdir()
    Image.fromarray(np.uint8(np.pad(np.full((12, 4), 255), 8))).save(locked / "inside.png")
    # What a folder without read (listing) or execute (searching) permission does to a user
    # who is not root, whatever user runs the test.
    original = Path.iterdir if denied == "listing" else Path.resolve

    def refused(self, *args):
        if self == locked or self.parent == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args)

    monkeypatch.setattr(Path, "iterdir" if denied == "listing" else "resolve", refused)
    result = run_main("--predict", images[0], locked, images[1], "--model", model_path,
                      "--output-dir", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {locked}: a folder that cannot be read "
                                     f"(Permission denied)"), result.stderr
    assert "predictions.csv" not in result.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert [row["file"] for row in rows] == [str(images[0]), str(images[1])]


def test_json_lines_carry_prediction_and_two_candidates(tmp_path, model_path):
    image = tmp_path / "one.png"
    Image.fromarray(np.uint8(np.pad(np.full((3, 20), 255), 4))).save(image)
    result = run_main("--predict", image, "--json", "--model", model_path,
                      "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["file"] == str(image) and record["prediction"] in DIGITS
    assert len(record["candidates"]) == 2
    probabilities = [record["probability"]] + [c["probability"] for c in record["candidates"]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_missing_model_suggests_training(tmp_path):
    image = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(image)
    result = run_main("--predict", image, "--model", tmp_path / "none.keras")
    assert result.returncode == 1
    assert "train one first" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_incompatible_model_is_refused(tmp_path):
    import keras

    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    other.save(tmp_path / "other.keras")
    not_a_model = tmp_path / "junk.keras"
    not_a_model.write_text("junk")
    image = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(image)
    for path in (tmp_path / "other.keras", not_a_model):
        result = run_main("--predict", image, "--model", path, "--output-dir", tmp_path)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "train one first" in lines[0], result.stderr
    # The cause stays in the one line: not just the exception's type.
    assert re.search(r"not a loadable Keras model \(ValueError: \S", lines[0]), lines[0]


@pytest.mark.slow
def test_a_folder_of_2000_images_gives_a_csv_row_each(tmp_path, model_path):
    from helpers import synthetic_digits

    folder = tmp_path / "scans"
    folder.mkdir()
    images, _ = synthetic_digits(2000, seed=5)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"scan{i:04d}.png")
    (folder / "README.txt").write_text("not an image")
    (folder / "nested").mkdir()
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: not even reported
    single = tmp_path / "single.png"
    Image.fromarray(images[0]).save(single)
    result = run_main("--predict", single, folder, "--model", model_path,
                      "--output-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    skipped = result.stderr.strip().splitlines()
    assert skipped == [f"skipped: {folder / 'README.txt'}: not an image file Pillow can read",
                       f"skipped: {folder / 'nested'}: is a folder with no files in it"]
    assert "classified 2,001 images" in result.stdout
    assert "skipped 2 files that are not images" in result.stdout
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2001
    assert [row["file"] for row in rows] == [str(single)] + [
        str(folder / f"scan{i:04d}.png") for i in range(2000)]
    assert list(rows[0]) == ["file", "prediction", "probability", "second", "second_probability",
                             "third", "third_probability", "unsure", "digits"]  # as the README lists
    for row in rows[:50]:
        p = [float(row["probability"]), float(row["second_probability"]),
             float(row["third_probability"])]
        assert p == sorted(p, reverse=True) and len({row["prediction"], row["second"], row["third"]}) == 3
        assert row["unsure"] == str(int(p[0] < MIN_CONFIDENCE))
    assert (tmp_path / "out" / "predictions.png").stat().st_size > 0


def test_an_empty_folder_is_an_error_and_nothing_is_overwritten(tmp_path, model_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("earlier results\n")
    (tmp_path / "empty").mkdir()
    result = run_main("--predict", tmp_path / "empty", "--model", model_path, "--output-dir", out)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'empty'}: is a folder with no files in it",
        "error: no image to classify: none of the 1 files could be read"]
    assert (out / "predictions.csv").read_text() == "earlier results\n"


class RecordingModel:
    """Stands in for a Keras model: records the batch sizes it was asked to predict."""

    def __init__(self):
        self.batches = []

    def predict(self, images, batch_size, verbose):
        self.batches.append(len(images))
        return np.tile(np.linspace(0.01, 0.19, 10), (len(images), 1))


def test_images_are_classified_a_bounded_chunk_at_a_time():
    model = RecordingModel()
    one = ink.Reading([ink.Digit(np.zeros((28, 28), np.float32), (0, 0, 1, 1))])
    images = ((f"{i}.png", one) for i in range(1001))
    results = list(saved.classify(model, images, chunk=100))
    assert model.batches == [100] * 10 + [1]
    assert [path for path, _, _ in results] == [f"{i}.png" for i in range(1001)]


def test_the_picture_shows_a_bounded_subset_unsure_first():
    shown = saved.ShownImages(limit=4)
    for i in range(10):
        shown.offer(np.full((28, 28), i, np.float32), f"image {i}", unsure=i in (5, 7))
    images, captions, colours, how_many = shown.chosen()
    assert captions == ["image 5", "image 7", "image 0", "image 1"]
    assert colours == ["tab:red", "tab:red", "black", "black"]
    assert how_many == "4 of 10 digits, the unsure first" and len(images) == 4
    few = saved.ShownImages(limit=4)
    for i in range(3):
        few.offer(np.zeros((28, 28), np.float32), f"image {i}", unsure=i == 1)
    assert few.chosen()[1:] == (["image 0", "image 1", "image 2"],
                                ["black", "tab:red", "black"], "")


@pytest.mark.slow
def test_a_full_standard_output_is_named_not_the_csv(tmp_path, model_path):
    from helpers import SCRIPT, cli_environment
    import subprocess
    import sys

    image = tmp_path / "one.png"
    Image.fromarray(np.uint8(np.pad(np.full((12, 4), 255), 8))).save(image)
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, str(SCRIPT), "--predict", str(image), "--model",
                                 str(model_path), "--output-dir", str(tmp_path / "out")],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
                                env=cli_environment())
    assert result.returncode == 1
    assert result.stderr.strip() == "error: standard output: No space left on device"


def test_a_model_that_cannot_be_read_says_so_and_does_not_advise_training(tmp_path, model_path,
                                                                           monkeypatch):
    real_open = open

    def refusing(path, *args, **kwargs):
        if str(path) == str(model_path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(saved, "open", refusing, raising=False)  # as for a user not root
    image = tmp_path / "one.png"
    Image.fromarray(np.uint8(np.pad(np.full((12, 4), 255), 8))).save(image)
    result = run_main("--predict", image, "--model", model_path, "--output-dir", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {model_path}: the saved model cannot be read "
                                     f"(Permission denied)")
