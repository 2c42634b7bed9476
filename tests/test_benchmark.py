"""benchmarks/speed.py runs end to end (on synthetic data; no assertion on any time)."""

import subprocess
import sys

from conftest import ROOT


def test_speed_benchmark_reports_medians_and_ratios(synthetic_dir):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--data-dir",
                             str(synthetic_dir), "--repeats", "1", "--target", "0.5"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "repeat 1 plain" in result.stdout and "repeat 1 ours" in result.stdout
    assert "ours / plain, samples per second:" in result.stdout
    assert "peak MB" in result.stdout
