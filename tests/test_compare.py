"""--compare and --repeats: one row per architecture, mean and spread over seeds."""

import csv
import json

from conftest import run_cli


def test_compare_writes_three_files_with_one_row_per_spec(tmp_path, synthetic_dir):
    result = run_cli("--compare", "16", "16,8", "none", "--repeats", "2", "--epochs", "1",
                     "--batch-size", "64", "--data-dir", synthetic_dir, "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    assert [row["hidden"] for row in rows] == ["16", "16,8", "none"]
    assert [int(row["parameters"]) for row in rows] == [784 * 16 + 16 + 16 * 10 + 10,
                                                        784 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10,
                                                        784 * 10 + 10]
    for row in rows:
        assert row["runs"] == "2"
        assert float(row["test_accuracy_std"]) >= 0 and row["test_accuracy_std"] != ""
        assert 0 < float(row["test_accuracy_mean"]) <= 1
    table = (tmp_path / "comparison.md").read_text().splitlines()
    assert len(table) == 2 + 3 and "| 16,8 |" in table[3]
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    record = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["seeds"] for r in record["rows"]] == [[42, 43]] * 3


def test_repeats_on_a_single_run_report_mean_and_std(tmp_path, synthetic_dir):
    result = run_cli("--repeats", "3", "--epochs", "1", "--hidden", "16", "--batch-size", "64",
                     "--data-dir", synthetic_dir, "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    repeats = metrics["repeats"]
    assert repeats["seeds"] == [42, 43, 44] and len(repeats["test_accuracy"]) == 3
    assert repeats["test_accuracy"][0] == metrics["test_accuracy"]
    assert repeats["test_accuracy_std"] >= 0
    assert repeats["test_loss_std"] > 0  # different seeds, different models
    assert "±" in result.stdout
