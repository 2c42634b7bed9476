"""Whole recipes side by side: test accuracy over seeds and training time, in one run.

    python benchmarks/recipes.py --data-dir ../shared/data/mnist --seeds 42 43 44 \\
        --recipe defaults= \\
        --recipe "seed=--preset seed"

Each run is the real command line (`digit_classifier.py --data-dir DIR --seed N FLAGS`) in
its own process, writing to OUTPUT_DIR/NAME-seedN. Runs alternate between the recipes seed
by seed, so a noisy machine slows every recipe alike. The script prints each run as it
ends, then a table of each recipe's test accuracy (mean and sample standard deviation over
the seeds, and each seed's figure), its median training seconds and the ratio of that
median to the first recipe's: the "same run on the same machine" comparison.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe(text):
    """NAME=FLAGS, FLAGS in shell syntax (empty for the defaults)."""
    name, equals, flags = text.partition("=")
    if not equals or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=FLAGS, got {text!r}")
    return name, shlex.split(flags)


def run_once(data_dir, output_dir, seed, flags):
    """Train once through the real command line; return its metrics.json as a dict."""
    command = [sys.executable, str(ROOT / "digit_classifier.py"), "--data-dir", str(data_dir),
               "--output-dir", str(output_dir), "--seed", str(seed), "--quiet", *flags]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({result.returncode}): "
                         f"{result.stderr.strip()[-500:]}")
    return json.loads((Path(output_dir) / "metrics.json").read_text())


def machine():
    """CPU model and core count, as the README quotes them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def summarise(runs):
    """Mean and std of test accuracy (in %), median training seconds."""
    accuracies = [100 * run["test_accuracy"] for run in runs]
    seconds = [run["timing"]["train_seconds"] for run in runs]
    return dict(mean=statistics.mean(accuracies),
                std=statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                accuracies=accuracies, median_seconds=statistics.median(seconds),
                seconds=seconds)


def main():
    """Alternate the recipes over the seeds, then print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="MNIST IDX files")
    parser.add_argument("--recipe", action="append", type=recipe, required=True,
                        metavar="NAME=FLAGS", help="a recipe to run; the first is the baseline")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44],
                        help="seeds to run each recipe with (default: 42 43 44)")
    parser.add_argument("--output-dir", default=str(ROOT / "outputs" / "recipes"),
                        help="where each run writes (default: outputs/recipes)")
    args = parser.parse_args()

    print(f"machine: {machine()}; Python {platform.python_version()}", flush=True)
    runs = {name: [] for name, _ in args.recipe}
    for seed in args.seeds:
        for name, flags in args.recipe:
            metrics = run_once(args.data_dir, Path(args.output_dir) / f"{name}-seed{seed}", seed,
                               flags)
            runs[name].append(metrics)
            print(f"{name} seed {seed}: test accuracy {metrics['test_accuracy']:.2%}, "
                  f"{metrics['timing']['train_seconds']:.1f} s of training "
                  f"({metrics['dataset']['train_size']} training images)", flush=True)

    baseline = summarise(runs[args.recipe[0][0]])["median_seconds"]
    print("\n| recipe | flags | test accuracy (seeds " + ", ".join(map(str, args.seeds))
          + ") | training seconds (median) | time vs " + args.recipe[0][0] + " |")
    print("|---|---|---:|---:|---:|")
    for name, flags in args.recipe:
        s = summarise(runs[name])
        each = ", ".join(f"{a:.2f}" for a in s["accuracies"])
        print(f"| {name} | `{shlex.join(flags) or '(defaults)'}` | "
              f"{s['mean']:.2f}% ± {s['std']:.2f}% "
              f"({each}) | {s['median_seconds']:.1f} | {s['median_seconds'] / baseline:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
