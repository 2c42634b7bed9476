"""Which speed levers help the default training path on this machine (issue #15's list).

    python benchmarks/levers.py --data-dir ../shared/data/mnist [--repeats 5] [--epochs 4]

Trains the seeds' network (3 x Dense(100), no distortion, no hold-out) with the script's
default settings through `digit_classifier.train_and_evaluate`'s model and Keras' `fit`, once per variant
per repeat, each run in its own process, variants alternated so that a noisy machine slows
them alike. Prints, per variant, the medians of the first epoch's seconds (tracing or XLA
compilation included), the later epochs' training samples per second, and the test
accuracy at the end. Variants:

- default:      what a training run does (one op at a time, TensorFlow's intra-op threads,
                no XLA on CPU);
- xla:          compile(jit_compile=True);
- bf16:         keras.mixed_precision policy mixed_bfloat16 (the CPU has AVX-512 BF16 or not);
- threads-1:    TensorFlow intra- and inter-op parallelism 1;
- threads-2:    both 2 (one per core of the development machine);
- inter-tf:     TensorFlow's default inter-op parallelism (independent ops side by side),
                what the script did before it chose one op at a time;
- grappler-off: TensorFlow's graph optimiser (Grappler) off, to shorten the first trace;
- onednn-off:   TF_ENABLE_ONEDNN_OPTS=0;
- spe-1:        steps_per_execution 1 instead of the default;
- spe-epoch:    steps_per_execution = one whole epoch per call.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digitkit.config import Config  # noqa: E402  (light: no TensorFlow)

VARIANTS = ("default", "xla", "bf16", "threads-1", "threads-2", "inter-tf", "grappler-off",
            "onednn-off", "spe-1", "spe-epoch")


def worker(variant, data_dir, epochs):
    """Train once with one variant and print one JSON line."""
    import dataclasses

    import digit_classifier as dc
    from digitkit import backend
    from digitkit import data as datasets

    config = Config(hidden=(100, 100, 100), dropout=0.0, augment=None, epochs=epochs,
                       quiet=True)
    if variant == "spe-1":
        config = dataclasses.replace(config, steps_per_execution=1)
    arrays, _ = datasets.load_dataset(config.dataset, data_dir)
    if variant == "spe-epoch":
        steps = math.ceil(len(arrays["x_train"]) / config.batch_size)
        config = dataclasses.replace(config, steps_per_execution=steps)
    backend.start(config)
    import keras
    import tensorflow as tf

    if variant.startswith("threads-"):
        threads = int(variant.split("-")[1])
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    if variant == "inter-tf":
        tf.config.threading.set_inter_op_parallelism_threads(0)
    if variant == "grappler-off":
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if variant == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    data = dc.split_and_scale(arrays, 0.0, config.seed)
    from digitkit import training
    from digitkit.interrupts import StopSignals

    # The script's own model, trained for no epoch, compiled again as the recipe compiles it
    # for config's epochs (and with XLA for that variant): the variants time the fit.
    model = dc.train_and_evaluate(dataclasses.replace(config, epochs=0), data, StopSignals(),
                                  test=False)["model"]
    steps_per_epoch = math.ceil(len(data["x_train"]) / config.batch_size)
    model.compile(optimizer=keras.optimizers.Adam(training.learning_rate(config, steps_per_epoch)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=config.steps_per_execution,
                  jit_compile=True if variant == "xla" else "auto")
    seconds = []

    class Timer(keras.callbacks.Callback):
        """Seconds of each epoch."""

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    model.fit(data["x_train"], data["y_train"], batch_size=config.batch_size,
              epochs=config.epochs, shuffle=True, verbose=0, callbacks=[Timer()])
    accuracy = float((model.predict(data["x_test"], batch_size=2048, verbose=0).argmax(1)
                      == data["y_test"]).mean())
    print(json.dumps(dict(variant=variant, first_epoch=seconds[0],
                          later_samples_per_second=len(data["x_train"]) * (len(seconds) - 1)
                          / sum(seconds[1:]), accuracy=accuracy)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.data_dir, args.epochs)
    results = {variant: [] for variant in args.variants}
    for repeat in range(args.repeats):
        for variant in args.variants:
            env = dict(os.environ)
            if variant == "onednn-off":
                env["TF_ENABLE_ONEDNN_OPTS"] = "0"
            output = subprocess.run([sys.executable, __file__, "--worker", variant, "--data-dir",
                                     args.data_dir, "--epochs", str(args.epochs)],
                                    capture_output=True, text=True, env=env, check=True).stdout
            results[variant].append(json.loads(output.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1}: {output.strip().splitlines()[-1]}", flush=True)
    print(f"\nmedians over {args.repeats} runs each ({args.epochs} epochs, batch 512):")
    print(f"{'variant':<12} {'first epoch s':>13} {'later samples/s':>16} {'vs default':>10} "
          f"{'accuracy':>9}")
    base = statistics.median(r["later_samples_per_second"] for r in results.get("default", []))\
        if "default" in results else None
    for variant, runs in results.items():
        speed = statistics.median(r["later_samples_per_second"] for r in runs)
        print(f"{variant:<12} {statistics.median(r['first_epoch'] for r in runs):13.2f} "
              f"{speed:16,.0f} {speed / base if base else float('nan'):9.2f}x "
              f"{statistics.median(r['accuracy'] for r in runs):9.2%}")


if __name__ == "__main__":
    raise SystemExit(main())
