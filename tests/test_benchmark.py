"""The benchmarks run end to end (on synthetic data; no assertion on any time)."""

import json
import re
import subprocess
import sys

import pytest

from helpers import ROOT

SPEED = str(ROOT / "benchmarks" / "speed.py")


@pytest.mark.slow
def test_speed_benchmark_reports_medians_and_ratios(synthetic_dir):
    pytest.importorskip("jax", reason="--jax needs jax (requirements-dev.txt)")
    result = subprocess.run([sys.executable, SPEED, "--data-dir", str(synthetic_dir),
                             "--repeats", "1", "--target", "0.5", "--jax", "--plain-epochs",
                             "3", "--set", "epochs=3", "batch_size=64"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "ours: batch 64," in result.stdout and ", 3 epochs" in result.stdout
    for kind in ("plain", "ours", "jax"):
        assert f"repeat 1 {kind}" in result.stdout
    assert "ours / plain, samples per second:" in result.stdout
    assert "jax / plain, samples per second:" in result.stdout
    assert "peak MB" in result.stdout and "epochs to" in result.stdout
    assert "arithmetic floor: 596,400 FLOPs per training sample" in result.stdout
    assert "of the peak" in result.stdout
    try:
        import torch  # noqa: F401  (optional: the runner is skipped without it, and says so)
    except ImportError:
        assert "torch: skipped, PyTorch is not installed" in result.stdout
    else:
        assert "repeat 1 torch" in result.stdout and "ours / torch, samples per second:" in result.stdout


def test_speed_benchmark_refuses_an_unknown_setting(synthetic_dir):
    result = subprocess.run([sys.executable, SPEED, "--data-dir", str(synthetic_dir),
                             "--set", "batchsize=64"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no such digitkit.config.Config field" in result.stderr


@pytest.mark.slow
def test_recipes_benchmark_tables_each_recipe_against_the_first(synthetic_dir, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipes.py"),
                             "--data-dir", str(synthetic_dir), "--seeds", "3",
                             "--output-dir", str(tmp_path),
                             "--recipe", "small=--epochs 1 --hidden 8 --batch-size 64 --no-plots",
                             "--recipe", "wider=--epochs 1 --hidden 32 --batch-size 64 --no-plots"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "small seed 3: test accuracy" in result.stdout
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in result.stdout.splitlines()
            if line.startswith("| small |") or line.startswith("| wider |")}
    assert set(rows) == {"small", "wider"}
    assert rows["wider"][0] == "`--epochs 1 --hidden 32 --batch-size 64 --no-plots`"
    # Every run left its own complete record, with the seed it was given; the table is
    # computed from them (over several seeds: the next test).
    records = {name: json.loads((tmp_path / f"{name}-seed3" / "metrics.json").read_text())
               for name in rows}
    for name, record in records.items():
        assert record["config"]["seed"] == 3
        accuracy = 100 * record["test_accuracy"]
        assert rows[name][1] == f"{accuracy:.2f}% ± 0.00% ({accuracy:.2f})"
        seconds = record["timing"]["train_seconds"]
        assert rows[name][2] == f"{seconds:.1f}"
        assert rows[name][3] == f"{seconds / records['small']['timing']['train_seconds']:.2f}x"


def test_recipes_benchmark_summarises_the_seeds_with_mean_sample_std_and_median_time():
    from benchmarks import recipes

    runs = [dict(test_accuracy=accuracy, timing=dict(train_seconds=seconds))
            for accuracy, seconds in [(0.97, 3.0), (0.98, 1.0), (0.99, 2.5)]]
    summary = recipes.summarise(runs)
    assert summary["mean"] == pytest.approx(98.0) and summary["std"] == pytest.approx(1.0)
    assert summary["accuracies"] == pytest.approx([97.0, 98.0, 99.0])
    assert summary["median_seconds"] == 2.5 and summary["seconds"] == [3.0, 1.0, 2.5]
    assert recipes.summarise(runs[:1])["std"] == 0.0  # one seed: no spread to show


def test_recipes_benchmark_reports_a_failing_run(synthetic_dir, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipes.py"),
                             "--data-dir", str(synthetic_dir), "--seeds", "1",
                             "--output-dir", str(tmp_path), "--recipe", "bad=--epochs 0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "failed (2)" in result.stderr


@pytest.mark.slow
def test_levers_benchmark_tables_every_variant_against_the_default(synthetic_dir):
    # The default and a lever of the two kinds a worker process must apply before TensorFlow
    # starts: an environment variable and a thread setting. (The compile options, such as
    # steps per execution or XLA, only change the Config the same worker code trains.)
    VARIANTS = ("default", "onednn-off", "inter-tf")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "levers.py"),
                             "--data-dir", str(synthetic_dir), "--repeats", "1", "--epochs", "2",
                             "--variants", *VARIANTS], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in VARIANTS}
    assert set(rows) == set(VARIANTS)
    assert "medians over 1 runs each (2 epochs, batch 512)" in result.stdout
    speed = {variant: float(row[2].replace(",", "")) for variant, row in rows.items()}
    for variant, row in rows.items():  # each variant's speed over the default's
        assert float(row[3].rstrip("x")) == pytest.approx(speed[variant] / speed["default"],
                                                          abs=0.006)


@pytest.mark.slow
def test_samplers_benchmark_compares_the_elastic_sampler_with_keras_own():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "samplers.py"),
                             "--rounds", "1", "--calls", "2"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    difference = float(result.stdout.split("largest difference between the two: ")[1].split()[0])
    assert difference < 1e-5  # the same numbers, whichever is faster
    assert "ours: median" in result.stdout and "map_coordinates / ours:" in result.stdout


@pytest.mark.slow
def test_overhead_benchmark_splits_each_run_into_training_and_the_rest(synthetic_dir):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"),
                             "--data-dir", str(synthetic_dir), "--repeats", "1",
                             "--recipes", "seed5", "--no-torch"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    run = next(line for line in result.stdout.splitlines() if line.startswith("seed5 1:"))
    wall, training, outside = (float(value) for value in re.findall(
        r"wall ([\d.]+) s, training ([\d.]+) s, outside ([\d.]+) s", run)[0])
    assert outside == pytest.approx(wall - training, abs=0.11)  # printed to 0.1 s
    assert "robustness" in run and "report" in run
    assert "seed5: wall" in result.stdout and "of training" in result.stdout


@pytest.mark.slow
def test_export_benchmark_times_every_runtime(trained_synthetic):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "export.py"), "--model",
                             str(trained_synthetic[0] / "model.keras"), "--calls", "3"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"onnx", "litert", "savedmodel", "keras"}
    assert all(len(values) == 3 and float(values[0]) > 0 for values in rows.values())
