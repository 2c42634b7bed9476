"""benchmarks/speed.py runs end to end (on synthetic data; no assertion on any time)."""

import subprocess
import sys

import pytest

from conftest import ROOT

SPEED = str(ROOT / "benchmarks" / "speed.py")


def test_speed_benchmark_reports_medians_and_ratios(synthetic_dir):
    pytest.importorskip("jax", reason="--jax needs jax (requirements-dev.txt)")
    result = subprocess.run([sys.executable, SPEED, "--data-dir", str(synthetic_dir),
                             "--repeats", "1", "--target", "0.5", "--jax",
                             "--set", "epochs=3", "batch_size=64"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "ours: batch 64," in result.stdout and ", 3 epochs" in result.stdout
    for kind in ("plain", "ours", "jax"):
        assert f"repeat 1 {kind}" in result.stdout
    assert "ours / plain, samples per second:" in result.stdout
    assert "jax / plain, samples per second:" in result.stdout
    assert "peak MB" in result.stdout


def test_speed_benchmark_refuses_an_unknown_setting(synthetic_dir):
    result = subprocess.run([sys.executable, SPEED, "--data-dir", str(synthetic_dir),
                             "--set", "batchsize=64"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no such digit_classifier.Config field" in result.stderr
