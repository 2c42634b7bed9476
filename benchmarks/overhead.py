"""Where a user's seconds go: the real command line, start to finish, against the PyTorch loop.

    python benchmarks/overhead.py --data-dir ../shared/data/mnist --repeats 5

Alternates, repeats times each, every run in its own process:
- defaults: `digit_classifier.py --data-dir DIR` (the default recipe, 30 epochs);
- seed5: the seeds' network for 5 epochs, `--hidden 100 100 100 --dropout 0 --augment none
  --validation-split 0 --epochs 5` (batch 512, Adam 6e-3 with cosine decay);
- torch: the PyTorch loop of benchmarks/speed.py at seed5's settings (where PyTorch is
  installed).
For each command-line run: the wall-clock seconds from launch to exit, the stage timings its
metrics.json records, and the time outside training (wall seconds minus training seconds:
starting Python, importing TensorFlow, loading, evaluating, the robustness check, saving and
drawing). Then medians, and seed5's training samples per second against the PyTorch loop's:
both count only the training loop (ours includes the first epoch's tracing and the per-epoch
checkpoint a user waits for; the PyTorch loop checks test accuracy off its clock), split into
the first epoch's seconds, the later epochs' samples per second, and ours' checkpoints.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "defaults": [],
    "seed5": ["--hidden", "100", "100", "100", "--dropout", "0", "--augment", "none",
              "--validation-split", "0", "--epochs", "5"],
}
STAGES = ("import_seconds", "load_seconds", "train_seconds", "evaluate_seconds", "save_seconds",
          "robustness_seconds", "report_seconds")  # robustness and report overlap (two threads)


def run_cli(data_dir, flags, output_dir):
    """One run of the real command line: its wall seconds and metrics.json's timings."""
    command = [sys.executable, str(ROOT / "digit_classifier.py"), "--data-dir", str(data_dir),
               "--output-dir", str(output_dir), "--quiet", *flags]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    record = json.loads((Path(output_dir) / "metrics.json").read_text())
    timing, later_epochs = record["timing"], record["epochs_completed"] - 1
    later = (later_epochs * record["dataset"]["train_size"] / timing["later_epochs_seconds"]
             if later_epochs else None)
    return dict(wall=wall, outside=wall - timing["train_seconds"],
                later_samples_per_second=later, **timing)


def run_torch(data_dir, seed):
    """benchmarks/speed.py's PyTorch loop at seed5's settings: its JSON line."""
    command = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--data-dir",
               str(data_dir), "--worker", "torch", "--seed", str(seed), "--set", "epochs=5"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    """Alternate the recipes (and the PyTorch loop); print each run, then the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the MNIST IDX files")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each (default: 5)")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--no-torch", action="store_true", help="leave out the PyTorch loop")
    args = parser.parse_args()
    torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    print(f"machine: {os.cpu_count()} cores; Python {sys.version.split()[0]}; PyTorch loop: "
          f"{'yes' if torch else 'no (not installed, or --no-torch)'}", flush=True)
    runs = {name: [] for name in args.recipes}
    torch_runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for name in args.recipes:
                run = run_cli(args.data_dir, RECIPES[name], Path(scratch) / f"{name}-{repeat}")
                runs[name].append(run)
                print(f"{name} {repeat + 1}: wall {run['wall']:.1f} s, training "
                      f"{run['train_seconds']:.1f} s, outside {run['outside']:.1f} s ("
                      + ", ".join(f"{key[:-8]} {run[key]:.1f}" for key in STAGES
                                  if key != "train_seconds" and key in run)
                      + f"), {run['samples_per_second']:,.0f} samples/s; first epoch "
                      f"{run['first_epoch_seconds']:.2f} s, later epochs "
                      f"{run['later_samples_per_second']:,.0f} samples/s, checkpoints "
                      f"{run['checkpoint_seconds']:.2f} s", flush=True)
            if torch:
                result = run_torch(args.data_dir, repeat)
                torch_runs.append(result)
                print(f"torch {repeat + 1}: {result['samples_per_second']:,.0f} samples/s; "
                      f"first epoch {result['first_epoch_seconds']:.2f} s, later epochs "
                      f"{result['later_samples_per_second']:,.0f} samples/s", flush=True)
    print(f"\nmedians over {args.repeats} runs:")
    for name, found in runs.items():
        median = {key: statistics.median(run[key] for run in found)
                  for key in ("wall", "outside", *STAGES, "samples_per_second") if key in found[0]}
        print(f"{name}: wall {median['wall']:.1f} s, training {median['train_seconds']:.1f} s, "
              f"outside training {median['outside']:.1f} s = "
              f"{median['outside'] / median['train_seconds']:.0%} of training; "
              + ", ".join(f"{key[:-8]} {median[key]:.2f}" for key in STAGES if key in median))
    if torch and "seed5" in runs:
        for key, what in (("samples_per_second", "training samples/s"),
                          ("later_samples_per_second", "epochs 2-5 samples/s"),
                          ("first_epoch_seconds", "first epoch seconds")):
            ours = statistics.median(run[key] for run in runs["seed5"])
            theirs = statistics.median(run[key] for run in torch_runs)
            print(f"seed5 {what}: ours {ours:,.2f}, PyTorch loop {theirs:,.2f}: "
                  f"{ours / theirs:.2f}x")
        checkpoints = statistics.median(run["checkpoint_seconds"] for run in runs["seed5"])
        print(f"seed5 checkpoints: {checkpoints:.2f} s of training")


if __name__ == "__main__":
    main()
