"""The command line: every flag, typed and range-checked, with its default shown in --help.

parse_command_line returns the mode, the frozen Config and the mode's options, or exits 2
with a one-line usage error. Imports nothing heavy, so --help and every usage error answer
before TensorFlow is loaded.
"""

import argparse
import dataclasses
import math
import os
import shlex
import textwrap
from pathlib import Path

from digitkit.checkpoint import checkpoint_state
from digitkit.config import (AUGMENTATIONS, DATASET_DEFAULTS, DATASETS, DRAW_PORT,
                             MIN_CONFIDENCE, PRESETS, TUNE_SPACE, Config, format_hidden)
from digitkit.errors import RunError
from digitkit.report import recorded_data

# What the run can do with a number (the parser refuses the rest, exit 2): NumPy and Keras
# take 32-bit seeds; past these, counts only make TensorFlow overflow.
MAX_SEED = 2 ** 32 - 1
MAX_EPOCHS = 100_000
MAX_STEPS_PER_EXECUTION = 100_000


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are a single line on stderr (exit 2)."""

    def error(self, message):
        """Print one line and exit 2."""
        # Escape control characters a user's argument may carry, so the error stays one line.
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def suggested_command(config, *flags):
    """A command line for a message to suggest, repeating the user's own data and output flags."""
    parts = ["python digit_classifier.py"]
    if config.dataset != Config.dataset:
        parts += ["--dataset", config.dataset]
    if config.data_dir is not None:
        parts += ["--data-dir", shlex.quote(str(config.data_dir))]
    if config.output_dir != Config.output_dir:
        parts += ["--output-dir", shlex.quote(str(config.output_dir))]
    return " ".join(parts + list(flags))


def checked(convert, is_valid, expected):
    """An argparse type: convert the text, then insist on a range; the error says what was expected."""
    def parse(text):
        """The checked value, or an argparse error naming what was expected."""
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not is_valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = checked(int, lambda v: v >= 1, "an integer of at least 1")
nonnegative_int = checked(int, lambda v: v >= 0, "an integer of at least 0")
positive_float = checked(float, lambda v: math.isfinite(v) and v > 0, "a finite number above 0")
fraction = checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
probability = checked(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
port_number = checked(int, lambda v: 0 <= v <= 65535, "a port number from 0 to 65535")
seed_number = checked(int, lambda v: 0 <= v <= MAX_SEED, f"an integer from 0 to {MAX_SEED}")
epoch_count = checked(int, lambda v: 1 <= v <= MAX_EPOCHS, f"an integer from 1 to {MAX_EPOCHS:,}")
steps_count = checked(int, lambda v: 1 <= v <= MAX_STEPS_PER_EXECUTION,
                      f"an integer from 1 to {MAX_STEPS_PER_EXECUTION:,}")
strength = checked(float, lambda v: 0 <= v <= 10, "a number from 0 to 10")


# What --tune-range NAME=LOW:HIGH may search: any range that NAME's own flag accepts (--hidden's
# count of widths, and each width; --dropout; ...), narrower or wider than the default one.
TUNE_LIMITS = {"layers": nonnegative_int, "width": positive_int, "dropout": fraction,
               "learning_rate": positive_float, "batch_size": positive_int,
               "epochs": epoch_count, "augment_strength": strength}


def tune_range(text):
    """NAME=LOW:HIGH for --tune-range: LOW <= HIGH, each a value NAME's own flag accepts."""
    name, _, bounds = text.partition("=")
    name = name.strip().replace("-", "_")
    if name not in TUNE_SPACE:
        raise argparse.ArgumentTypeError(
            f"expected NAME=LOW:HIGH with NAME one of {', '.join(TUNE_SPACE)}, got {text!r}")
    parts = bounds.split(":")
    try:
        values = tuple(TUNE_LIMITS[name](part) for part in parts) if len(parts) == 2 else ()
    except argparse.ArgumentTypeError as err:  # "expected an integer of at least 1, got '0'"
        raise argparse.ArgumentTypeError(f"{name}=LOW:HIGH: {err}") from None
    if len(values) != 2 or values[0] > values[1]:
        raise argparse.ArgumentTypeError(
            f"expected {name}=LOW:HIGH with LOW <= HIGH, got {text!r}")
    if name == "batch_size" and not batch_powers(*values):
        raise argparse.ArgumentTypeError(f"no power of two from {values[0]} to {values[1]}")
    return name, values


def batch_powers(low, high):
    """The powers of two from low to high: the batch sizes --tune tries."""
    return [2 ** k for k in range(math.ceil(math.log2(low)), math.floor(math.log2(high)) + 1)]


def path_text(text):
    """A path as typed; an empty one would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def hidden_spec(text):
    """Comma-separated hidden widths such as '512,256', or 'none' for no hidden layer."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(positive_int(part) for part in text.split(","))
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"bad architecture {text!r}: {err}") from None


def resumed_settings(args):
    """The settings the checkpoint in the output folder was made with ({} when there is none,
    or it cannot be read: the run then says so), so that --resume continues that run even
    where today's defaults differ from the ones it started with."""
    try:
        state = checkpoint_state(Path(args.get("output_dir", Config.output_dir)))
    except RunError:
        return {}
    saved = (state or {}).get("config", {})
    return {key: tuple(value) if key == "hidden" else value for key, value in saved.items()}


def dataset_defaults(field):
    """'; fashion-mnist: 40' for each dataset whose own default for field differs."""
    def shown(value):
        """A default as --help shows it."""
        return "none" if value is None else f"{value:g}" if isinstance(value, float) else value

    return "".join(f"; {name}: {shown(values[field])}"
                   for name, values in DATASET_DEFAULTS.items() if field in values)


def build_parser():
    """The command-line interface; defaults come from Config and are shown in --help."""
    d = Config()
    parser = Parser(
        prog="digit_classifier.py",
        description="Train a dense network on MNIST or Fashion-MNIST, evaluate it on the test "
                    "set, and write reports; or use a saved model on your own images.",
        argument_default=argparse.SUPPRESS, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets set several options at once; flags given explicitly override them:\n"
               + "\n".join(textwrap.fill(f"--preset {name}: " + ", ".join(
                   f"{key}={format_hidden(value) if key == 'hidden' else value}"
                   for key, value in values.items()), width=78, initial_indent="  ",
                   subsequent_indent="    ") for name, values in PRESETS.items()))
    mode = parser.add_argument_group("what to do (default: train)").add_mutually_exclusive_group()
    mode.add_argument("--predict", nargs="+", metavar="IMAGE",
                      help="classify image files, or every image in a folder, with a saved model "
                           "(see --model); writes predictions.csv and predictions.png")
    mode.add_argument("--draw", action="store_true",
                      help="serve a page on 127.0.0.1 where you draw a digit with mouse, pen or "
                           "finger and see the saved model's answer as you draw (see --port)")
    mode.add_argument("--export", nargs="+", choices=("onnx", "litert", "savedmodel"),
                      metavar="FORMAT",
                      help="write the saved model (see --model) for other runtimes, in one or "
                           "more of: onnx (model.onnx), litert (model.tflite), savedmodel "
                           "(TF Serving)")
    mode.add_argument("--evaluate", action="store_true",
                      help="evaluate a saved model on the test set and write its reports "
                           "in OUTPUT_DIR/evaluation")
    mode.add_argument("--compare", nargs="+", metavar="SPEC", type=hidden_spec,
                      help="train one network per SPEC of comma-separated hidden widths "
                           "(e.g. 100 100,100 512,256; 'none' for no hidden layer) and compare "
                           "them in OUTPUT_DIR/comparison")
    mode.add_argument("--tune", type=positive_int, metavar="N",
                      help="search N trials with Optuna for the settings below that no flag "
                           "gives (scored on the validation split), then train the best as a "
                           "run; the same command again continues the search")

    tune = parser.add_argument_group(
        "with --tune", "searched by default: " + "; ".join(
            f"{name} {low:g}-{high:g} ({how})" for name, (low, high, how) in TUNE_SPACE.items())
        + ". A flag that sets one (--hidden sets layers and width) takes it out of the search.")
    tune.add_argument("--tune-minutes", type=positive_float, metavar="M",
                      help="start no new trial after M minutes (default: no limit)")
    tune.add_argument("--tune-range", action="append", type=tune_range, metavar="NAME=LOW:HIGH",
                      help="search NAME only from LOW to HIGH, e.g. width=64:512 (repeatable)")
    tune.add_argument("--tune-storage", metavar="URL",
                      help="the study's database: any URL Optuna accepts, e.g. postgresql://"
                           "user:password@host/db; every machine given the same URL and "
                           "--study-name works on one search (default: sqlite file "
                           "OUTPUT_DIR/tuning.db)")
    tune.add_argument("--study-name", metavar="NAME",
                      help="the study in that database (default: digit_classifier)")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(DATASETS),
                      help=f"which dataset (default: {d.dataset}); each brings its own "
                           f"defaults, shown below as 'dataset: value'")
    data.add_argument("--data-dir", metavar="DIR", type=path_text,
                      help="read the four IDX files (plain or .gz) or an mnist.npz from DIR "
                           "instead of downloading (default: $DIGIT_CLASSIFIER_DATA_DIR when "
                           "set, else Keras' download and cache)")
    data.add_argument("--validation-split", type=fraction, metavar="FRACTION",
                      help=f"fraction of the training set held out for validation "
                           f"(default: {d.validation_split})")

    model = parser.add_argument_group("model")
    model.add_argument("--hidden", nargs="*", type=positive_int, metavar="WIDTH",
                       help=f"widths of the Dense ReLU hidden layers; none for softmax regression "
                            f"(default: {' '.join(map(str, d.hidden))})")
    model.add_argument("--dropout", type=fraction, metavar="RATE",
                       help=f"fraction of units dropped after each hidden layer (default: "
                            f"{d.dropout}{dataset_defaults('dropout')})")
    model.add_argument("--augment", nargs="?", const="affine",
                       choices=[*sorted(AUGMENTATIONS), "none"],
                       help="randomly distort training images: affine shifts (+-2 px), rotates "
                            "(+-10 degrees) and scales (+-10%%); elastic adds an elastic "
                            "warp; flip mirrors half of them left to right; none trains on "
                            f"the images as they are (default: {d.augment}"
                            f"{dataset_defaults('augment')}; --augment alone: affine)")
    model.add_argument("--augment-strength", type=strength, metavar="S",
                       help="scale the distortion's shifts, angles, zoom and warp by S "
                            f"(default: {d.augment_strength:g})")
    model.add_argument("--deskew", action=argparse.BooleanOptionalAction,
                       help="deskew every image by its moments inside the model, in training "
                            "and in use (default: off; on in --preset best)")
    model.add_argument("--committee", type=positive_int, metavar="N",
                       help="train N networks side by side and average their predictions "
                            f"(default: {d.committee})")

    training = parser.add_argument_group("training")
    training.add_argument("--preset", choices=sorted(PRESETS),
                          help="a named set of the options below (default: none)")
    training.add_argument("--epochs", type=epoch_count,
                          help=f"training epochs (default: {d.epochs}{dataset_defaults('epochs')})")
    training.add_argument("--batch-size", type=positive_int,
                          help=f"images per training step (default: {d.batch_size})")
    training.add_argument("--learning-rate", type=positive_float, metavar="RATE",
                          help=f"Adam's (peak) learning rate (default: {d.learning_rate:g}"
                               f"{dataset_defaults('learning_rate')})")
    training.add_argument("--lr-schedule", choices=("constant", "cosine"),
                          help=f"constant, or cosine decay to 0 over training (default: {d.lr_schedule})")
    training.add_argument("--warmup-epochs", type=nonnegative_int, metavar="N",
                          help=f"with --lr-schedule cosine, ramp the rate up linearly over the "
                               f"first N epochs (default: {d.warmup_epochs})")
    training.add_argument("--patience", type=positive_int, metavar="N",
                          help="stop when validation loss has not improved for N epochs and keep "
                               "the best weights (default: off)")
    training.add_argument("--steps-per-execution", type=steps_count, metavar="N",
                          help=f"training steps per call into the compiled graph "
                               f"(default: {d.steps_per_execution})")
    training.add_argument("--seed", type=seed_number,
                          help=f"seed for the data split, initial weights and shuffling "
                               f"(default: {d.seed})")
    training.add_argument("--repeats", type=positive_int, metavar="N",
                          help=f"train with N seeds (seed, seed+1, ...) and report mean and "
                               f"standard deviation (default: {d.repeats})")
    training.add_argument("--deterministic", action="store_true",
                          help="bit-for-bit reproducible training, at some cost in speed "
                               "(default: off)")
    training.add_argument("--resume", action="store_true",
                          help="continue the unfinished run checkpointed in OUTPUT_DIR (default: off)")
    training.add_argument("--backend", choices=("tensorflow", "jax"),
                          help=f"Keras backend (default: {d.backend})")

    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", metavar="DIR", type=path_text,
                        help=f"where reports and the model go (default: {d.output_dir})")
    output.add_argument("--port", type=port_number, metavar="N",
                        help=f"with --draw, the port to listen on; 0 picks a free one "
                             f"(default: {DRAW_PORT})")
    output.add_argument("--model", metavar="PATH", type=path_text,
                        help="saved model for --predict, --draw and --evaluate "
                             "(default: OUTPUT_DIR/model.keras)")
    output.add_argument("--json", action="store_true",
                        help="with --predict, print one JSON object per image")
    output.add_argument("--explain", action="store_true",
                        help="with --predict, also save explain/NAME.png for each image named: "
                             "the photo, the ink found, the digits cut out and what the model "
                             "saw, so you see where a reading went wrong")
    output.add_argument("--min-confidence", type=probability, metavar="P",
                        help="with --predict or --draw, mark answers whose calibrated top probability is "
                             f"below P as unsure (default: {MIN_CONFIDENCE:g}; report.html shows "
                             "what each level means on the validation split)")
    output.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard logs (per-epoch scalars, the model graph) to "
                             "OUTPUT_DIR/tensorboard; needs the tensorboard package (default: off)")
    output.add_argument("--no-plots", dest="plots", action="store_false",
                        help="draw no pictures (the PNG files, and the images of report.html): "
                             "a couple of seconds less per run, for sweeps and scripts; "
                             "metrics.json and report.html's tables as usual (default: draw)")
    output.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


DATA_DIR_VARIABLE = "DIGIT_CLASSIFIER_DATA_DIR"  # gives --data-dir's default, offline
SAVED_MODEL_MODES = ("predict", "draw", "evaluate", "export")  # they use --model, train nothing


def parse_command_line(argv=None):
    """Parse and cross-check the flags; return (mode, config, options) or exit 2."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    mode = next((name for name in ("predict", "draw", "evaluate", "export", "compare", "tune")
                 if name in args), "train")

    def refuse(flag, reason):
        """Fail with a usage error if flag (its dest) was given."""
        if flag in args:
            shown = "no-plots" if flag == "plots" else flag.replace("_", "-")
            parser.error(f"argument --{shown}: {reason}")

    if mode != "predict":
        refuse("json", "only with --predict")
        refuse("explain", "only with --predict")
    if mode not in ("predict", "draw"):
        refuse("min_confidence", "only with --predict or --draw")
    if mode != "draw":
        refuse("port", "only with --draw")
    if mode not in SAVED_MODEL_MODES:
        refuse("model", "only with --predict, --draw, --evaluate or --export")
    if mode != "train":
        refuse("resume", "only when training")
    if mode != "tune":
        for flag in ("tune_minutes", "tune_range", "tune_storage", "study_name"):
            refuse(flag, "only with --tune")
    if mode not in ("train", "compare"):
        refuse("tensorboard", "only when training or comparing")
    if mode not in ("train", "tune", "evaluate"):
        refuse("plots", "only when training or evaluating")
    if mode in SAVED_MODEL_MODES:
        for flag in ("repeats", "epochs", "hidden", "preset", "patience", "resume", "augment",
                     "deskew", "committee"):
            refuse(flag, f"has no effect with --{mode}")
    if mode == "compare":
        refuse("hidden", "not with --compare, whose SPECs give the hidden layers")

    fields = {f.name for f in dataclasses.fields(Config)}
    # The dataset's own defaults, then the preset's, then the flags given: the last wins.
    values = dict(DATASET_DEFAULTS[args.get("dataset", Config.dataset)])
    values.update(PRESETS.get(args.get("preset"), {}))
    given = {key for key in (*PRESETS.get(args.get("preset"), {}), *args) if key in fields}
    if mode == "train" and "resume" in args:  # the unfinished run's own settings, unless given
        values.update({key: value for key, value in resumed_settings(args).items()
                       if key in fields and key not in given})
    values.update({key: value for key, value in args.items() if key in fields})
    if "hidden" in values:
        values["hidden"] = tuple(values["hidden"])
    if values.get("augment") == "none":
        values["augment"] = None
    model_path = args.get("model", str(Path(args.get("output_dir", Config.output_dir))
                                       / "model.keras"))
    recorded = None
    if mode == "evaluate" and "data_dir" not in args and "dataset" not in args:
        recorded = recorded_data(model_path)  # the data the model was trained and tested on
        values.update(recorded or {})
    if values.get("data_dir") is None and os.environ.get(DATA_DIR_VARIABLE):
        values["data_dir"] = os.environ[DATA_DIR_VARIABLE]  # --data-dir's default, when set
    config = Config(**values)

    if config.patience is not None and config.validation_split == 0:
        parser.error("argument --patience: needs a validation set (--validation-split above 0)")
    if config.warmup_epochs and config.lr_schedule != "cosine":
        parser.error("argument --warmup-epochs: only with --lr-schedule cosine")
    if config.warmup_epochs >= config.epochs and config.warmup_epochs:
        parser.error(f"argument --warmup-epochs: must be fewer than --epochs ({config.epochs})")
    if config.seed + config.repeats - 1 > MAX_SEED:
        parser.error(f"argument --repeats: seeds {config.seed} to "
                     f"{config.seed + config.repeats - 1} go past {MAX_SEED}, the largest seed")
    if config.repeats > 1 and config.resume:
        parser.error("argument --resume: not with --repeats")
    if mode == "tune" and config.validation_split == 0:
        parser.error("argument --tune: trials are scored on the validation split; give "
                     "--validation-split above 0")
    options = dict(specs=args.get("compare"), images=args.get("predict"),
                   json=args.get("json", False), explain=args.get("explain", False),
                   min_confidence=args.get("min_confidence", MIN_CONFIDENCE),
                   model=model_path, recorded=recorded, port=args.get("port", DRAW_PORT),
                   tune=args.get("tune"), tune_minutes=args.get("tune_minutes"),
                   tune_ranges=dict(args.get("tune_range", ())),
                   tune_storage=args.get("tune_storage"), study_name=args.get("study_name"),
                   given=given,
                   export=list(dict.fromkeys(args["export"])) if "export" in args else None)
    return mode, config, options
