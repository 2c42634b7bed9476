"""Saved models in use: --evaluate scores one on the test set, --predict classifies images.

Both load model.keras as any Keras program would (plain keras.models.load_model: the
deskewing and the calibration are inside it) and read the dataset it was trained on from
it, so its answers carry that dataset's class names. Imports Keras at its top: import this
module only after backend.start.
"""

import csv
import functools
import logging
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from digitkit import ink, plots, robustness
from digitkit.calibration import CALIBRATION_BINS, calibration_figures
from digitkit.clock import timed
from digitkit.config import DATASETS, EVAL_BATCH_SIZE, IMAGE_SHAPE, NUM_CLASSES
from digitkit.errors import RunError, one_line
from digitkit.files import write_atomically, write_json
from digitkit.folders import STAGING_DIRS, prepare_output_dir, publish, staged
from digitkit.images import ImageError, read_image, visible_entries
from digitkit.metrics import score
from digitkit.networks import architecture, saved_dataset
from digitkit.preflight import require_model_file, train_first
from digitkit.reader import DigitReader
from digitkit.messages import LOGGER
from digitkit.report import build_record, print_summary, write_html_report

log = logging.getLogger(LOGGER)
PREDICT_CHUNK = 512  # images read and classified at a time, so memory stays bounded
PREDICTIONS_SHOWN = 48  # at most this many images in predictions.png
EXPLAINED_MAX = 50  # --explain draws the steps for at most this many images
PREDICTION_FILES = ("predictions.csv", "predictions.png", "explain")
PREDICTION_COLUMNS = ("file", "prediction", "probability", "second", "second_probability",
                      "third", "third_probability", "unsure", "digits")


def load_saved_model(path, config):
    """Load a model this project saved, checking it takes 28x28 images and gives 10 classes;
    returns it with the dataset it was trained on."""
    path = Path(path)
    require_model_file(path, config)
    try:  # a file this user may not read: said so, not "file not found" from Keras
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as err:
        raise RunError(f"{path}: the saved model cannot be read ({err.strerror})") from None
    try:
        model = keras.models.load_model(path)
    except Exception as err:  # Keras raises many types for files that are not its models
        raise RunError(f"{path}: not a loadable Keras model ({one_line(err)}); "
                       f"{train_first(config, path)}") from None
    input_shape, output_shape = tuple(model.input_shape[1:]), tuple(model.output_shape[1:])
    if input_shape != IMAGE_SHAPE or output_shape != (NUM_CLASSES,):
        raise RunError(f"{path}: model maps {input_shape} to {output_shape}, not 28x28 images "
                       f"to 10 classes; {train_first(config, path)}")
    # One blank image: checks the outputs, and traces the model before --draw serves it.
    blank = np.asarray(model.predict_on_batch(np.zeros((1, *IMAGE_SHAPE), np.float32)))[0]
    if not (np.all(blank >= 0) and abs(float(blank.sum()) - 1) < 1e-3):
        raise RunError(f"{path}: the model's outputs are not probabilities (one image's sum to "
                       f"{float(blank.sum()):.4g}); {train_first(config, path)}")
    return model, saved_dataset(path, model)


def run_evaluation(config, options, output_dir, data, dataset_info, timing, started):
    """Evaluate a saved model (options["model"]) on the test set and write the same reports
    as training, in output_dir (OUTPUT_DIR/evaluation).

    data is the test set (and the training images samples.png shows), loaded and scaled by
    the script as for training; started is when the run began (time.perf_counter()).
    """
    model_path = options["model"]
    if options["recorded"]:
        log.info(f"data: {config.data_dir or 'the Keras download'} ({config.dataset}), "
                 f"as recorded by the run that saved {model_path}")
    output_dir = prepare_output_dir(output_dir)
    model, trained_on = load_saved_model(model_path, config)
    if trained_on != config.dataset:
        raise RunError(f"{model_path}: trained on {trained_on}; pass --dataset {trained_on}")
    with timed(timing, "evaluate_seconds"):
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        test_loss, test_accuracy = model.evaluate(data["x_test"], data["y_test"],
                                                  batch_size=EVAL_BATCH_SIZE, verbose=0)
        probabilities = model.predict(data["x_test"], batch_size=EVAL_BATCH_SIZE, verbose=0)
        scores = score(probabilities, data["y_test"], test_loss, test_accuracy)
    # The saved model's probabilities as they are (calibrated when training fitted a
    # temperature): how well they match its accuracy on this test set.
    calibration = dict(saved_model=True, fitted=False, bins=CALIBRATION_BINS,
                       before=calibration_figures(probabilities, data["y_test"]))
    with timed(timing, "robustness_seconds"):
        robust = robustness.robustness(model, data["x_test"], data["y_test"])
    dataset = DATASETS[config.dataset]
    with staged(output_dir, "evaluation") as stage:  # an earlier evaluation moves aside
        images = []
        if config.plots:
            with timed(timing, "report_seconds"):
                images = [plots.plot_confusion_matrix(
                    scores["confusion_matrix"], dataset["classes"],
                    f"{dataset['title']} test set: confusion matrix (accuracy "
                    f"{scores['test_accuracy']:.2%})", stage / "confusion_matrix.png"),
                    *plots.draw_pictures(stage, data, scores, config, None, calibration)]
                plots.add_robustness_picture(images, robust, config)
        timing["total_seconds"] = round(time.perf_counter() - started, 3)
        record = build_record(config, dataset_info, scores, timing=timing,
                              model_path=model_path, architecture=architecture(model),
                              parameters=int(model.count_params()), calibration=calibration,
                              robustness=robust)
        written = [*images, write_html_report(stage / "report.html", record, images),
                   write_json(stage / "metrics.json", record)]
    print_summary(record, [output_dir / Path(path).name for path in written], config.quiet)
    return 0


def shown_path(path):
    """A path as text that can always be printed and written: bytes that are not UTF-8 (a
    file name from another system) as \\xNN escapes, instead of an exception, and control
    characters (a newline, a terminal's escape) escaped, so a name cannot split a line or
    retitle the terminal."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def spreadsheet_safe(text):
    """Text for a CSV cell that a spreadsheet shows as text: one that would start a formula
    (=, +, -, @) gets a leading apostrophe, as OWASP advises."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def image_sources(paths, own=()):
    """(path, named, why it cannot be read or None) for each file named and for each file in
    each folder named; named is False for a folder's files. The files in `own` (this run's
    outputs) are left out of folders, so a rerun does not classify its own predictions.png."""
    own = {Path(path).resolve() for path in own}
    for path in map(Path, paths):
        try:
            entries = ([entry for entry in visible_entries(path) if entry.resolve() not in own]
                       if path.is_dir() else [])
        except OSError as err:  # a folder this user may not list, or not search
            yield path, True, f"a folder that cannot be read ({err.strerror})"
            continue
        if entries:
            yield from ((entry, False, None) for entry in entries)
        else:  # a file, or a folder with nothing in it (reported as an error)
            yield path, True, None


def readings(sources, problems, single):
    """(path, ink.Reading) for each source that is an image; the others are reported on
    stderr (an error for a file named, "skipped" for a folder's) and listed in problems."""
    for path, named, unreadable in sources:
        try:
            if unreadable:
                raise ImageError(unreadable)
            yield path, ink.read(read_image(path), single=single)
        except ImageError as err:
            print(f"{'error' if named else 'skipped'}: {shown_path(path)}: {err}",
                  file=sys.stderr)
            problems.append((path, named))


def classify(model, found, chunk=PREDICT_CHUNK):
    """(path, reading, probabilities per digit) for each (path, reading), the digits of
    about chunk images predicted at a time."""
    found = iter(found)
    while batch := list(itertools.islice(found, chunk)):
        probabilities = ink.digit_probabilities(
            functools.partial(model.predict, batch_size=EVAL_BATCH_SIZE, verbose=0),
            [digit for _, reading in batch for digit in reading.digits])
        start = 0
        for path, reading in batch:
            yield path, reading, probabilities[start:start + len(reading.digits)]
            start += len(reading.digits)


class ShownImages:
    """The images predictions.png shows: all of them up to `limit`, else the unsure first."""

    def __init__(self, limit=PREDICTIONS_SHOWN):
        self.limit, self.total = limit, 0
        self.sure, self.unsure = [], []  # (order, image, caption); at most limit of each

    def offer(self, image, caption, unsure):
        """Keep the image if it may be shown."""
        kept = self.unsure if unsure else self.sure
        if len(kept) < self.limit:
            kept.append((self.total, image, caption))
        self.total += 1

    def chosen(self):
        """(images, captions, caption colours, a title fragment saying how many are shown)."""
        if self.total <= self.limit:
            picked, what = sorted(self.sure + self.unsure, key=lambda item: item[0]), ""
        else:
            picked = self.unsure[:self.limit]
            picked += self.sure[:self.limit - len(picked)]
            what = (f"{len(picked)} of {self.total:,} digits, the unsure first" if self.unsure
                    else f"the first {len(picked)} of {self.total:,} digits")
        unsure_orders = {order for order, _, _ in self.unsure}
        return (np.stack([image for _, image, _ in picked]), [c for _, _, c in picked],
                ["tab:red" if order in unsure_orders else "black" for order, _, _ in picked],
                what)


def prediction_stage(output_dir):
    """A hidden folder in output_dir for this --predict's files, published whole at the end
    (dropped if it fails). Its own name: a training run's staging folder is not touched."""
    stage = Path(tempfile.mkdtemp(prefix=".predict-", dir=output_dir))
    STAGING_DIRS.append(stage)
    return stage


def safe_stem(path):
    """A file name's stem fit to name another file: letters, digits, '-', '_' and '.'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(path).stem)[:80] or "image"


def answer_line(result):
    """What --predict prints after an image's name: the answer, its probability, UNSURE, and
    the next candidates (one digit) or each digit's answer (a number)."""
    head = (f"{result['prediction']} ({result['probability']:.1%})"
            f"{'  UNSURE' if result['unsure'] else ''}")
    if "digits" not in result:
        others = ", ".join(f"{c['label']} ({c['probability']:.1%})" for c in result["candidates"])
        return f"{head}  next: {others}"
    digits = ", ".join(f"{d['prediction']} ({d['probability']:.1%})" for d in result["digits"])
    doubt = f"  ({result['doubtful']})" if result["doubtful"] else ""
    return f"{head}  digits: {digits}{doubt}"


def csv_row(text, result):
    """predictions.csv's row for one image: a number's digits, each with its probability, in
    the last column; a single digit's next two candidates in theirs."""
    if "digits" in result:
        digits = " ".join(f"{d['prediction']}:{d['probability']:.6f}" for d in result["digits"])
        others = ["", "", "", ""]
    else:
        digits = ""
        others = [value for c in result["candidates"]
                  for value in (c["label"], f"{c['probability']:.6f}")]
    return [spreadsheet_safe(text), result["prediction"], f"{result['probability']:.6f}",
            *others, int(result["unsure"]), digits]


def offer_digits(shown, name, reading, result):
    """Offer each digit the model saw to predictions.png, captioned with its answer."""
    name = name if len(name) <= 20 else f"…{name[-19:]}"  # the end holds a label, if any
    digits = result.get("digits", [result])
    for k, (digit, said) in enumerate(zip(reading.digits, digits), start=1):
        where = f" {k}/{len(digits)}" if len(digits) > 1 else ""
        shown.offer(digit.image, f"{name}{where}\n{said['prediction']} "
                    f"({said['probability']:.0%})" + (" unsure" if result["unsure"] else ""),
                    result["unsure"])


def to_stdout(line):
    """Print one answer, at once; a standard output that cannot take it (a full disk,
    /dev/full) is a RunError that names it, not the CSV being written meanwhile."""
    try:
        print(line, flush=True)
    except OSError as err:
        raise RunError(f"standard output: {err.strerror or err}") from None


def run_prediction(config, options, output_dir):
    """Classify image files and folders of them (options["images"]) with a saved model
    (options["model"]): a line each on stdout (or JSON, options["json"]), every answer in
    predictions.csv and a readable subset in predictions.png (with options["explain"], each
    image's steps in explain/). A previous --predict's files move to previous/.

    Images are read and classified PREDICT_CHUNK at a time, so thousands take little memory.
    An answer whose (calibrated) top probability is below options["min_confidence"] is marked
    unsure.
    """
    model_path, image_paths, as_json = options["model"], options["images"], options["json"]
    min_confidence, explain = options["min_confidence"], options["explain"]
    model, trained_on = load_saved_model(model_path, config)
    reader = DigitReader(model, trained_on, min_confidence)
    problems, shown, explained = [], ShownImages(), []
    counts = dict(images=0, unsure=0)
    stage = prediction_stage(output_dir)

    def write_predictions(tmp):
        """Classify everything, printing each answer and writing its CSV row."""
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(PREDICTION_COLUMNS)
            own = [output_dir / name for name in PREDICTION_FILES]
            found = readings(image_sources(image_paths, own), problems, not reader.reads_numbers)
            for path, reading, probabilities in classify(model, found):
                result = reader.answer(reading, probabilities)
                counts["images"] += 1
                counts["unsure"] += result["unsure"]
                text = shown_path(path)
                writer.writerow(csv_row(text, result))
                if as_json:
                    to_stdout(json.dumps(dict(file=text, **result)))
                elif not config.quiet:
                    to_stdout(f"{text}: {answer_line(result)}")
                offer_digits(shown, shown_path(path.name), reading, result)
                if explain and len(explained) < EXPLAINED_MAX:
                    name = f"{safe_stem(path)}.png"
                    plots.plot_reading(reading, result, shown_path(path.name),
                                       stage / "explain" / name)
                    explained.append(output_dir / "explain" / name)
        if not counts["images"]:
            raise RunError("no image to classify" + (
                f": none of the {len(problems)} files could be read" if problems else ""))

    write_atomically(stage / "predictions.csv", write_predictions)
    images, captions, colours, how_many = shown.chosen()
    plots.plot_digit_grid(images, captions,
                    f"{how_many.capitalize() + ' ' if how_many else 'Your images '}as the model "
                    f"saw them, with its prediction (unsure, in red: below {min_confidence:.0%})",
                    stage / "predictions.png",
                    columns=min(8 if len(images) > 12 else 6, len(images)),
                    caption_colours=colours)
    moved = publish(stage, output_dir, PREDICTION_FILES, "predictions-")
    if not as_json and not config.quiet:
        if moved:
            print(f"the previous predictions are now in {moved}")
        skipped = sum(not named for _, named in problems)
        print(f"classified {counts['images']:,} image{'s' * (counts['images'] != 1)} "
              f"({counts['unsure']:,} unsure)"
              + (f"; skipped {skipped:,} files that are not images" if skipped else ""))
        print(f"wrote {output_dir / 'predictions.csv'}\nwrote {output_dir / 'predictions.png'}")
        print("".join(f"wrote {path}\n" for path in explained), end="")
    return 1 if any(named for _, named in problems) else 0
