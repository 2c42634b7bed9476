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
#     "ml_dtypes>=0.5.1,<0.7",
# ]
# ///
"""Train a dense neural network on MNIST (or Fashion-MNIST), evaluate it, and report.

    python digit_classifier.py                              # train, evaluate, write outputs/
    python digit_classifier.py --predict my_digit.png       # classify your own images
    python digit_classifier.py --draw                       # draw a digit in the browser
    python digit_classifier.py --preset best                # 5 dense nets, elastic distortion
    python digit_classifier.py --tune 20                    # search the settings with Optuna

The recipe is train_and_evaluate: keras.Sequential, model.compile, model.fit, model.evaluate,
each extra one named call into digitkit/. Before it: the flags (main) and the data
(load_data); after it, the reports (save_reports). The machinery is entered, never handed
down: the output folder (folders.staged), the signals (StopSignals), the clock (timed).
--repeats, --compare and --tune loop over the recipe here. Keras loads after backend.start(),
so --help and usage errors answer before TensorFlow; Keras uses a GPU if there is one.
"""

import dataclasses
import logging
import math
import time

import numpy as np

from digitkit import backend, cli, data, exits, folders, memory, messages, preflight, report
from digitkit.checkpoint import Checkpoint
from digitkit.clock import timed
from digitkit.config import DATASETS, EVAL_BATCH_SIZE, IMAGE_SHAPE, NUM_CLASSES
from digitkit.interrupts import StopSignals

log = logging.getLogger(messages.LOGGER)


def load_data(config, training=True):
    """Load the dataset and start Keras (data.py: the files of --data-dir, checked before
    TensorFlow loads, or keras.datasets.mnist.load_data()); then split and scale."""
    arrays, info, timing = data.load(config, training)
    with timed(timing, "load_seconds"):
        split = split_and_scale(arrays, config.validation_split, config.seed)
    info.update(train_size=len(split["x_train"]), validation_size=len(split["x_val"]),
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


def train_and_evaluate(config, data, signals, folder=None, start=None, callbacks=(), test=True):
    """The recipe: build the network, compile it, fit it, calibrate it, evaluate it; returns
    plain values. start: (model, epochs done, history) for --resume; folder: (output folder,
    staging folder) for checkpoints and history.csv; test=False: stop after training."""
    import keras

    from digitkit import augment, calibration, metrics, networks, training

    model, initial_epoch, history = start or (None, 0, [])
    if model is None:
        members = []
        for number in range(1, config.committee + 1):  # one network, or a committee of them
            stack = [keras.Input(shape=IMAGE_SHAPE),
                     *augment.layers(config),  # elastic distortion (training only), deskewing
                     keras.layers.Flatten()]
            for i, width in enumerate(config.hidden, start=1):
                stack.append(keras.layers.Dense(width, activation="relu", name=f"hidden_{i}"))
                if config.dropout > 0:
                    stack.append(keras.layers.Dropout(config.dropout, name=f"dropout_{i}"))
            stack.append(keras.layers.Dense(NUM_CLASSES, activation="softmax", name="output"))
            members.append(keras.Sequential(
                stack, name="network" if config.committee == 1 else f"member_{number}"))
        model = members[0] if config.committee == 1 else networks.committee(members)
        steps_per_epoch = math.ceil(len(data["x_train"]) / config.batch_size)
        model.compile(optimizer=keras.optimizers.Adam(training.learning_rate(config,
                                                                             steps_per_epoch)),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      steps_per_execution=config.steps_per_execution)
    if not config.quiet:
        log.info(networks.describe_model(model))

    # A committee answers once per member, each member learning the labels on its own.
    y_train, y_val = (np.repeat(labels[:, None], config.committee, axis=1)
                      if config.committee > 1 else labels
                      for labels in (data["y_train"], data["y_val"]))
    monitor = training.TrainingMonitor(config, signals, folder, history, len(y_train))
    validated = len(data["x_val"]) > 0
    callbacks = [monitor, *training.standard_callbacks(config, validated), *callbacks]
    model.fit(data["x_train"], y_train, batch_size=config.batch_size, epochs=config.epochs,
              initial_epoch=initial_epoch,
              validation_data=(data["x_val"], y_val) if validated else None, shuffle=True,
              callbacks=callbacks, verbose=training.verbosity(config))
    trained = monitor.outcome(callbacks)
    if not test:
        return dict(model=model, training=trained)

    with timed(trained["timing"], "evaluate_seconds"):
        model = networks.for_inference(model)  # no distortion; a committee's answers averaged
        model, calibrated = calibration.calibrate(model, data)  # a temperature, fitted
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        test_loss, test_accuracy = model.evaluate(data["x_test"], data["y_test"],
                                                  batch_size=EVAL_BATCH_SIZE, verbose=0)
        probabilities = model.predict(data["x_test"], batch_size=EVAL_BATCH_SIZE, verbose=0)
    scores = metrics.score(probabilities, data["y_test"], test_loss, test_accuracy)
    return dict(final=model, training=trained, scores=scores, calibration=calibrated,
                members=networks.member_accuracies(model, data["x_test"], data["y_test"]),
                architecture=networks.architecture(model), parameters=model.count_params())


def save_reports(stage, config, data, result, timing):
    """Save the model, the robustness check, the Seaborn heatmap and the other pictures."""
    from digitkit import networks, pictures, robustness

    scores, dataset = result["scores"], DATASETS[config.dataset]
    with timed(timing, "save_seconds"):
        networks.save_model(result["final"], stage / "model.keras", config.dataset)
    with pictures.Drawing(stage, data, config, result, timing) as drawing:  # on a 2nd thread
        with timed(timing, "robustness_seconds"):
            robust = robustness.robustness(result["final"], data["x_test"], data["y_test"])
    if not config.plots:
        return [], robust
    from digitkit import plots  # Matplotlib and Seaborn: the second thread imported them

    with timed(timing, "report_seconds"):
        heatmap = plots.plot_confusion_matrix(
            scores["confusion_matrix"], dataset["classes"],
            f"{dataset['title']} test set: confusion matrix (accuracy "
            f"{scores['test_accuracy']:.2%})", stage / "confusion_matrix.png")
    return [heatmap, *drawing.with_robustness(robust)], robust


def run_training(config, search=None):
    """Train, evaluate and report one model (and a finished --tune search that chose it)."""
    started = time.perf_counter()
    needed, weights = memory.check_memory(config)  # a network too large fails before TensorFlow
    output_dir = folders.prepare_output_dir(config.output_dir, lock=True, what="training")
    checkpoint = Checkpoint.for_run(output_dir, config)  # no training over an unfinished run
    data, dataset_info, timing = load_data(config)
    with folders.staged(output_dir) as stage:  # published whole at the end, or dropped
        start = checkpoint.start(config)  # --resume: the last finished epoch
        with StopSignals(at_once_until_trained=True) as signals:  # then after a batch
            if start is None:  # said inside: a Ctrl-C that answers it is this block's
                log.info(f"building the model: {weights:,} weights, about "
                         f"{needed / 2 ** 30:.1f} GiB of memory to train")
            result = train_and_evaluate(config, data, signals, (output_dir, stage), start)
        trained = result["training"]
        timing.update(trained["timing"])
        # From here a Ctrl-C stops the run: the new files are dropped, the previous run's stay,
        # and the checkpoint lets --resume write the reports without training again.
        with StopSignals(during="reports"):
            images, robust = save_reports(stage, config, data, result, timing)
            repeats = (run_repeats(config, data, result)
                       if config.repeats > 1 and not trained["interrupted"] else None)
            tuned = None
            if search is not None:  # tuning.csv and the search's pictures, beside the run's
                from digitkit import tuning

                tuning_images, tuned = tuning.write_reports(stage, search, config.plots)
                images += tuning_images
            timing["total_seconds"] = round(time.perf_counter() - started, 3)
            record = report.run_record(config, dataset_info, result, timing=timing,
                                       repeats=repeats, robustness=robust, tuning=tuned)
            written = report.write_run(stage, record, images)
    if not trained["interrupted"]:
        checkpoint.remove()
    report.print_summary(record, [output_dir / path.name for path in written], config.quiet)
    return exits.training_status(trained, repeats)


def train_seeds(config, data, seeds, signals):
    """The recipe once per seed, on the same data split; stops at an interrupt."""
    from digitkit import compare

    runs = []
    for seed in seeds:
        result = train_and_evaluate(compare.seeded(config, seed), data, signals)
        if result["training"]["interrupted"]:
            break
        runs.append(compare.run_figures(result, seed, config))
    return runs


def run_repeats(config, data, first):
    """--repeats N: the same recipe with seeds seed+1 ... as well; the mean and spread."""
    from digitkit import compare

    with StopSignals() as signals:  # a Ctrl-C keeps the seeds finished so far
        runs = train_seeds(config, data, range(config.seed + 1, config.seed + config.repeats),
                           signals)
    return compare.summarise_repeats([compare.run_figures(first, config.seed), *runs],
                                     signals.received is not None)


def run_comparison(config, specs, output_dir):
    """--compare: the recipe for every architecture, --repeats seeds each, on one data split."""
    from digitkit import compare

    started = time.perf_counter()
    data, dataset_info, timing = load_data(config)
    rows = []
    with StopSignals() as signals:
        for hidden in specs:
            runs = train_seeds(dataclasses.replace(config, hidden=tuple(hidden)), data,
                               range(config.seed, config.seed + config.repeats), signals)
            rows += [compare.summarise_runs(hidden, runs)] if runs else []
            if signals.received:
                break
    return compare.write_comparison(output_dir, config, rows, dataset_info, timing, started,
                                    interrupted=signals.received is not None)


def run_search(config, options):
    """--tune: an Optuna search whose objective is the recipe; its best trial then trains."""
    from digitkit import searching, tuning

    output_dir = folders.prepare_output_dir(config.output_dir, lock=True, what="tuning")
    search = tuning.open_study(config, options, output_dir)  # before TensorFlow loads
    data, _, _ = load_data(config)

    def objective(trial):
        """One trial: the recipe at the trial's settings, scored by its validation accuracy."""
        with searching.Trial(trial, config, search) as run:  # the settings, the log, the errors
            run.result = train_and_evaluate(run.config, data, signals,
                                            callbacks=[run.pruning], test=False)
        return run.accuracy

    with StopSignals() as signals, searching.Searching(search, signals) as left:
        search["study"].optimize(objective, n_trials=left.trials, timeout=search["timeout"],
                                 callbacks=[searching.Enough(search["trials"])],
                                 catch=(Exception,), gc_after_trial=True)
    best = searching.best_config(search, config)
    return 130 if best is None else run_training(best, search)


def run(mode, config, options):
    """Training (the recipe above) by default; each other mode is one call, or a loop above."""
    preflight.check_installed(config)
    if mode == "train":
        return run_training(config)
    if mode == "tune":
        return run_search(config, options)
    if mode == "compare":
        memory.check_memory(config, options["specs"])
        output_dir = folders.prepare_output_dir(config.output_dir, lock=True, what=mode)
        return run_comparison(config, options["specs"],
                              folders.prepare_output_dir(output_dir / "comparison"))
    preflight.require_model_file(options["model"], config)  # fails before any slow import
    if mode == "draw":
        from digitkit import draw  # the HTTP server and Pillow: only for --draw

        return draw.run_draw(config, options)
    if mode in ("predict", "export"):  # --predict only adds files: it takes no lock
        output_dir = folders.prepare_output_dir(config.output_dir, mode == "export", mode)
        backend.start(config)
        from digitkit import export, saved

        run_mode = export.run_export if mode == "export" else saved.run_prediction
        return run_mode(config, options, output_dir)
    started = time.perf_counter()  # --evaluate: its reports go beside the training run's
    output_dir = folders.prepare_output_dir(config.output_dir, lock=True, what="evaluation")
    data, dataset_info, timing = load_data(config, training=False)
    from digitkit import saved

    return saved.run_evaluation(config, options, output_dir / "evaluation", data, dataset_info,
                                timing, started)


def main(argv=None):
    """Parse the flags, run, and turn any failure into one line and an exit status."""
    messages.usable_streams()  # a closed stdout, an ASCII-only terminal
    mode, config, options = cli.parse_command_line(argv)  # --help, usage errors: exit 0 or 2
    messages.configure(config.quiet)
    with exits.reported() as outcome:
        outcome.status = run(mode, config, options)
    return outcome.status


if __name__ == "__main__":
    exits.leave(main())  # at once: TensorFlow's teardown at exit only tidies up memory
