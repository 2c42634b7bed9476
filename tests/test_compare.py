"""--compare and --repeats: one row per architecture, mean and spread over seeds."""

import csv
import json
import re
import statistics

import pytest

from helpers import run_main


@pytest.mark.slow
def test_compare_writes_three_files_with_one_row_per_spec(tmp_path, synthetic_dir):
    result = run_main("--compare", "16", "16,8", "none", "--repeats", "2", "--epochs", "1",
                      "--batch-size", "64", "--data-dir", synthetic_dir, "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "report.html").exists()  # a training run's own stays its own
    tmp_path = tmp_path / "comparison"  # where a comparison's files go
    rows = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    assert [row["hidden"] for row in rows] == ["16", "16,8", "none"]
    assert [int(row["parameters"]) for row in rows] == [784 * 16 + 16 + 16 * 10 + 10,
                                                        784 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10,
                                                        784 * 10 + 10]
    record = json.loads((tmp_path / "comparison.json").read_text())
    for row, runs in zip(rows, record["comparison"]):
        assert row["runs"] == "2" and len(runs["test_accuracy"]) == 2
        # The csv's spread is the sample statistics of the seeds' own results.
        assert float(row["test_accuracy_mean"]) == pytest.approx(
            statistics.mean(runs["test_accuracy"]), abs=1e-6)
        assert float(row["test_accuracy_std"]) == pytest.approx(
            statistics.stdev(runs["test_accuracy"]), abs=1e-6)
    table = (tmp_path / "comparison.md").read_text().splitlines()
    assert len(table) == 2 + 3 and "| 16,8 |" in table[3]
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    assert [r["seeds"] for r in record["comparison"]] == [[42, 43]] * 3
    page = (tmp_path / "report.html").read_text()
    assert "Architectures compared" in page and "<td>16,8</td>" in page
    assert page.count('src="data:image/png;base64,') == 1  # comparison.png


@pytest.mark.slow
def test_repeats_on_a_single_run_report_mean_and_std(tmp_path, synthetic_dir):
    result = run_main("--repeats", "3", "--epochs", "1", "--hidden", "16", "--batch-size", "64",
                      "--data-dir", synthetic_dir, "--output-dir", tmp_path, "--no-plots")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    repeats = metrics["repeats"]
    assert repeats["seeds"] == [42, 43, 44] and len(repeats["test_accuracy"]) == 3
    assert repeats["test_accuracy"][0] == metrics["test_accuracy"]
    # Each seed's validation accuracy too: the last epoch's, as its history.csv ends.
    assert repeats["val_accuracy"][0] == metrics["history"]["val_accuracy"][-1]
    assert len(repeats["val_accuracy"]) == 3
    assert repeats["test_accuracy_mean"] == pytest.approx(statistics.mean(repeats["test_accuracy"]))
    assert repeats["test_accuracy_std"] == pytest.approx(statistics.stdev(repeats["test_accuracy"]))
    assert repeats["test_loss_std"] == pytest.approx(statistics.stdev(repeats["test_loss"]))
    assert repeats["test_loss_std"] > 0  # different seeds, different models
    assert "±" in result.stdout
    # The page is rendered from the same record, after the repeats: it shows them too.
    page = (tmp_path / "report.html").read_text()
    shown = re.search(r'<b id="repeats">([^<]*)</b>([^<]*)', page)
    assert shown.group(1) == (f"{repeats['test_accuracy_mean']:.4%} ± "
                              f"{repeats['test_accuracy_std']:.4%}")
    for seed, accuracy in zip(repeats["seeds"], repeats["test_accuracy"]):
        assert f"{seed}: {accuracy:.2%}" in shown.group(2)
    training = re.search(r'<span id="training">([^<]*)</span>', page).group(1)
    timing = metrics["timing"]
    assert training == (f"1 epochs in {timing['train_seconds']:.1f} s, "
                        f"{timing['samples_per_second']:,.0f} samples per second")
