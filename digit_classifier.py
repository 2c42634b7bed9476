# /// script
# requires-python = ">=3.11,<3.14"
# dependencies = [
#     "tensorflow>=2.16,<2.22",
#     "keras>=3.3,<4",
#     "numpy>=1.26,<3",
#     "matplotlib>=3.8,<4",
#     "seaborn>=0.13,<0.14",
#     "pillow>=10,<13",
#     "opencv-python-headless>=4.10,<6",
#     "tensorboard>=2.16,<2.22",
#     "optuna>=5.0,<6",
# ]
# ///
"""Train a dense neural network on MNIST (or Fashion-MNIST), evaluate it, and report.

    python digit_classifier.py                              # train, evaluate, write outputs/
    python digit_classifier.py --data-dir ../shared/data/mnist --epochs 20
    python digit_classifier.py --predict my_digit.png       # classify your own images
    python digit_classifier.py --draw                       # draw a digit in the browser
    python digit_classifier.py --compare 100 100,100 512,256 --repeats 3
    python digit_classifier.py --preset best                # 5 dense nets, elastic distortion
    python digit_classifier.py --tune 20                    # search the settings with Optuna

The recipe, in the order a run goes; digitkit/ beside it holds the extras, one call each:
  1. the flags        main, via digitkit/cli.py (every default lives in digitkit/config.py)
  2. load MNIST       load_data, via digitkit/data.py (IDX files, .npz or Keras' download)
  3. scale to 0-1     split_and_scale (and hold out a seeded validation split)
  4. build            build_network: a keras.Sequential of Flatten, Dense ReLU layers and a
                      softmax; distortion and deskewing (augment.py), committees (networks.py)
  5. compile          compile_model: Adam, sparse categorical cross-entropy
  6. fit              fit: model.fit, watched by training.py (Ctrl-C, checkpoints, history)
  7. evaluate         evaluate: calibration.py, scores from metrics.py
  8. report           save_reports: the Seaborn heatmap and the other pictures (plots.py),
                      robustness.py, metrics.json and report.html (report.py)

Around them: guard rails (folders.py: a lock per output folder, files published whole;
memory.py, checkpoint.py) and the Keras backend (backend.py). The other modes are one call
each: --evaluate and --predict (saved.py), --draw (draw.py), --compare and --repeats
(compare.py), --tune (tuning.py, whose best trial then trains through run_training).

Keras and the package modules that need it are imported inside the functions below, after
backend.start() has fixed the backend (--backend): --help and usage errors answer before
TensorFlow loads. Keras uses a GPU when there is one, unchanged; the reports name the device.
"""

import math
import os
import sys
import time

import numpy as np

from digitkit import (backend, checkpoint, cli, data, exits, files, folders, memory, metrics,
                      preflight, report)
from digitkit.clock import timed
from digitkit.config import DATASETS, IMAGE_SHAPE, NUM_CLASSES, distortion
from digitkit.report import say


def load_data(config, training=True):
    """Read the dataset, start Keras, then split and scale; returns data, its record, timings.

    Local files are read before TensorFlow is imported, so bad data fails in a blink; Keras'
    download needs Keras, so it comes after.
    """
    timing, arrays = {}, None
    if config.data_dir is not None:
        with timed(timing, "load_seconds"):
            arrays, source = data.load(config, training)
    with timed(timing, "import_seconds"):
        backend.start(config)
    with timed(timing, "load_seconds"):
        if arrays is None:
            arrays, source = data.load(config, training)
        split = split_and_scale(arrays, config.validation_split, config.seed)
    info = dict(name=config.dataset, title=DATASETS[config.dataset]["title"], source=source,
                train_size=len(split["x_train"]), validation_size=len(split["x_val"]),
                test_size=len(split["x_test"]))
    return split, info, timing


def split_and_scale(arrays, validation_split, seed):
    """Scale pixels from 0-255 to float32 0-1 and hold out a seeded random validation split."""
    order = np.random.default_rng(seed).permutation(len(arrays["x_train"]))
    n_val = int(round(len(order) * validation_split))
    train, val = np.sort(order[n_val:]), np.sort(order[:n_val])
    x, y = arrays["x_train"], arrays["y_train"]
    def scaled(images):  # 0-255 to 0-1 in float32, in one pass over the pixels
        return np.divide(images, 255, dtype="float32")

    return dict(x_train=scaled(x[train]), y_train=y[train], x_val=scaled(x[val]), y_val=y[val],
                x_test=scaled(arrays["x_test"]), y_test=arrays["y_test"])


def build_network(config, name="network"):
    """Input 28x28 -> [distortion] -> [deskew] -> Flatten -> Dense(w, relu) [+ Dropout] ...
    -> Dense(10, softmax), as a keras.Sequential."""
    import keras

    from digitkit import augment

    stack = [keras.Input(shape=IMAGE_SHAPE)]
    if config.augment and config.augment_strength > 0:  # every training batch; never in use
        shapes = distortion(config.augment, config.augment_strength)
        stack.append(augment.RandomDistortion(**shapes, name="distort"))
    if config.deskew:  # after the distortion, so the network always sees upright digits
        stack.append(augment.deskew_model())
    stack.append(keras.layers.Flatten())
    for i, width in enumerate(config.hidden, start=1):
        stack.append(keras.layers.Dense(width, activation="relu", name=f"hidden_{i}"))
        if config.dropout > 0:
            stack.append(keras.layers.Dropout(config.dropout, name=f"dropout_{i}"))
    stack.append(keras.layers.Dense(NUM_CLASSES, activation="softmax", name="output"))
    return keras.Sequential(stack, name=name)


def build_model(config):
    """One network, or --committee networks side by side, each with its own weights."""
    if config.committee == 1:
        return build_network(config)
    from digitkit import networks

    return networks.committee([build_network(config, f"member_{i}")
                               for i in range(1, config.committee + 1)])


def compile_model(model, config, steps_per_epoch):
    """Adam with the configured learning-rate schedule, sparse categorical cross-entropy."""
    import keras

    learning_rate = config.learning_rate
    if config.lr_schedule == "cosine":  # decays to 0 by the last step, after any warm-up
        warmup_steps = config.warmup_epochs * steps_per_epoch
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else config.learning_rate,
            decay_steps=max(1, config.epochs * steps_per_epoch - warmup_steps),
            warmup_target=config.learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=config.steps_per_execution)
    return model


def fit(model, data, config, signals, output_dir=None, stage=None, initial_epoch=0, history=(),
        callbacks=()):
    """Train on the training split, validating on the held-out one; each finished epoch is
    checkpointed in output_dir (for --resume) and added to stage's history.csv. Returns the
    training record (history, kept epoch, seconds, whether interrupted)."""
    from digitkit import networks, training

    monitor = training.TrainingMonitor(config, signals, output_dir,
                                       stage / "history.csv" if stage else None, history)
    callbacks = [monitor, *training.standard_callbacks(config, len(data["x_val"]) > 0),
                 *callbacks]
    validation = ((data["x_val"], networks.committee_labels(data["y_val"], model))
                  if len(data["x_val"]) else None)
    start = time.perf_counter()
    model.fit(data["x_train"], networks.committee_labels(data["y_train"], model),
              batch_size=config.batch_size, epochs=config.epochs, initial_epoch=initial_epoch,
              validation_data=validation, shuffle=True, callbacks=callbacks,
              verbose=training.verbosity(config))
    return monitor.outcome(callbacks, time.perf_counter() - start, initial_epoch,
                           len(data["x_train"]))


def evaluate(model, data):
    """Calibrate on the validation split, then score the test set from one pass over it.

    Returns the test scores, the calibration record and each network's test logits.
    """
    from digitkit import calibration as calibrating

    test_logits = calibrating.network_logits(model, data["x_test"])  # the one pass over the test set
    calibration = calibrating.calibrate(model, data, test_logits)  # folds a temperature into model
    # float32, as the saved model outputs them, so --evaluate later scores it identically.
    probabilities = calibrating.softmax_average(test_logits, calibration["temperature"])
    return metrics.score(probabilities.astype(np.float32), data["y_test"]), calibration, test_logits


def new_model(config, train_count):
    """A model built and compiled for config, ready to train from its first epoch."""
    return compile_model(build_model(config), config, math.ceil(train_count / config.batch_size))


def train_and_evaluate(config, data, signals, output_dir=None, stage=None, start=None,
                       callbacks=()):
    """Build, compile, fit, evaluate: the pipeline training, --repeats, --compare and the
    benchmarks all run. start is (model, epochs done, history) to go on from, if not None.

    Returns plain values: the inference model (what model.keras holds: no distortion, a
    committee averaged, its probabilities calibrated), the training record, the test scores,
    the calibration, each committee member's accuracy, the model's architecture and size.
    """
    from digitkit import calibration as calibrating
    from digitkit import networks

    model, initial_epoch, history = start or (new_model(config, len(data["x_train"])), 0, [])
    say(config, networks.describe_model(model))
    training = fit(model, data, config, signals, output_dir, stage, initial_epoch, history,
                   callbacks)
    with timed(training, "evaluate_seconds"):
        final = networks.for_inference(model)
        scores, calibration, test_logits = evaluate(final, data)
    members = (calibrating.member_accuracies(test_logits, data["y_test"]) if config.committee > 1
               else None)
    return dict(final=final, training=training, scores=scores, calibration=calibration,
                members=members, architecture=networks.architecture(final),
                parameters=int(final.count_params()))


def save_reports(output_dir, config, data, result, timing):
    """Save the model, the Seaborn confusion-matrix heatmap, the robustness check and every
    other picture; returns the pictures' paths and the robustness record."""
    from concurrent.futures import ThreadPoolExecutor

    from digitkit import networks, robustness

    scores, dataset = result["scores"], DATASETS[config.dataset]
    with timed(timing, "save_seconds"):
        networks.save_model(result["final"], output_dir / "model.keras", config.dataset)

    def draw():  # the heatmap and every other picture but robustness.png; --no-plots: none
        if not config.plots:
            return []
        from digitkit import plots  # Matplotlib and Seaborn

        with timed(timing, "report_seconds"):
            images = [plots.plot_confusion_matrix(
                scores["confusion_matrix"], dataset["classes"],
                f"{dataset['title']} test set: confusion matrix (accuracy "
                f"{scores['test_accuracy']:.2%})", output_dir / "confusion_matrix.png")]
            return images + plots.draw_pictures(output_dir, data, scores, config,
                                                result["training"], result["calibration"])

    # A second thread draws while the robustness check predicts: TensorFlow computes without
    # holding Python's lock, so the two overlap (docs/performance.md).
    with ThreadPoolExecutor(max_workers=1) as second_thread:
        pictures = second_thread.submit(draw)
        with timed(timing, "robustness_seconds"):
            robust = robustness.robustness(result["final"], data["x_test"], data["y_test"],
                                      via_logits=True)
        images = pictures.result()
    if images:  # and robustness.png, which needed the check's figures
        from digitkit.plots import add_robustness_picture

        add_robustness_picture(images, robust, config)
    return images, robust


def run_training(config, search=None):
    """The recipe end to end: every step above, the guard rails around them. Returns the
    exit status. search: a finished --tune search, whose best settings config holds, to
    report with the run."""
    started = time.perf_counter()
    needed, weights = memory.check_memory(config)  # a network too large fails before TensorFlow
    output_dir = folders.prepare_output_dir(config.output_dir, lock=True, what="training")
    checkpoint.refuse_unfinished_run(output_dir, config)
    stage = folders.staging_dir(output_dir)  # this run's files, published together at the end
    data, dataset_info, timing = load_data(config)
    from digitkit import training

    last_epoch = checkpoint.Checkpoint(output_dir)
    start = None
    if config.resume and last_epoch.exists():
        start = last_epoch.load(config)
        say(config, f"resuming from {last_epoch.directory}: {start[1]} of "
                    f"{config.epochs} epochs done")
    elif config.resume:
        say(config, f"no checkpoint in {last_epoch.directory}; starting from scratch")
    if start is None:
        say(config, f"building the model: {weights:,} weights, about {needed / 2 ** 30:.1f} GiB "
                    f"of memory to train")
        with training.StopSignals(during="build"):  # a Ctrl-C here stops at once
            start = (new_model(config, len(data["x_train"])), 0, [])

    with training.StopSignals(at_once_until_trained=True) as signals:  # at once, then after a batch
        result = train_and_evaluate(config, data, signals, output_dir, stage, start)
    trained = result["training"]
    timing.update(train_seconds=round(trained["seconds"], 3),
                  samples_per_second=(round(trained["samples_per_second"], 1)
                                      if trained["samples_per_second"] else None),
                  evaluate_seconds=trained["evaluate_seconds"], **trained["timing"])
    if trained["interrupted"]:
        say(config, f"interrupted by {signals.received} during epoch "
                    f"{trained['epochs_completed'] + 1} of {config.epochs} "
                    f"({trained['epochs_completed']} finished); evaluated the model as it stands")

    # From here a Ctrl-C stops the run: the new files are dropped, the previous run's stay, and
    # the checkpoint lets --resume write the reports without training again.
    with training.StopSignals(during="reports"):
        images, robust = save_reports(stage, config, data, result, timing)
        tuned = None
        if search is not None:  # tuning.csv and the search's pictures, beside the run's
            from digitkit import tuning

            tuning_images, tuned = tuning.write_reports(stage, search, config.plots)
            images += tuning_images
        if result["members"]:
            say(config, "committee members' test accuracy: " + ", ".join(
                f"{accuracy:.2%}" for accuracy in result["members"]))
        repeats = None
        if config.repeats > 1 and not trained["interrupted"]:
            from digitkit import compare

            repeats = compare.run_repeats(train_and_evaluate, config, data,
                                          compare.run_figures(result, config.seed))
        timing["total_seconds"] = round(time.perf_counter() - started, 3)
        record = report.build_record(
            config, dataset_info, result["scores"], training=trained, timing=timing,
            architecture=result["architecture"], parameters=result["parameters"],
            member_test_accuracy=result["members"], repeats=repeats,
            calibration=result["calibration"], robustness=robust, tuning=tuned)
        written = [*images, report.write_html_report(stage / "report.html", record, images),
                   files.write_json(stage / "metrics.json", record), stage / "model.keras"]
        written += [stage / "history.csv"] if trained["history"] else []
        written += [stage / "tuning.csv"] if tuned else []
        moved = folders.publish(stage, output_dir)
        if not trained["interrupted"]:
            last_epoch.remove()
    if moved:
        say(config, f"the previous run's files are now in {moved}")
    report.print_summary(record, [output_dir / path.name for path in written], config.quiet)
    if trained["interrupted"]:
        print(f"interrupted: reports describe the model after {trained['epochs_completed']} "
              f"epochs; rerun with --resume to finish training", file=sys.stderr)
        return 130
    if repeats and repeats["interrupted"]:
        print(f"interrupted: the repeats hold the {len(repeats['seeds'])} seeds finished",
              file=sys.stderr)
        return 130
    return 0


def run(mode, config, options):
    """Training (the recipe above) by default; each other mode is one call into the package."""
    preflight.check_installed(config)
    if mode == "train":
        return run_training(config)
    if mode == "tune":  # a search, then its best trial trained as above
        from digitkit import tuning

        output_dir = folders.prepare_output_dir(config.output_dir, lock=True, what="tuning")
        search = tuning.open_study(config, options, output_dir)  # before TensorFlow loads
        data, _, _ = load_data(config)
        best = tuning.search(search, config, data, new_model, fit)
        return 130 if best is None else run_training(best, search)
    started = time.perf_counter()
    if mode in ("predict", "draw", "evaluate"):
        preflight.require_model_file(options["model"], config)  # fails before any slow import
    if mode == "draw":
        from digitkit import draw  # the HTTP server and Pillow: only for --draw

        return draw.run_draw(config, options["model"], options["port"],
                             options["min_confidence"])
    if mode == "predict":
        output_dir = folders.prepare_output_dir(config.output_dir)  # no lock: it only adds files
        backend.start(config)
        from digitkit import saved

        return saved.run_prediction(config, options, output_dir)
    if mode == "compare":
        memory.check_memory(config, options["specs"])
    output_dir = folders.prepare_output_dir(config.output_dir, lock=True,
                                          what="evaluation" if mode == "evaluate" else mode)
    # Their reports go in a folder of their own, beside a training run's, never over them.
    output_dir = folders.prepare_output_dir(output_dir / ("evaluation" if mode == "evaluate"
                                                        else "comparison"))
    if mode == "evaluate" and options["recorded"]:
        say(config, f"data: {config.data_dir or 'the Keras download'} ({config.dataset}), "
                    f"as recorded by the run that saved {options['model']}")
    data, dataset_info, timing = load_data(config, training=mode == "compare")
    if mode == "evaluate":
        from digitkit import saved

        return saved.run_evaluation(config, options["model"], output_dir, data, dataset_info,
                                    timing, started)
    from digitkit import compare

    return compare.run_comparison(train_and_evaluate, config, options["specs"], output_dir,
                                  data, dataset_info, timing, started)


def main(argv=None):
    """Parse the flags, run, and turn any failure into one line and an exit status."""
    cli.usable_streams()  # a closed stdout, an ASCII-only terminal
    mode, config, options = cli.parse_command_line(argv)  # --help, usage errors: exit 0 or 2
    with exits.reported() as outcome:
        outcome.status = run(mode, config, options)
    return outcome.status


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Every file is written and closed, every lock released: skip the interpreter's teardown,
    # where TensorFlow spends about two seconds tidying up memory the process gives back anyway.
    os._exit(status)
