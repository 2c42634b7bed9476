"""Configuration: every default of a run in one frozen dataclass, and the presets.

The single home of defaults: the command line shows them in --help, metrics.json records
them. Imports nothing heavy, so `--help` answers before TensorFlow is loaded.
"""

import dataclasses

DIGITS = tuple(str(d) for d in range(10))
DATASETS = {
    "mnist": {"title": "MNIST", "classes": DIGITS},
    "fashion-mnist": {
        "title": "Fashion-MNIST",
        "classes": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    },
}
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
EVAL_BATCH_SIZE = 2048


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run; the single home of all defaults, saved in metrics.json."""

    dataset: str = "mnist"
    data_dir: str | None = None
    output_dir: str = "outputs"
    hidden: tuple[int, ...] = (512, 256)
    dropout: float = 0.2
    augment: str | None = "affine"  # Fashion-MNIST's default: DATASET_DEFAULTS
    augment_strength: float = 1.0
    deskew: bool = False
    committee: int = 1
    epochs: int = 30
    batch_size: int = 512
    learning_rate: float = 6e-3
    lr_schedule: str = "cosine"
    warmup_epochs: int = 0
    validation_split: float = 0.1
    patience: int | None = None
    steps_per_execution: int = 48
    seed: int = 42
    deterministic: bool = False
    resume: bool = False
    repeats: int = 1
    backend: str = "tensorflow"
    preset: str | None = None
    tensorboard: bool = False
    plots: bool = True
    quiet: bool = False


PRESETS = {
    # The seeds' recipe: 3 x 100 ReLU, no dropout, no distortion, Adam 1e-3, batch 32,
    # 5 epochs.
    "seed": dict(hidden=(100, 100, 100), dropout=0.0, augment=None, learning_rate=1e-3,
                 batch_size=32, epochs=5, lr_schedule="constant", warmup_epochs=0,
                 steps_per_execution=1),
    # The most accurate dense-only recipe measured within 30 minutes of training on 2 CPU
    # cores (README, "Best accuracy"): a committee of five 800-800 networks, each seeing its
    # own elastic distortions of every image, deskewed. 3,000 training images (5%) are held
    # out to fit the committee's calibration temperature.
    "best": dict(hidden=(800, 800), dropout=0.0, augment="elastic", deskew=True, committee=5,
                 epochs=52, batch_size=128, learning_rate=1e-3, lr_schedule="cosine",
                 warmup_epochs=1, validation_split=0.05, steps_per_execution=16),
}


# Settings that change what a checkpoint holds; a resumed run must match them all.
RESUME_KEYS = ("dataset", "data_dir", "hidden", "dropout", "augment", "augment_strength",
               "deskew", "committee",
               "epochs", "batch_size", "learning_rate", "lr_schedule", "warmup_epochs",
               "validation_split", "seed", "steps_per_execution", "backend")

# Distortions for --augment: "affine" shifts, rotates and scales; "elastic" adds Simard's
# elastic field on top (alpha 34, sigma 4 pixels, as in Simard et al. 2003); "flip" mirrors
# half the images left to right. --augment-strength scales every distance and angle.
AFFINE = dict(rotation=10.0, zoom=0.1, shift=2.0)
AUGMENTATIONS = {"affine": AFFINE, "elastic": dict(AFFINE, elastic=34.0, sigma=4.0),
                 "flip": dict(flip=True)}


def distortion(name, strength=1.0):
    """RandomDistortion's arguments for --augment name at --augment-strength strength."""
    return {key: value * strength if key in ("rotation", "zoom", "shift", "elastic") else value
            for key, value in AUGMENTATIONS[name].items()}


# Defaults that differ by dataset, chosen on that dataset's validation split (docs/results.md):
# a flag or preset the user gives always wins. Digits keep Config's own. Clothing trains on
# its images as they are: every distortion tried (flips, shifts, scaling) lowered its
# validation accuracy, and a lower learning rate over more epochs raised it.
DATASET_DEFAULTS = {"mnist": {},
                    "fashion-mnist": {"augment": None, "learning_rate": 1e-3, "epochs": 40}}

MIN_CONFIDENCE = 0.8  # --predict's default: calibrated top probabilities below it are "unsure"
MISCLASSIFIED_SHOWN = 40  # at most this many mistakes in misclassified.png
DRAW_PORT = 2828  # --draw's default port: 28 x 28, away from the ports dev servers take



def format_hidden(hidden):
    """Hidden widths as the SPEC a user types ('none' for softmax regression)."""
    return ",".join(map(str, hidden)) or "none"


def config_record(config):
    """The run's settings as JSON-ready values."""
    record = dataclasses.asdict(config)
    record["hidden"] = list(config.hidden)
    return record


# What --tune searches: setting -> (low, high, how it is drawn). --tune-range NAME=LOW:HIGH
# narrows one; a setting given by a flag or preset is not searched. Widths are drawn per
# layer; batch sizes are the powers of two in the range.
TUNE_SPACE = {
    "layers": (1, 3, "integer"),
    "width": (32, 1024, "integer, log scale"),
    "dropout": (0.0, 0.5, "uniform"),
    "learning_rate": (1e-4, 1e-2, "log scale"),
    "batch_size": (32, 1024, "power of two"),
    "epochs": (5, 40, "integer"),
    "augment_strength": (0.0, 1.5, "uniform"),
}


def defaults_for(dataset):
    """Config's defaults with the dataset's own on top."""
    return dataclasses.replace(Config(), dataset=dataset, **DATASET_DEFAULTS[dataset])


def resume_fingerprint(config):
    """The settings a checkpoint must share with the run that resumes it."""
    values = dataclasses.asdict(config)
    return {key: list(values[key]) if key == "hidden" else values[key] for key in RESUME_KEYS}
