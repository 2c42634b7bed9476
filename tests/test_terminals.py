"""Whatever the terminal and the file names: names shown as they are, never run as math text
or terminal escapes; an ASCII-only terminal and a closed stdout still get a finished run."""

import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import FAST, SCRIPT, cli_environment, run_cli, run_main


def a_digit(path):
    """A small black bar on white: something to classify."""
    Image.fromarray(np.uint8(255 - np.pad(np.full((12, 4), 255), 8))).save(path)
    return path


def test_names_that_look_like_math_text_are_drawn_as_they_are(tmp_path, trained_synthetic):
    files = [a_digit(tmp_path / name) for name in ("a$\\undefinedcmd$b.png", "$\\frac$.png")]
    result = run_main("--predict", *files, "--model", trained_synthetic[0] / "model.keras",
                      "--output-dir", tmp_path / "out", "--explain")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "predictions.png").is_file()
    assert len(list((tmp_path / "out" / "explain").iterdir())) == 2


def test_names_with_control_characters_are_printed_escaped(tmp_path, trained_synthetic):
    files = [a_digit(tmp_path / name) for name in ("title\x1b]0;owned\x07.png", "two\nlines.png")]
    (tmp_path / "bad\x1b[2J.png").write_text("not an image")
    result = run_main("--predict", *files, tmp_path / "bad\x1b[2J.png", "--model",
                      trained_synthetic[0] / "model.keras", "--output-dir", tmp_path / "out")
    assert result.returncode == 1
    for stream in (result.stdout, result.stderr):
        assert "\x1b" not in stream and "\x07" not in stream
    assert "title\\x1b]0;owned\\x07.png: " in result.stdout
    assert "two\\nlines.png: " in result.stdout
    assert result.stderr.count("\n") == 1 and "bad\\x1b[2J.png" in result.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").read_text().splitlines()))
    assert [row["file"].rsplit("/", 1)[-1] for row in rows] == [
        "title\\x1b]0;owned\\x07.png", "two\\nlines.png"]


@pytest.mark.slow
def test_an_ascii_only_terminal_gets_every_answer_and_the_files(tmp_path, trained_synthetic):
    image = a_digit(tmp_path / "ünï±.png")
    result = run_cli("--predict", image, "--model", trained_synthetic[0] / "model.keras",
                     "--output-dir", tmp_path / "out", env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert "\\xfcn\\xef\\xb1.png: " in result.stdout
    assert (tmp_path / "out" / "predictions.png").is_file()


@pytest.mark.slow
def test_a_closed_stdout_still_predicts_and_trains_and_publishes(tmp_path, trained_synthetic,
                                                                 synthetic_dir):
    image = a_digit(tmp_path / "one.png")
    model = trained_synthetic[0] / "model.keras"
    for args, made in ((["--predict", image, "--model", model, "--output-dir", tmp_path / "p"],
                        tmp_path / "p" / "predictions.csv"),
                       (["--data-dir", synthetic_dir, "--output-dir", tmp_path / "t", *FAST,
                         "--no-plots"], tmp_path / "t" / "metrics.json")):
        command = " ".join(f"'{arg}'" for arg in [sys.executable, SCRIPT, *args])
        result = subprocess.run(["bash", "-c", f"exec {command} >&-"], capture_output=True,
                                text=True, timeout=300, env=cli_environment())
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert made.is_file()
