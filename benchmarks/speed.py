"""Training speed: the plain Keras recipe against digit_classifier.py's default settings.

    python benchmarks/speed.py --data-dir ../shared/data/mnist [--repeats 3]

All train the seeds' network (Flatten, 3 x Dense(100, relu), Dense(10, softmax), no
dropout) on all 60,000 training images of full MNIST, without distortion (this compares
training loops, not data augmentation):

- plain: Keras' default `fit` settings, batch 32, one step per call, Adam 1e-3 constant;
- ours:  the script's default training settings (batch size, steps per execution, learning
         rate and schedule, epochs) from digitkit.config.Config, on TensorFlow;
- jax:   the same as ours on Keras' JAX backend (only with --jax; needs `pip install jax`);
- torch: the loop an expert would write in PyTorch, the pytorch/examples way: the same
         network in nn.Sequential, torch.optim.Adam with ours' learning rate and schedule
         (cosine annealing stepped every batch), ours' batch size and epochs, the training
         images as one tensor in memory, a fresh torch.randperm index per epoch, and
         zero_grad/backward/step (skipped with a reason where PyTorch is not installed;
         `pip install torch`). Threads: PyTorch's default (one per physical core); plain
         uses TensorFlow's defaults (one per logical core, independent ops side by side);
         ours, as the script trains one network on a CPU, TensorFlow's intra-op default
         and one op at a time (inter-op parallelism 1); jax, XLA's defaults.

Each run is its own process, so each has its own peak memory; runs alternate plain/ours so
that a noisy machine slows both alike. The script prints medians and the ratio of ours to
plain in training samples per second and in training seconds until test accuracy first
reaches the target (checked after every epoch, off the training clock; a benchmark may look
at the test set, the training never does). The default target, 97.5%, is one that the
seeds' network reaches on full MNIST with either recipe, late enough to need real training:
the plain recipe after a few epochs, not after the first.

It also prints the arithmetic floor: the floating-point operations one training sample
costs the network (a multiply and an add per weight forward, twice that backward), the
peak float32 matrix-multiply rate of this machine (NumPy's, timed in the same invocation),
and each runner's fraction of that peak.
"""

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digitkit.config import Config  # noqa: E402  (light: no TensorFlow)

SEED_NETWORK = (100, 100, 100)
PLAIN_EPOCHS = 15


def worker(kind, data_dir, seed, target, overrides, plain_epochs=PLAIN_EPOCHS):
    """Train once and print one JSON line of measurements."""
    import digit_classifier as dc
    from digitkit import backend
    from digitkit import data as datasets

    config = Config(hidden=SEED_NETWORK, dropout=0.0, augment=None, seed=seed, quiet=True)
    if kind == "torch":
        config = dataclasses.replace(config, **overrides)
        result = torch_worker(data_dir, seed, target, config)
        print(json.dumps(dict(kind=kind, seed=seed, epochs=config.epochs,
                              batch_size=config.batch_size,
                              peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                              / 1024, **result)))
        return None
    if kind == "plain":
        config = dataclasses.replace(config, batch_size=32, steps_per_execution=1,
                                     learning_rate=1e-3, lr_schedule="constant",
                                     epochs=plain_epochs)
    else:
        config = dataclasses.replace(config, backend="jax" if kind == "jax" else "tensorflow",
                                     **overrides)
    arrays, _ = datasets.load_dataset(config.dataset, data_dir)
    backend.start(config)
    import keras

    from digitkit.interrupts import StopSignals

    if kind == "plain":  # TensorFlow's own thread defaults, not the script's choice
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(0)

    data = dc.split_and_scale(arrays, 0.0, seed)  # all training images, no hold-out
    clock = {"train": 0.0, "epoch_start": 0.0, "reached": None, "accuracies": []}

    class Timer(keras.callbacks.Callback):
        """Times each epoch, then checks test accuracy off the clock."""

        def on_epoch_begin(self, epoch, logs=None):
            clock["epoch_start"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            clock["train"] += time.perf_counter() - clock["epoch_start"]
            accuracy = test_accuracy(self.model, data)
            clock["accuracies"].append(accuracy)
            if clock["reached"] is None and accuracy >= target:
                clock["reached"] = clock["train"]

    if kind == "plain":  # exactly Keras' defaults: a plain compile and fit, nothing of ours
        model = keras.Sequential([
            keras.Input(shape=(28, 28)), keras.layers.Flatten(),
            *(keras.layers.Dense(width, activation="relu") for width in config.hidden),
            keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(data["x_train"], data["y_train"], batch_size=config.batch_size,
                  epochs=config.epochs, verbose=0, shuffle=True, callbacks=[Timer()])
    else:  # the script's own pipeline, as a training run calls it
        dc.train_and_evaluate(config, data, StopSignals(), callbacks=[Timer()])
    print(json.dumps(dict(
        kind=kind, seed=seed, epochs=config.epochs, batch_size=config.batch_size,
        steps_per_execution=config.steps_per_execution,
        samples_per_second=config.epochs * len(data["x_train"]) / clock["train"],
        seconds_to_target=clock["reached"], final_accuracy=clock["accuracies"][-1],
        epochs_to_target=next((epoch for epoch, accuracy in
                               enumerate(clock["accuracies"], start=1) if accuracy >= target),
                              None),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def test_accuracy(model, data):
    """Test accuracy of a network's predictions, off the training clock."""
    predicted = model.predict(data["x_test"], batch_size=2048, verbose=0).argmax(axis=1)
    return float((predicted == data["y_test"]).mean())


def torch_worker(data_dir, seed, target, config):
    """The PyTorch loop: what the pytorch/examples MNIST script does, at ours' settings."""
    import math

    import digit_classifier as dc
    from digitkit import data as datasets
    import torch
    from torch import nn

    torch.manual_seed(seed)
    arrays, _ = datasets.load_dataset(config.dataset, data_dir)
    data = dc.split_and_scale(arrays, 0.0, seed)
    x_train, y_train = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]).long()
    x_test, y_test = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"]).long()
    layers, width = [nn.Flatten()], 28 * 28
    for hidden in config.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    steps = config.epochs * math.ceil(len(x_train) / config.batch_size)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
                 if config.lr_schedule == "cosine" else None)
    loss_function = nn.CrossEntropyLoss()
    train_seconds, reached, reached_epoch, accuracy = 0.0, None, None, None
    epoch_seconds = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train))
        for first in range(0, len(x_train), config.batch_size):
            index = order[first:first + config.batch_size]
            optimizer.zero_grad()
            loss = loss_function(model(x_train[index]), y_train[index])
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        epoch_seconds.append(time.perf_counter() - start)
        train_seconds += epoch_seconds[-1]
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
        if reached is None and accuracy >= target:
            reached, reached_epoch = train_seconds, epoch
    return dict(samples_per_second=config.epochs * len(x_train) / train_seconds,
                first_epoch_seconds=epoch_seconds[0],
                later_samples_per_second=(len(epoch_seconds) - 1) * len(x_train)
                / sum(epoch_seconds[1:]) if len(epoch_seconds) > 1 else None,
                seconds_to_target=reached, epochs_to_target=reached_epoch,
                final_accuracy=accuracy,
                threads=torch.get_num_threads(), torch=torch.__version__)


def training_flops_per_sample(hidden):
    """Multiply-adds of one image through the network, times 2 (forward) plus 4 (backward:
    the gradients of the inputs and of the weights)."""
    widths = [28 * 28, *hidden, 10]
    return 6 * sum(a * b for a, b in zip(widths, widths[1:]))


def peak_matmul_flops(size=2048, repeats=7):
    """This machine's float32 matrix-multiply rate (FLOP/s), the median of a few NumPy runs."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    a @ b  # warm up the BLAS threads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times)


def median(values):
    """Median of the values that exist, or None."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def parse_overrides(parser, pairs):
    """KEY=VALUE pairs as Config values of the field's type."""

    defaults, overrides = Config(), {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in {field.name for field in dataclasses.fields(Config)}:
            parser.error(f"--set {pair}: no such digitkit.config.Config field")
        try:
            overrides[key] = type(getattr(defaults, key))(value)
        except (TypeError, ValueError):
            parser.error(f"--set {pair}: not a valid {key}")
    return overrides


def main():
    """Alternate plain and ours over several repeats; print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="MNIST IDX files")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default: 3)")
    parser.add_argument("--target", type=float, default=0.975,
                        help="test accuracy for the time-to-accuracy figure (default: 0.975)")
    parser.add_argument("--jax", action="store_true",
                        help="also run ours on Keras' JAX backend (needs jax installed)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="change one of ours' settings (a digitkit.config.Config field), "
                             "e.g. --set batch_size=128 learning_rate=0.002")
    parser.add_argument("--plain-epochs", type=int, default=PLAIN_EPOCHS, metavar="N",
                        help=f"epochs of the plain recipe (default: {PLAIN_EPOCHS})")
    parser.add_argument("--no-torch", action="store_true",
                        help="leave out the PyTorch runner even where PyTorch is installed")
    parser.add_argument("--worker", choices=("plain", "ours", "jax", "torch"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = parse_overrides(parser, args.set)
    if args.worker:
        return worker(args.worker, args.data_dir, args.seed, args.target, overrides,
                      args.plain_epochs)

    kinds = ["plain", "ours"] + (["jax"] if args.jax else [])
    import importlib.util

    if args.no_torch:
        print("torch: left out (--no-torch)")
    elif importlib.util.find_spec("torch") is None:
        print("torch: skipped, PyTorch is not installed (pip install torch)")
    else:
        kinds.append("torch")

    ours = dataclasses.replace(Config(), **overrides)
    print(f"ours: batch {ours.batch_size}, {ours.steps_per_execution} steps per execution, Adam "
          f"{ours.learning_rate:g} {ours.lr_schedule}, {ours.epochs} epochs", flush=True)
    results = {kind: [] for kind in kinds}
    for repeat in range(args.repeats):
        for kind in kinds:
            command = [sys.executable, __file__, "--worker", kind, "--seed", str(repeat),
                       "--data-dir", args.data_dir, "--target", str(args.target),
                       "--plain-epochs", str(args.plain_epochs)]
            command += ["--set", *args.set] if args.set else []
            output = subprocess.run(command, capture_output=True, text=True, check=True,
                                    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
            run = json.loads(output.stdout.strip().splitlines()[-1])
            results[kind].append(run)
            reached = (f"{run['seconds_to_target']:.2f} s (epoch {run['epochs_to_target']})"
                       if run["seconds_to_target"] else "never")
            print(f"repeat {repeat + 1} {kind:5s}: {run['samples_per_second']:8.0f} samples/s, "
                  f"{args.target:.1%} after {reached}, final {run['final_accuracy']:.2%}, "
                  f"peak {run['peak_rss_mb']:.0f} MB", flush=True)

    summary = {kind: {key: median([r[key] for r in runs]) for key in
                      ("samples_per_second", "seconds_to_target", "epochs_to_target",
                       "peak_rss_mb")}
               for kind, runs in results.items()}
    plain = summary["plain"]
    print(f"\nmedians over {args.repeats} repeats (seeds' network, {args.target:.1%} target):")
    print(f"{'':6s} {'samples/s':>10s} {'s to target':>12s} {'epochs to':>10s} {'peak MB':>8s}")
    for kind in kinds:
        s = summary[kind]
        to_target = f"{s['seconds_to_target']:.2f}" if s["seconds_to_target"] else "never"
        epochs = f"{s['epochs_to_target']:g}" if s["epochs_to_target"] else "never"
        print(f"{kind:6s} {s['samples_per_second']:10.0f} {to_target:>12s} {epochs:>10s} "
              f"{s['peak_rss_mb']:8.0f}")
    for kind in kinds[1:]:
        s = summary[kind]
        print(f"{kind} / plain, samples per second: "
              f"{s['samples_per_second'] / plain['samples_per_second']:.2f}x")
        if plain["seconds_to_target"] and s["seconds_to_target"]:
            print(f"{kind} / plain, seconds to {args.target:.1%}: "
                  f"{s['seconds_to_target'] / plain['seconds_to_target']:.2f}")
    if "torch" in kinds:
        torch_s, ours_s = summary["torch"], summary["ours"]
        print(f"ours / torch, samples per second: "
              f"{ours_s['samples_per_second'] / torch_s['samples_per_second']:.2f}x")
        if torch_s["seconds_to_target"] and ours_s["seconds_to_target"]:
            print(f"ours / torch, seconds to {args.target:.1%}: "
                  f"{ours_s['seconds_to_target'] / torch_s['seconds_to_target']:.2f}")
        print(f"torch threads: {results['torch'][0]['threads']} "
              f"(PyTorch {results['torch'][0]['torch']})")
    flops = training_flops_per_sample(SEED_NETWORK)
    peak = peak_matmul_flops()
    print(f"\narithmetic floor: {flops:,} FLOPs per training sample; peak float32 matmul "
          f"(NumPy, 2048x2048) {peak / 1e9:.1f} GFLOP/s, so at most "
          f"{peak / flops:,.0f} samples/s")
    for kind in kinds:
        rate = summary[kind]["samples_per_second"] * flops
        print(f"{kind:6s} {rate / 1e9:6.1f} GFLOP/s = {rate / peak:.1%} of the peak")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
