"""Models and checkpoints that an earlier version saved keep working.

The files in tests/fixtures/saved-by-d184608 were written by the single-file version of the
script (its README says how); users have such files on their disks. Each test reads them
through the real command line and checks a figure that only correctly loaded weights give.
"""

import json
import shutil
from pathlib import Path

import pytest

from helpers import ROOT, run_main, write_dataset

FIXTURES = ROOT / "tests" / "fixtures" / "saved-by-d184608"
FASHION_CLASSES = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding `data` (the synthetic set the fixtures were made on) and copies of
    the fixtures, so that no test can change the committed files."""
    folder = tmp_path_factory.mktemp("saved_before")
    write_dataset(folder / "data")
    shutil.copytree(FIXTURES, folder / "saved")
    return folder


@pytest.mark.parametrize("run, flags", [("model", []),
                                        ("unfinished", ["--dataset", "fashion-mnist"])])
@pytest.mark.slow
def test_evaluate_reproduces_the_accuracy_the_old_version_recorded(workdir, run, flags):
    recorded = json.loads((workdir / "saved" / run / "metrics.json").read_text())
    out = workdir / f"evaluated-{run}"
    result = run_main("--evaluate", "--model", workdir / "saved" / run / "model.keras",
                      "--data-dir", workdir / "data", "--output-dir", out, "--quiet", *flags)
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((out / "evaluation" / "metrics.json").read_text())
    # The same weights on the same 200 test images: the very same answers.
    assert evaluated["confusion_matrix"] == recorded["confusion_matrix"]
    assert evaluated["test_accuracy"] == pytest.approx(recorded["test_accuracy"], abs=1e-9)


def test_predict_labels_an_old_fashion_model_with_clothing(workdir, tmp_path):
    from PIL import Image

    from helpers import synthetic_digits

    images, _ = synthetic_digits(3, seed=5)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"image{i}.png")
    result = run_main("--predict", tmp_path, "--json", "--output-dir", tmp_path / "out",
                      "--model", workdir / "saved" / "unfinished" / "model.keras")
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 3
    assert all(answer["prediction"] in FASHION_CLASSES for answer in answers), answers


@pytest.mark.slow
def test_draw_serves_an_old_model_and_reads_its_calibration(workdir):
    from test_draw import a_one, draw_server, request

    model = workdir / "saved" / "model" / "model.keras"
    with draw_server(model) as (port, _):
        status, page, _ = request(port, "GET", "/")
        assert status == 200
        assert "probabilities calibrated (temperature 0.283)" in page  # from its metrics.json
        status, reply, _ = request(port, "POST", "/predict", a_one(),
                                   {"Content-Type": "image/png"})
        assert status == 200 and reply["prediction"] in "0123456789", reply


@pytest.mark.slow
def test_resume_finishes_an_old_unfinished_run(workdir, monkeypatch):
    out = workdir / "resumed"
    shutil.copytree(workdir / "saved" / "unfinished", out)
    before = json.loads((out / "checkpoint" / "state.json").read_text())
    assert before["epochs_done"] == 8
    # The flags of the interrupted run; its fingerprint names --data-dir as "data".
    monkeypatch.chdir(workdir)
    result = run_main("--data-dir", "data", "--output-dir", out, "--dataset", "fashion-mnist",
                      "--hidden", "8", "--committee", "2", "--deskew", "--augment", "elastic",
                      "--epochs", "40", "--batch-size", "64", "--resume", "--quiet",
                      "--no-plots")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "metrics.json").read_text())
    assert record["epochs_completed"] == 40 and not record["interrupted"]
    assert record["history"]["loss"][:8] == [row["loss"] for row in before["history"]]
    assert not (out / "checkpoint").exists()
    assert Path(out / "model.keras").stat().st_size > 0
