"""A careless or hostile user: inputs that once ended in a traceback, a hang or a lost file.

Each test provokes one case of issue #25 and checks the one-line answer, the exit status, and
that nothing already on disk was touched.
"""

import csv
import gzip
import json
import os
import warnings

import keras
import numpy as np
import pytest
from PIL import Image

from helpers import FAST, run_cli, run_main, write_dataset, write_idx
from digitkit import cli
from test_draw import huge_png_header


def one_line(result):
    """stderr as one line, asserting it is one and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# --- numbers the run cannot use are refused by the parser (exit 2) ---------------------------

@pytest.mark.parametrize("argv", [["--seed", "4294967296"], ["--seed", str(2 ** 40)],
                                  ["--predict", "x.png", "--seed", "4294967296"],
                                  ["--seed", "4294967295", "--repeats", "2"],
                                  ["--epochs", "100000000000000000"],
                                  ["--steps-per-execution", str(10 ** 12)],
                                  ["--output-dir", ""], ["--data-dir", " "], ["--model", ""]])
def test_numbers_and_paths_the_run_cannot_use_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_command_line(argv)
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_largest_seed_still_runs_its_repeats():
    _, config, _ = cli.parse_command_line(["--seed", "4294967294", "--repeats", "2"])
    assert (config.seed, config.repeats) == (4294967294, 2)


# --- data files that are not what they claim ------------------------------------------------

def test_a_fifo_as_an_idx_file_is_refused_at_once_not_read_for_ever(tmp_path):
    data = write_dataset(tmp_path / "data")
    fifo = data / "train-images-idx3-ubyte.gz"
    fifo.unlink()
    os.mkfifo(fifo)
    out = tmp_path / "new" / "out"
    result = run_cli("--data-dir", data, "--output-dir", out, *FAST, timeout=60)
    assert result.returncode == 1
    assert "not a regular file" in one_line(result) and str(fifo) in result.stderr
    assert not (tmp_path / "new").exists()  # the folder it made is taken back


def test_a_link_to_dev_zero_as_an_idx_file_is_refused(tmp_path):
    data = write_dataset(tmp_path / "data")
    (data / "t10k-labels-idx1-ubyte.gz").unlink()
    (data / "t10k-labels-idx1-ubyte").symlink_to("/dev/zero")
    result = run_main("--data-dir", data, "--output-dir", tmp_path / "out", *FAST)
    assert result.returncode == 1 and "not a regular file" in one_line(result)


def test_a_small_gzip_that_expands_past_its_header_is_read_no_further(tmp_path):
    data = write_dataset(tmp_path / "data")
    header = (0x0801).to_bytes(4, "big") + (600).to_bytes(4, "big")
    bomb = gzip.compress(header + bytes(50_000_000), compresslevel=9)  # 50 MB of labels
    assert len(bomb) < 100_000
    (data / "train-labels-idx1-ubyte.gz").write_bytes(bomb)
    result = run_main("--data-dir", data, "--output-dir", tmp_path / "out", *FAST)
    assert result.returncode == 1
    assert "header promises 600 bytes of data but the file holds more" in one_line(result)


def test_a_header_promising_more_than_the_memory_is_refused_before_reading(tmp_path):
    data = write_dataset(tmp_path / "data")
    write_idx(data / "t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28), np.uint8))
    raw = gzip.decompress((data / "t10k-images-idx3-ubyte.gz").read_bytes())
    lie = raw[:4] + (2 ** 32 - 1).to_bytes(4, "big") + raw[8:]  # 3.4 TB of images, it says
    (data / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(lie))
    result = run_main("--data-dir", data, "--output-dir", tmp_path / "out", *FAST)
    assert result.returncode == 1 and "more than half the memory available" in one_line(result)


def test_a_file_given_as_data_dir_is_called_a_file(tmp_path):
    (tmp_path / "train.txt").write_text("not data")
    result = run_main("--data-dir", tmp_path / "train.txt", "--output-dir", tmp_path / "out")
    assert result.returncode == 1 and "is a file, not a folder" in one_line(result)


# --- what a run saved is never overwritten -----------------------------------------------------

@pytest.mark.slow
def test_evaluating_a_runs_folder_writes_beside_its_files_not_over_them(trained_synthetic,
                                                                        synthetic_dir, tmp_path):
    import shutil

    from test_guard_rails import snapshot

    run = tmp_path / "run"
    shutil.copytree(trained_synthetic[0], run)
    before = snapshot(run)
    del before[".digit_classifier.lock"]  # the lock file says who holds the folder now
    result = run_main("--evaluate", "--output-dir", run, "--data-dir", synthetic_dir, "--quiet")
    assert result.returncode == 0, result.stderr
    after = snapshot(run)
    assert {name: after[name] for name in before} == before  # every file, byte for byte
    assert json.loads((run / "evaluation" / "metrics.json").read_text())["model"] == str(
        (run / "model.keras").resolve())
    # So the fitted temperature is still in the record --draw reads.
    assert json.loads((run / "metrics.json").read_text())["calibration"]["fitted"]

    # A second evaluation, and a comparison, leave the first evaluation and the run whole.
    first = snapshot(run / "evaluation")
    again = run_main("--evaluate", "--output-dir", run, "--data-dir", synthetic_dir, "--quiet")
    compared = run_main("--compare", "8", "--output-dir", run, "--data-dir", synthetic_dir,
                        "--quiet", *FAST[:2])
    assert again.returncode == compared.returncode == 0, again.stderr + compared.stderr
    [moved] = (run / "evaluation" / "previous").iterdir()
    assert snapshot(moved) == first
    assert {name: snapshot(run)[name] for name in before} == before
    assert (run / "comparison" / "comparison.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("again", [["--quiet"], ["--resume"]])
def test_training_again_moves_the_finished_run_aside_whole(trained_synthetic, synthetic_dir,
                                                          tmp_path, again):
    import shutil

    from test_guard_rails import snapshot

    run = tmp_path / "run"
    shutil.copytree(trained_synthetic[0], run)
    before = snapshot(run)
    del before[".digit_classifier.lock"]
    result = run_main("--data-dir", synthetic_dir, "--output-dir", run, *FAST, "--seed", "7",
                      "--no-plots", *again)
    assert result.returncode == 0, result.stderr
    (previous,) = (run / "previous").iterdir()
    assert snapshot(previous) == before  # the finished run, every file, byte for byte
    assert not list(run.glob("*.png"))  # none of its pictures left beside the new run's files
    assert json.loads((run / "metrics.json").read_text())["config"]["seed"] == 7
    assert not list(run.glob(".run-*"))
    if "--quiet" not in again:
        assert f"the previous run's files are now in {previous}" in result.stdout


@pytest.mark.slow
def test_what_describes_a_model_moves_aside_with_it_when_training_replaces_it(
        trained_synthetic, synthetic_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_synthetic[0], run)
    evaluated = run_main("--evaluate", "--model", run / "model.keras", "--output-dir", run,
                         "--data-dir", synthetic_dir, "--no-plots")
    assert evaluated.returncode == 0, evaluated.stderr
    photo = tmp_path / "seven.png"
    Image.fromarray(np.pad(np.full((40, 8), 255, np.uint8), 20)).save(photo)
    predicted = run_main("--predict", photo, "--model", run / "model.keras", "--output-dir", run)
    assert predicted.returncode == 0, predicted.stderr
    old_accuracy = json.loads((run / "evaluation" / "metrics.json").read_text())["test_accuracy"]
    trained = run_main("--data-dir", synthetic_dir, "--output-dir", run, *FAST, "--seed", "7",
                       "--no-plots", "--quiet")
    assert trained.returncode == 0, trained.stderr
    # The old model's evaluation and predictions went to previous/ with it: nothing beside the
    # new model describes the old one.
    assert not (run / "evaluation").exists()
    assert not (run / "predictions.csv").exists() and not (run / "predictions.png").exists()
    (previous,) = (run / "previous").iterdir()
    assert (previous / "model.keras").is_file() and (previous / "predictions.csv").is_file()
    moved = json.loads((previous / "evaluation" / "metrics.json").read_text())
    assert moved["test_accuracy"] == old_accuracy


# --- the output folder's lock ----------------------------------------------------------------

def test_a_lock_file_planted_as_a_link_is_not_followed(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (out / ".digit_classifier.lock").symlink_to(victim)
    result = run_main("--data-dir", synthetic_dir, "--output-dir", out, *FAST)
    assert result.returncode == 1 and "symbolic link" in one_line(result)
    assert victim.read_text() == "keep me"


# --- --predict's images and names -------------------------------------------------------------

@pytest.fixture(scope="module")
def model_path(trained_synthetic):
    return trained_synthetic[0] / "model.keras"


def digit_png(path):
    """A white bar on black: something the synthetic model reads."""
    Image.fromarray(np.uint8(np.pad(np.full((16, 4), 255), 6))).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("as_json", [False, True])
def test_a_file_name_that_is_not_utf8_is_classified_like_the_others(tmp_path, model_path,
                                                                    as_json):
    folder = tmp_path / "scans"
    folder.mkdir()
    digit_png(folder / "plain.png")
    digit_png(folder / os.fsdecode(b"caf\xe9.png"))  # Latin-1, as an old camera names files
    out = tmp_path / "out"
    result = run_cli("--predict", folder, "--model", model_path, "--output-dir", out,
                     *(["--json"] if as_json else []))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = list(csv.DictReader((out / "predictions.csv").open(encoding="utf-8")))
    assert sorted(row["file"] for row in rows) == sorted(
        [str(folder / "plain.png"), str(folder) + "/caf\\xe9.png"])
    if as_json:
        assert len([json.loads(line) for line in result.stdout.splitlines()]) == 2


def test_file_names_that_would_be_formulas_are_text_in_the_csv(tmp_path, model_path,
                                                               monkeypatch):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("=HYPERLINK(1).png", "+1.png", "@x.png", "-2.png", "ok.png"):
        digit_png(scans / name)
    monkeypatch.chdir(scans)  # `--predict .` names the files bare: first in their cells
    result = run_main("--predict", ".", "--model", model_path, "--output-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert [row["file"] for row in rows] == [
        "'+1.png", "'-2.png", "'=HYPERLINK(1).png", "'@x.png", "ok.png"]


def test_a_rerun_into_the_same_folder_does_not_classify_its_own_picture(tmp_path, model_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(3):
        digit_png(folder / f"{i}.png")
    for _ in range(2):
        result = run_main("--predict", folder, "--model", model_path, "--output-dir", folder)
        assert result.returncode == 0, result.stderr
        assert "classified 3 images" in result.stdout


@pytest.mark.slow
def test_a_huge_image_is_refused_from_its_header_without_pillows_warning(tmp_path, model_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(huge_png_header(12000, 12000))
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")  # as a fresh process shows every warning once
        result = run_main("--predict", huge, "--model", model_path,
                          "--output-dir", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    # Pillow's own two-line warning, which a user's terminal would show
    assert not [w for w in warned if "DecompressionBomb" in w.category.__name__], warned
    assert result.stderr.splitlines()[0].endswith(
        "huge.png: image is 12,000x12,000 pixels, more than the 50,000,000 allowed")


def test_a_model_whose_outputs_are_not_probabilities_is_refused(tmp_path):
    linear = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                               keras.layers.Dense(10)])
    linear.layers[-1].set_weights([np.zeros((784, 10)), np.arange(10.0) * 30])
    linear.save(tmp_path / "linear.keras")
    image = digit_png(tmp_path / "x.png")
    result = run_main("--predict", image, "--model", tmp_path / "linear.keras",
                      "--output-dir", tmp_path / "out")
    assert result.returncode == 1 and "outputs are not probabilities" in one_line(result)


@pytest.mark.parametrize("mode", [["--predict", "x.png"], ["--evaluate"], ["--draw"]])
def test_a_model_path_that_is_no_file_is_called_so_not_a_place_to_train(mode, tmp_path):
    for model in ("/dev/zero", tmp_path):  # a device, a folder
        result = run_main(*mode, "--model", model, "--output-dir", tmp_path / "out")
        line = one_line(result)
        assert result.returncode == 1 and line == (
            f"error: {model}: not a file; a saved model is the model.keras file a training "
            f"run writes"), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("forged", [["mnist"], {"name": "mnist"}, 7, "imagenet"])
def test_a_model_whose_own_metadata_is_forged_is_one_line_and_exit_1(forged, tmp_path,
                                                                    trained_synthetic,
                                                                    synthetic_dir):
    import zipfile

    source = trained_synthetic[0] / "model.keras"
    model = tmp_path / "model.keras"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(model, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename == "digit_classifier.json":
                data = json.dumps(dict(json.loads(data), dataset=forged)).encode()
            new.writestr(item, data)
    image = tmp_path / "one.png"
    Image.fromarray(np.uint8(np.pad(np.full((3, 20), 255), 4))).save(image)
    for args in (["--predict", image], ["--evaluate", "--data-dir", synthetic_dir]):
        result = run_main(*args, "--model", model, "--output-dir", tmp_path / "out")
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "digit_classifier.json names the dataset" in lines[0], lines


@pytest.mark.parametrize("field, value", [("test_accuracy", "ninety"),
                                          ("dataset", ["MNIST"]),
                                          ("calibration", {"fitted": True, "temperature": "x"})])
def test_a_record_with_fields_of_another_type_does_not_break_the_drawing_page(
        field, value, tmp_path, trained_synthetic):
    import shutil

    from digitkit import draw

    shutil.copy(trained_synthetic[0] / "model.keras", tmp_path / "model.keras")
    record = json.loads((trained_synthetic[0] / "metrics.json").read_text())
    record[field] = value
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    page = draw.drawing_page(tmp_path / "model.keras", 0.8).decode()
    assert "answers below 80% are marked unsure" in page


def test_a_record_with_a_data_dir_of_another_type_is_not_taken_for_the_data(tmp_path,
                                                                            trained_synthetic):
    import shutil

    from digitkit.report import recorded_data

    shutil.copy(trained_synthetic[0] / "model.keras", tmp_path / "model.keras")
    record = json.loads((trained_synthetic[0] / "metrics.json").read_text())
    record["config"]["data_dir"], record["dataset"]["source"] = "somewhere", 5
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    assert recorded_data(tmp_path / "model.keras") is None


def test_a_huge_photo_is_decoded_small_enough_for_a_capped_process(tmp_path):
    from digitkit import images

    photo = Image.new("L", (7000, 7000), 255)  # 49 megapixels, under the 50 allowed
    photo.paste(0, (3300, 2500, 3700, 4500))  # a thick dark stroke: a 1
    for name in ("big.jpg", "big.png"):
        photo.save(tmp_path / name)
        pixels = images.read_image(tmp_path / name)
        # Decoded at a fraction (JPEG: an eighth or a quarter; PNG: blocks averaged), not as
        # 49 million floats (196 MB, grey; 588 MB in colour) ...
        assert max(pixels.shape) <= images.DECODE_SIDE, (name, pixels.shape)
        # ... and the digit is still where it was.
        rows = np.flatnonzero(pixels.min(axis=1) < 0.5)
        assert abs(rows.mean() / pixels.shape[0] - 3500 / 7000) < 0.02


def test_an_image_that_does_not_fit_in_memory_is_skipped_and_the_rest_classified(
        tmp_path, trained_synthetic, monkeypatch):
    from digitkit import images

    small = tmp_path / "small.png"
    Image.fromarray(np.uint8(np.pad(np.full((12, 4), 255), 8))).save(small)
    big = tmp_path / "big.png"
    Image.new("L", (3000, 3000), 0).save(big)
    real_exif_transpose = images.ImageOps.exif_transpose

    def out_of_memory(image, *args, **kwargs):
        """What a 7000x7000 photo did under `prlimit --as=2GiB`."""
        if image.width == 3000:
            raise MemoryError
        return real_exif_transpose(image, *args, **kwargs)

    monkeypatch.setattr(images.ImageOps, "exif_transpose", out_of_memory)
    result = run_main("--predict", big, small, "--model", trained_synthetic[0] / "model.keras",
                      "--output-dir", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {big}: too large to decode in the memory this "
                                     f"process may use")
    assert f"{small}: " in result.stdout and (tmp_path / "out" / "predictions.csv").exists()
