"""Edges found by trying the tool as a user: each provoked for real."""

import numpy as np
import pytest

from digitkit import plots
from digitkit.config import DIGITS
from helpers import FAST, run_main


@pytest.mark.parametrize("split, kept", [("0.99999", 0), ("0.99", 6)])
def test_a_split_that_leaves_less_than_one_batch_is_a_one_line_error(synthetic_dir, tmp_path,
                                                                    split, kept):
    result = run_main("--data-dir", synthetic_dir, "--output-dir", tmp_path, *FAST,
                      "--validation-split", split)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --validation-split {split} leaves {kept} of 600 training images, fewer than "
        f"one batch of 64; lower --validation-split or --batch-size"]
    assert not (tmp_path / "metrics.json").exists() and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_split_that_leaves_exactly_one_batch_trains(synthetic_dir, tmp_path):
    # 600 images, 536 held out: 64 left, one batch of 64.
    result = run_main("--data-dir", synthetic_dir, "--output-dir", tmp_path, *FAST,
                      "--validation-split", str(536 / 600), "--quiet", "--no-plots")
    assert result.returncode == 0, result.stderr


def test_normalised_confusion_matrix_leaves_cells_no_image_reached_blank(monkeypatch, tmp_path):
    shown = {}

    def capture(fig, path):
        """Keep the annotations instead of saving."""
        shown["texts"] = [text.get_text() for text in fig.axes[0].texts]
        plots.plt.close(fig)
        return path

    monkeypatch.setattr(plots, "save_figure", capture)
    confusion = np.diag(np.full(10, 98))
    confusion[3, 5] = 2  # two 3s read as 5
    confusion[0, 0] = 100
    plots.plot_confusion_matrix(confusion, DIGITS, "t", tmp_path / "c.png", normalize=True)
    texts = shown["texts"]
    assert len(texts) == 100
    assert texts[0] == "100.0%" and texts[3 * 10 + 5] == "2.0%" and texts[3 * 10 + 3] == "98.0%"
    assert sum(text == "" for text in texts) == 100 - 11  # ten diagonal cells and one mistake


@pytest.mark.slow
def test_a_class_with_no_test_images_is_not_ranked_by_recall(tmp_path):
    from helpers import synthetic_digits, write_idx

    x_train, y_train = synthetic_digits(600, seed=1)
    x_test, y_test = synthetic_digits(200, seed=2)
    keep = y_test != 5
    (tmp_path / "data").mkdir()
    for name, array in (("train-images-idx3-ubyte", x_train), ("train-labels-idx1-ubyte", y_train),
                        ("t10k-images-idx3-ubyte", x_test[keep]),
                        ("t10k-labels-idx1-ubyte", y_test[keep])):
        write_idx(tmp_path / "data" / name, array)
    result = run_main("--data-dir", tmp_path / "data", "--output-dir", tmp_path / "out", *FAST,
                      "--no-plots")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("lowest recall"))
    assert "5 (" not in line and line.endswith("; no test images of 5")
