# /// script
# requires-python = ">=3.10,<3.13"
# dependencies = [
#     "tensorflow>=2.16,<2.22",
#     "keras>=3.3,<4",
#     "numpy>=1.26,<3",
#     "matplotlib>=3.8,<4",
#     "seaborn>=0.13,<0.14",
#     "pillow>=10,<13",
#     "tensorboard>=2.16,<2.22",
# ]
# ///
"""Train a dense neural network on MNIST (or Fashion-MNIST), evaluate it, and report.

    python digit_classifier.py                              # train, evaluate, write outputs/
    python digit_classifier.py --data-dir ../shared/data/mnist --epochs 20
    python digit_classifier.py --predict my_digit.png       # classify your own images
    python digit_classifier.py --draw                       # draw a digit in the browser
    python digit_classifier.py --compare 100 100,100 512,256 --repeats 3
    python digit_classifier.py --preset best                # 5 dense nets, elastic distortion

The file reads in the order data flows. The core pipeline first: configuration, data,
model, writing files, training, evaluation, reports, and the run that wires them (one
`train_and_evaluate` pipeline that training, repeats, comparison and the benchmark all call,
and one record of the run that every report is rendered from). Then the extras, each in its
section: the distortion of training images, saved-model use (--evaluate, --predict), drawing
in the browser (--draw), the architecture comparison; the command line last. TensorFlow,
Keras and Matplotlib are imported inside the functions that need them, so `--help` and
usage errors answer at once.
"""

import argparse
import base64
import csv
import dataclasses
import errno
import functools
import gzip
import html
import importlib.util
import io
import itertools
import json
import math
import os
import platform
import shlex
import signal
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

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
    augment: str | None = "affine"
    deskew: bool = False
    width_norm: bool = False
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
RESUME_KEYS = ("dataset", "data_dir", "hidden", "dropout", "augment", "deskew", "width_norm",
               "committee", "epochs", "batch_size", "learning_rate", "lr_schedule",
               "warmup_epochs", "validation_split", "seed", "steps_per_execution", "backend")


def format_hidden(hidden):
    """Hidden widths as the SPEC a user types ('none' for softmax regression)."""
    return ",".join(map(str, hidden)) or "none"


class RunError(Exception):
    """A failure the user can act on: reported as one line, exit status 1."""

    status = 1


class UsageError(RunError):
    """Flags that cannot work with the data they were given: one line, exit status 2."""

    status = 2


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


# ---------------------------------------------------------------------------
# Data: read, validate, split, scale
# ---------------------------------------------------------------------------

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, 3 or 1 dimensions


def find_idx_file(data_dir, stem):
    """Return the path of one IDX file in data_dir, accepting the common spellings."""
    dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte, as many mirrors spell it
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (data_dir / name).exists():
            return data_dir / name
    return None


def read_idx(path, ndim):
    """Read one IDX file of unsigned bytes (gzip-compressed or not) into a NumPy array."""
    if path.is_dir():
        raise RunError(f"{path}: is a directory, expected an IDX file")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise RunError(f"{path}: corrupt or truncated gzip data ({err})") from None
    except OSError as err:
        raise RunError(f"{path}: cannot read ({err.strerror})") from None
    if not raw:
        raise RunError(f"{path}: file is empty")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise RunError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != IDX_MAGIC[ndim]:
        raise RunError(f"{path}: wrong magic number 0x{magic:08x}, expected "
                       f"0x{IDX_MAGIC[ndim]:08x} (IDX {'images' if ndim == 3 else 'labels'})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + math.prod(shape)
    if len(raw) != expected:
        raise RunError(f"{path}: header promises {'x'.join(map(str, shape))} bytes of data "
                       f"but the file holds {len(raw) - header_size} (truncated or padded)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def read_npz(path):
    """Read a Keras-format mnist.npz (x_train, y_train, x_test, y_test)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in IDX_FILES if key not in archive.files]
            if missing:
                raise RunError(f"{path}: missing array {', '.join(missing)} "
                               f"(has {', '.join(archive.files) or 'none'})")
            return {key: archive[key] for key in IDX_FILES}
    except (OSError, ValueError, zlib.error, EOFError) as err:
        raise RunError(f"{path}: not a readable .npz archive ({err})") from None


def read_data_dir(data_dir, dataset):
    """Read the four IDX files, or a Keras .npz, from a local directory or .npz path."""
    data_dir = Path(data_dir)
    if data_dir.is_file() and data_dir.suffix == ".npz":
        return read_npz(data_dir), {key: str(data_dir) for key in IDX_FILES}
    if not data_dir.is_dir():
        raise RunError(f"--data-dir {data_dir}: no such directory")
    found = {key: find_idx_file(data_dir, stem) for key, stem in IDX_FILES.items()}
    if not any(found.values()):
        for name in (f"{dataset}.npz", "mnist.npz"):
            if (data_dir / name).exists():
                return read_npz(data_dir / name), {k: str(data_dir / name) for k in IDX_FILES}
        raise RunError(f"{data_dir}: no MNIST data found (expected the four IDX files such as "
                       f"{IDX_FILES['x_train']}.gz, or {dataset}.npz)")
    missing = [IDX_FILES[key] for key, path in found.items() if path is None]
    if missing:
        raise RunError(f"{data_dir}: missing {', '.join(missing)} (plain or .gz)")
    arrays = {key: read_idx(path, 3 if key.startswith("x") else 1)
              for key, path in found.items()}
    return arrays, {key: str(path) for key, path in found.items()}


def download_dataset(dataset):
    """Load through Keras' downloader, which caches the files under ~/.keras/datasets."""
    import keras

    loader = keras.datasets.mnist if dataset == "mnist" else keras.datasets.fashion_mnist
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as err:  # Keras wraps network failures in a bare Exception
        raise RunError(f"could not download {DATASETS[dataset]['title']}: {download_failure(err)}; "
                       f"without a network, pass --data-dir DIR holding its four IDX files "
                       f"(README, Usage: Offline)") from None
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return arrays, {key: f"keras.datasets.{loader.__name__.rsplit('.', 1)[-1]}" for key in arrays}


def download_failure(err):
    """The real cause of a failed download, from the exception Keras raised and its context."""
    import urllib.error

    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    for cause in chain:
        if isinstance(cause, urllib.error.HTTPError):
            return f"the server answered HTTP {cause.code} {cause.msg}".rstrip()
        if isinstance(cause, urllib.error.URLError):
            reason = cause.reason
            if isinstance(reason, TimeoutError):
                return f"the connection timed out ({reason})"
            return f"no network connection ({getattr(reason, 'strerror', None) or reason})"
        if isinstance(cause, TimeoutError):
            return f"the connection timed out ({cause})"
        if isinstance(cause, ValueError) and "hash" in str(cause):
            return ("the downloaded file failed its checksum (incomplete or corrupted); "
                    "it was deleted, try again")
    message = str(chain[0]).splitlines()[0] if str(chain[0]) else ""
    return f"{type(chain[0]).__name__}: {message}" if message else type(chain[0]).__name__


# The official files, recognised whatever their format (gzip or plain IDX, .npz, Keras' cache):
# MNIST by a checksum of its 70,000 labels; Fashion-MNIST by what sets it apart, 6,000
# training and 1,000 test images of every class and a mean pixel of 0.2860 (MNIST: 0.1307).
MNIST_LABELS_SHA256 = "671ff9d70b4811116d55c3dd479efa7a981e2e62753ef7a6d5c15fea81e63d27"
FASHION_MNIST_MEAN_PIXEL = 0.2860


def recognise_dataset(arrays):
    """'mnist' or 'fashion-mnist' for the official data sets, None for any other data."""
    import hashlib

    labels = np.concatenate([arrays["y_train"], arrays["y_test"]]).astype(np.uint8)
    if hashlib.sha256(labels.tobytes()).hexdigest() == MNIST_LABELS_SHA256:
        return "mnist"
    balanced = (len(arrays["y_train"]) == 60000 and len(arrays["y_test"]) == 10000
                and (np.bincount(arrays["y_train"], minlength=NUM_CLASSES) == 6000).all()
                and (np.bincount(arrays["y_test"], minlength=NUM_CLASSES) == 1000).all())
    if balanced and abs(arrays["x_train"].mean() / 255 - FASHION_MNIST_MEAN_PIXEL) < 0.002:
        return "fashion-mnist"
    return None


def validate_arrays(arrays, sources):
    """Check shapes, dtypes, label range and counts; name the offending file on failure."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        x_src, y_src = sources[f"x_{split}"], sources[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
            raise RunError(f"{x_src}: images are {'x'.join(map(str, x.shape[1:]))}, expected 28x28")
        if x.dtype != np.uint8:
            raise RunError(f"{x_src}: images are {x.dtype}, expected uint8")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise RunError(f"{y_src}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
        if len(x) == 0:
            raise RunError(f"{x_src}: holds no images")
        if len(x) != len(y):
            raise RunError(f"{x_src} holds {len(x)} images but {y_src} holds {len(y)} labels")
        bad = np.flatnonzero((y < 0) | (y >= NUM_CLASSES))
        if bad.size:
            raise RunError(f"{y_src}: label {int(y[bad[0]])} at index {int(bad[0])} "
                           f"is outside 0-9 ({bad.size} such labels)")


def load_dataset(dataset, data_dir):
    """Return validated uint8 arrays and a description of where they came from."""
    if data_dir is None:
        arrays, sources = download_dataset(dataset)
    else:
        arrays, sources = read_data_dir(data_dir, dataset)
    validate_arrays(arrays, sources)
    recognised = recognise_dataset(arrays)
    if recognised is not None and recognised != dataset:
        where = data_dir if data_dir is not None else sources["x_train"]
        raise UsageError(f"--dataset {dataset}: {where} holds the official "
                         f"{DATASETS[recognised]['title']} data; pass --dataset {recognised}")
    arrays["y_train"] = arrays["y_train"].astype(np.int32)
    arrays["y_test"] = arrays["y_test"].astype(np.int32)
    source = str(Path(data_dir).resolve()) if data_dir else sources["x_train"]
    return arrays, source


def check_training_size(train_count, config):
    """Refuse a batch larger than the training split (a usage error, exit 2; never clamped)."""
    kept = train_count - int(round(train_count * config.validation_split))
    if kept >= config.batch_size:
        return
    if config.batch_size > train_count:
        raise UsageError(f"--batch-size {config.batch_size} is larger than the {kept:,} training "
                         f"images (of {train_count:,}, --validation-split "
                         f"{config.validation_split:g} held out); choose at most {kept}")
    raise UsageError(f"--validation-split {config.validation_split:g} leaves {kept} of "
                     f"{train_count} training images, fewer than one batch of "
                     f"{config.batch_size}; lower --validation-split or --batch-size")


def split_and_scale(arrays, validation_split, seed):
    """Scale pixels to float32 in 0-1 and hold out a seeded random validation subset."""
    def scale(x):
        """Pixels 0-255 to float32 0-1."""
        return np.multiply(x, np.float32(1 / 255), dtype=np.float32)

    order = np.random.default_rng(seed).permutation(len(arrays["x_train"]))
    n_val = int(round(len(order) * validation_split))
    train_idx, val_idx = np.sort(order[n_val:]), np.sort(order[:n_val])
    return dict(
        x_train=scale(arrays["x_train"][train_idx]), y_train=arrays["y_train"][train_idx],
        x_val=scale(arrays["x_train"][val_idx]), y_val=arrays["y_train"][val_idx],
        x_test=scale(arrays["x_test"]), y_test=arrays["y_test"],
    )


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

def build_model(hidden, dropout=0.0, augment=None, dataset="mnist", committee=1, deskew=False,
                width_norm=False):
    """Input(28, 28) -> [distortion] -> [deskew] -> Flatten -> Dense(w, relu) [+ Dropout] ...
    -> softmax.

    With committee > 1: that many such networks side by side, each with its own initial
    weights and its own random distortions of every batch, their outputs stacked to
    (batch, committee, 10) so that each member is trained on its own loss (see
    committee_labels); inference_model averages them. With width_norm, the members' deskewing
    also brings the ink to the width MEMBER_INK_WIDTHS gives each of them, so that they see
    the digits differently and err on different ones (Meier et al. 2011).
    """
    import keras
    from keras import layers

    # The name records the dataset, so --predict can label a saved model's classes.
    name = f"{dataset.replace('-', '_')}_dense"
    if committee == 1:
        return build_network(hidden, dropout, augment, name, deskew)
    widths = [MEMBER_INK_WIDTHS[i % len(MEMBER_INK_WIDTHS)] if width_norm else None
              for i in range(committee)]
    inputs = keras.Input(shape=IMAGE_SHAPE)
    members = [build_network(hidden, dropout, augment, f"member_{i}", deskew, width)
               for i, width in enumerate(widths, start=1)]
    stacked = [layers.Reshape((1, NUM_CLASSES))(member(inputs)) for member in members]
    return keras.Model(inputs, layers.Concatenate(axis=1, name="members")(stacked), name=name)


def build_network(hidden, dropout, augment, name, deskew=False, ink_width=None):
    """One dense network as a keras.Sequential."""
    import keras
    from keras import layers

    stack = [keras.Input(shape=IMAGE_SHAPE)]
    if augment:
        # Acts only when training=True, so evaluation sees the images as they are.
        stack.append(distortion_layer_class()(**AUGMENTATIONS[augment], name="distort"))
    if deskew:
        # After the distortion, so the network always sees deskewed images, as in testing.
        stack.append(deskew_model(ink_width))
    stack.append(layers.Flatten())
    for i, width in enumerate(hidden, start=1):
        stack.append(layers.Dense(width, activation="relu", name=f"hidden_{i}"))
        if dropout > 0:
            stack.append(layers.Dropout(dropout, name=f"dropout_{i}"))
    stack.append(layers.Dense(NUM_CLASSES, activation="softmax", name="output"))
    return keras.Sequential(stack, name=name)


MAX_SKEW = 1.0  # deskewing shears by at most one pixel sideways per pixel down (45 degrees)
MAX_WIDTH_SCALE = 2.0  # width normalisation stretches or squeezes sideways by at most this
# The sideways spread (standard deviation, pixels) of the ink that width_norm gives each
# committee member in turn; None keeps the digit's own. MNIST's upright digits spread 3.5
# pixels (median; 1.0 for a "1", 4.75 for a "0").
MEMBER_INK_WIDTHS = (None, 3.0, 3.5, 4.0, 4.5)


def deskew_model(ink_width=None):
    """Moment-based deskewing (LeCun et al. 1998) as a small Keras model of Keras ops.

    Per image: the centre of mass (cy, cx) of the ink, and the skew alpha = cov(y, x) / var(y)
    of its second moments; the output pixel (y, x) reads the input at (y + cy - 14,
    x + cx - 14 + alpha (y - 14)), so that the slant is sheared upright and the centre of
    mass moved to (14, 14). With ink_width, the upright ink is also stretched or squeezed
    sideways (by at most MAX_WIDTH_SCALE) so that its horizontal standard deviation becomes
    ink_width pixels: width normalisation, as in Meier et al. (2011). Made of keras.ops only,
    no layer class of this script's, so that model.keras still loads in any Keras program
    with plain keras.models.load_model, and the deskewing goes wherever the model goes
    (--evaluate, --predict, --draw, other programs).
    """
    import keras
    from keras import ops

    height, width = IMAGE_SHAPE
    images = keras.Input(shape=IMAGE_SHAPE)
    y = np.arange(height, dtype="float32")[:, None]
    x = np.arange(width, dtype="float32")[None, :]

    def mean(values):  # the ink-weighted mean over each image, (batch,)
        return ops.sum(images * values, axis=(1, 2)) / (ops.sum(images, axis=(1, 2)) + 1e-6)

    cy, cx = mean(y), mean(x)
    dy = ops.subtract(y, ops.expand_dims(ops.expand_dims(cy, 1), 2))
    dx = ops.subtract(x, ops.expand_dims(ops.expand_dims(cx, 1), 2))
    alpha = ops.clip(mean(dy * dx) / (mean(dy * dy) + 1e-6), -MAX_SKEW, MAX_SKEW)
    one, zero = ops.ones_like(alpha), ops.zeros_like(alpha)
    shrink = one  # input pixels per output pixel, sideways
    if ink_width is not None:
        # The sideways spread of the ink once upright: var(x - alpha y).
        upright = mean(dx * dx) - 2 * alpha * mean(dy * dx) + alpha * alpha * mean(dy * dy)
        shrink = ops.clip(ops.sqrt(ops.maximum(upright, 1e-6)) / ink_width,
                          1 / MAX_WIDTH_SCALE, MAX_WIDTH_SCALE)
    # Keras' affine transform maps each output (x, y) to the input position
    # (a0 x + a1 y + a2, b0 x + b1 y + b2); the last two entries are for projective maps.
    transform = ops.stack([shrink, alpha, cx - shrink * (width / 2) - alpha * (height / 2),
                           zero, one, cy - height / 2, zero, zero], axis=1)
    deskewed = ops.image.affine_transform(ops.expand_dims(images, -1), transform,
                                          interpolation="bilinear", fill_mode="constant",
                                          data_format="channels_last")
    name = "deskew" if ink_width is None else f"deskew_width_{ink_width:g}"
    return keras.Model(images, ops.squeeze(deskewed, -1), name=name)


def committee_labels(labels, model):
    """Labels shaped for the model's output: one copy per committee member."""
    members = model.output_shape[1] if len(model.output_shape) == 3 else 1
    return labels if members == 1 else np.repeat(labels[:, None], members, axis=1)


def parameter_count(hidden, committee=1):
    """Weights and biases of build_model's network, counted without building it."""
    widths = [math.prod(IMAGE_SHAPE), *hidden, NUM_CLASSES]
    return committee * sum((a + 1) * b for a, b in zip(widths, widths[1:]))


# What training holds in memory, by this script's accounting (README, "Guard rails"): per
# weight its value, its gradient and Adam's two moments; per unit and image of a batch the
# pre-activation, the activation, the dropout mask and the gradient; the images as float32,
# twice (the arrays and Keras' copy); and the framework itself.
BYTES_PER_WEIGHT = 4 * 4
BYTES_PER_ACTIVATION = 4 * 4
FRAMEWORK_BYTES = 800 * 2 ** 20  # TensorFlow and Keras loaded, before any model: about 0.8 GB
TRAINING_IMAGES = 60000  # both data sets; an estimate made before the data is read


def training_memory(config, specs=None):
    """Estimated peak bytes of training config (each of specs' hidden layers, the largest)."""
    def estimate(hidden):
        weights = parameter_count(hidden, config.committee)
        batch = max(config.batch_size, EVAL_BATCH_SIZE)
        units = config.committee * (math.prod(IMAGE_SHAPE) + sum(hidden) + NUM_CLASSES)
        images = 2 * 4 * math.prod(IMAGE_SHAPE) * (TRAINING_IMAGES + 10000)
        return (weights * BYTES_PER_WEIGHT + batch * units * BYTES_PER_ACTIVATION + images
                + FRAMEWORK_BYTES), weights
    return max(estimate(tuple(hidden)) for hidden in (specs or [config.hidden]))


def available_memory():
    """Bytes this process can still use: the system's available memory, or a container's
    (cgroup) limit less its usage, whichever is smaller; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes",
                                    "memory/memory.usage_in_bytes")):
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            usage = Path("/sys/fs/cgroup", usage_file).read_text().strip()
            if limit.isdigit() and int(limit) < 2 ** 60:
                found.append(int(limit) - int(usage))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def check_memory(config, specs=None):
    """Refuse, before TensorFlow is even imported, a model whose training cannot fit in memory."""
    needed, weights = training_memory(config, specs)
    available = available_memory()
    if available is not None and needed > available:
        what = ("--hidden " + " ".join(map(str, config.hidden)) if not specs
                else "the largest --compare SPEC")
        raise RunError(f"{what} needs about {needed / 2 ** 30:.1f} GiB of memory to train "
                       f"({weights:,} weights, with gradients and Adam's state), but only "
                       f"{available / 2 ** 30:.1f} GiB is available; use narrower or fewer "
                       f"layers, or a smaller --committee")
    return needed, weights


def inference_model(model):
    """The trained network without its training-only distortion, a committee averaged.

    This is what model.keras holds: plain Keras layers that any Keras program can load.
    """
    import keras
    from keras import layers

    def strip(network, name):
        """A Sequential of the network's layers minus the distortion, sharing the weights."""
        kept = [layer for layer in network.layers
                if not isinstance(layer, distortion_layer_class())]
        if len(kept) == len(network.layers):
            return network  # nothing to strip: keep it whole, optimizer state included
        return keras.Sequential([keras.Input(shape=IMAGE_SHAPE), *kept], name=name)

    if isinstance(model, keras.Sequential):
        return strip(model, model.name)
    inputs = keras.Input(shape=IMAGE_SHAPE)
    members = [strip(layer, layer.name) for layer in model.layers
               if isinstance(layer, keras.Sequential)]
    average = layers.Average(name="average")([member(inputs) for member in members])
    return keras.Model(inputs, average, name=model.name)


def compile_model(model, config, steps_per_epoch):
    """Adam with the configured schedule, sparse categorical cross-entropy, accuracy."""
    import keras

    learning_rate = config.learning_rate
    if config.lr_schedule == "cosine":
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


def describe_model(model):
    """The model summary as text, as Keras prints it."""
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines)


def architecture(model):
    """The layers of a saved-style model in one line, e.g. Flatten -> Dense(512, relu) -> ..."""
    import keras

    members = [layer for layer in model.layers if isinstance(layer, keras.Sequential)]
    if members:
        # Members alike but for a stage (their ink widths): that stage's variants in braces.
        stages = zip(*(architecture(member).split(" -> ") for member in members))
        return f"average of {len(members)} x (" + " -> ".join(
            variants[0] if len(set(variants)) == 1
            else "{" + ", ".join(dict.fromkeys(variants)) + "}" for variants in stages) + ")"
    names = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            names.append(f"Dense({layer.units}, {layer.activation.__name__})")
        elif isinstance(layer, keras.layers.Dropout):
            names.append(f"Dropout({layer.rate:g})")
        elif layer.name == "deskew":
            names.append("Deskew")
        elif layer.name.startswith("deskew_width_"):
            names.append(f"Deskew+Width({layer.name.removeprefix('deskew_width_')})")
        else:
            names.append(type(layer).__name__)
    return " -> ".join(names)


# ---------------------------------------------------------------------------
# Writing files: complete or not at all
# ---------------------------------------------------------------------------

def write_atomically(path, write):
    """Call write(tmp) on a temporary file beside path, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path, text):
    """Write a text file atomically."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path, data):
    """Write JSON atomically, two-space indented."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path, columns, rows):
    """Write dict rows as CSV atomically; floats to 6 significant digits."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else f"{row[c]:.6g}" if isinstance(row[c], float)
                         else row[c] for c in columns])
    return write_text(path, buffer.getvalue())


def write_history_csv(path, rows):
    """One row per finished epoch with every metric recorded."""
    return write_csv(path, list(dict.fromkeys(key for row in rows for key in row)) or ["epoch"],
                     rows)


# Directories this process created, removed again if the run fails before writing a result.
CREATED_DIRS = []
LOCK_NAME = ".digit_classifier.lock"
HELD_LOCKS = {}  # resolved output directory -> (its open, locked lock file, whether new)


def prepare_output_dir(path, lock=False, what="run"):
    """Create the output directory, lock it for this run if asked, and prove it writable.

    All before any training starts, and before anything in the directory is touched.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"--output-dir {path}: exists and is not a directory")
    try:
        missing = [parent for parent in (path, *path.parents) if not parent.exists()]
        path.mkdir(parents=True, exist_ok=True)
        CREATED_DIRS.extend(missing)
        if lock:
            lock_output_dir(path, what)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RunError(f"--output-dir {path}: not writable ({err.strerror})") from None
    return path.resolve()


def lock_output_dir(path, what):
    """Hold an OS lock on the directory's lock file for the life of this process.

    The operating system releases it when the process ends, however it ends, so a killed run
    leaves no stale lock. A second run finds it held and stops before touching anything.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; runs are not guarded there
        return
    key = Path(path).resolve()
    if key in HELD_LOCKS:
        return
    created = not (key / LOCK_NAME).exists()
    handle = open(key / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunError(f"--output-dir {path} is in use by {holder}; wait for it to finish, "
                       f"or pass another --output-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} ({what} started "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    handle.flush()
    HELD_LOCKS[key] = (handle, created)


def release_output_dirs(failed):
    """Drop this process's locks. After a failure, take back what the run added before it
    wrote any result: a lock file it created, and the directories it created, if empty."""
    for key, (handle, created) in list(HELD_LOCKS.items()):
        if failed and created:
            (key / LOCK_NAME).unlink(missing_ok=True)
        handle.close()
        del HELD_LOCKS[key]
    if failed:
        for directory in CREATED_DIRS:  # deepest first; non-empty ones stay
            try:
                directory.rmdir()
            except OSError:
                pass
    CREATED_DIRS.clear()


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

class StopSignals:
    """Turn the first SIGINT/SIGTERM into a graceful stop request; the second exits at once."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        """Install the handlers for SIGINT and SIGTERM."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        """Restore the previous handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        """First signal: ask training to stop; second: exit now."""
        if self.received is not None:
            # Every file is written atomically, so leaving now cannot leave half a file.
            os._exit(130)
        self.received = signal.Signals(signum).name
        print(f"\n{self.received} received: stopping after this batch "
              f"(press Ctrl-C again to quit at once)", file=sys.stderr, flush=True)


class Checkpoint:
    """The last finished epoch of a run (model with optimizer state, plus history), for --resume."""

    def __init__(self, output_dir):
        self.directory = Path(output_dir) / "checkpoint"
        self.state_path = self.directory / "state.json"

    def exists(self):
        """Whether an unfinished run left a checkpoint here."""
        return self.state_path.is_file()

    def read_state(self):
        """The checkpoint's state.json as a dict."""
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError) as err:
            raise RunError(f"{self.state_path}: unreadable checkpoint ({err})") from None

    def save(self, model, epochs_done, history, config):
        """Write the model first, then the state that points at it, each atomically."""
        self.directory.mkdir(exist_ok=True)
        model_name = f"epoch-{epochs_done:04d}.keras"
        write_atomically(self.directory / model_name, lambda tmp: model.save(tmp))
        write_json(self.state_path, dict(epochs_done=epochs_done, model=model_name,
                                         history=history, config=resume_fingerprint(config)))
        for old in self.directory.glob("epoch-*.keras"):
            if old.name != model_name:
                old.unlink(missing_ok=True)

    def load(self, config):
        """Return (model, epochs_done, history) after checking the run settings match."""
        import keras

        state = self.read_state()
        saved, wanted = state.get("config", {}), resume_fingerprint(config)
        changed = ["--" + key.replace("_", "-") for key in wanted if saved.get(key) != wanted[key]]
        if changed:
            raise RunError(f"{self.directory}: checkpoint was made with different settings "
                           f"({', '.join(changed)}); "
                           f"rerun with the original flags, or delete it to start over")
        distortion_layer_class()  # registers the layer, so Keras can rebuild it
        try:
            model = keras.models.load_model(self.directory / state["model"])
        except Exception as err:
            raise RunError(f"{self.directory / state['model']}: cannot load checkpoint "
                           f"({type(err).__name__}); delete {self.directory} to start over") from None
        return model, state["epochs_done"], state["history"]

    def remove(self):
        """Delete the checkpoint once the run no longer needs it."""
        for item in self.directory.glob("*"):
            item.unlink(missing_ok=True)
        if self.directory.is_dir():
            self.directory.rmdir()


def resume_fingerprint(config):
    """The settings a checkpoint must share with the run that resumes it."""
    values = dataclasses.asdict(config)
    return {key: list(values[key]) if key == "hidden" else values[key] for key in RESUME_KEYS}


class TrainingMonitor:
    """Watches training: stop requests, non-finite loss, per-epoch history and checkpoints."""

    def __init__(self, model, signals, history=(), checkpoint=None, history_csv=None, config=None):
        self.model, self.signals = model, signals
        self.history = list(history)
        self.checkpoint, self.history_csv, self.config = checkpoint, history_csv, config
        self.epoch = len(self.history)
        self.stopped_mid_epoch = False
        self.nonfinite = None

    def on_epoch_begin(self, epoch, logs=None):
        """Remember which epoch is running."""
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        """Stop on a non-finite loss or a stop request."""
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nonfinite = (self.epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True
        elif self.signals.received:
            self.stopped_mid_epoch = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        """Record a finished epoch in the history, history.csv and the checkpoint."""
        # Keras ends an interrupted epoch like a finished one; it is not one, so skip it.
        if self.stopped_mid_epoch or self.nonfinite:
            return
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        # Keras evaluates a schedule at the current step when asked for the rate.
        row["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
        self.history.append(row)
        if self.history_csv:
            write_history_csv(self.history_csv, self.history)
        if self.checkpoint:
            self.checkpoint.save(self.model, epoch + 1, self.history, self.config)
        if self.signals.received:  # arrived during validation: the epoch itself finished
            self.model.stop_training = True

    def keras_callback(self):
        """This monitor as a Keras callback."""
        import keras

        return keras.callbacks.LambdaCallback(on_epoch_begin=self.on_epoch_begin,
                                              on_train_batch_end=self.on_train_batch_end,
                                              on_epoch_end=self.on_epoch_end)


def train(model, data, config, signals, output_dir=None, initial_epoch=0, history=(),
          callbacks=()):
    """Fit the model on the training split, validating on the held-out split."""
    import keras

    checkpoint = Checkpoint(output_dir) if output_dir else None
    monitor = TrainingMonitor(model, signals, history, checkpoint,
                              Path(output_dir) / "history.csv" if output_dir else None, config)
    callbacks = [monitor.keras_callback(), *callbacks]
    early_stopping = None
    if config.patience is not None and len(data["x_val"]):
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True,
            verbose=0)
        callbacks.append(early_stopping)
    validation = ((data["x_val"], committee_labels(data["y_val"], model))
                  if len(data["x_val"]) else None)
    start = time.perf_counter()
    model.fit(data["x_train"], committee_labels(data["y_train"], model),
              batch_size=config.batch_size,
              epochs=config.epochs, initial_epoch=initial_epoch, validation_data=validation,
              shuffle=True, callbacks=callbacks, verbose=fit_verbosity(config))
    seconds = time.perf_counter() - start
    if monitor.nonfinite:
        epoch, batch, loss = monitor.nonfinite
        if checkpoint:
            checkpoint.remove()  # resuming would diverge again; no result is pretended
        raise RunError(f"training diverged: loss became {loss} at epoch {epoch}, batch {batch}; "
                       f"try a lower --learning-rate (now {config.learning_rate:g})")
    epochs_run = len(monitor.history) - initial_epoch
    kept_epoch = len(monitor.history)
    if early_stopping is not None and early_stopping.best_weights is not None:
        # An interrupted epoch is not in the history, even if it scored best.
        kept_epoch = min(early_stopping.best_epoch + 1, kept_epoch)
    return dict(
        history=monitor.history, seconds=seconds, kept_epoch=kept_epoch,
        epochs_completed=len(monitor.history),
        interrupted=signals.received is not None,
        samples_per_second=(epochs_run * len(data["x_train"]) / seconds) if epochs_run else None,
    )


def fit_verbosity(config):
    """Keras' progress bar on a terminal, one line per epoch otherwise, nothing when quiet."""
    if config.quiet:
        return 0
    return 1 if sys.stdout.isatty() else 2


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

def evaluate(model, x_test, y_test):
    """Test loss, accuracy, confusion matrix and per-class scores from one prediction pass."""
    probabilities = model.predict(x_test, batch_size=EVAL_BATCH_SIZE, verbose=0)
    return score(probabilities, y_test)


def score(probabilities, labels):
    """Metrics from predicted class probabilities and true labels."""
    predicted = probabilities.argmax(axis=1)
    confusion = np.bincount(labels * NUM_CLASSES + predicted,
                            minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
    true_positive = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    precision = np.divide(true_positive, predicted_count, out=np.zeros(NUM_CLASSES),
                          where=predicted_count > 0)
    recall = np.divide(true_positive, support, out=np.zeros(NUM_CLASSES), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(NUM_CLASSES),
                   where=(precision + recall) > 0)
    accuracy = float(true_positive.sum() / len(labels))
    return dict(
        test_accuracy=accuracy, test_loss=negative_log_likelihood(probabilities, labels),
        error_rate=1.0 - accuracy, confusion_matrix=confusion,
        precision=precision, recall=recall, f1=f1, support=support,
        predicted=predicted, confidence=probabilities.max(axis=1), probabilities=probabilities,
    )


def top_confusions(confusion, class_names, count=5):
    """The most frequent (truth, predicted, times) off-diagonal pairs."""
    off_diagonal = confusion.copy()
    np.fill_diagonal(off_diagonal, 0)
    order = np.argsort(off_diagonal, axis=None)[::-1][:count]
    pairs = [np.unravel_index(i, confusion.shape) for i in order]
    return [(class_names[t], class_names[p], int(off_diagonal[t, p]))
            for t, p in pairs if off_diagonal[t, p] > 0]


# ---------------------------------------------------------------------------
# Trust: calibrated probabilities, and accuracy on corrupted digits
# ---------------------------------------------------------------------------

CALIBRATION_BINS = 15  # equal-width confidence bins of the expected calibration error
MIN_CONFIDENCE = 0.8  # --predict's default: calibrated top probabilities below it are "unsure"
CONFIDENCE_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # tabulated on the validation split


def networks(model):
    """The dense networks of an inference model: itself, or a committee's members."""
    import keras

    if isinstance(model, keras.Sequential):
        return [model]
    return [layer for layer in model.layers if isinstance(layer, keras.Sequential)]


def network_logits(model, images):
    """Each network's pre-softmax outputs, (networks, images, classes), in float64.

    Read from the input of the last Dense layer and its weights, so that a temperature can be
    fitted exactly without another forward pass per trial.
    """
    import keras

    logits = []
    for network in networks(model):
        body = keras.Sequential([keras.Input(shape=IMAGE_SHAPE), *network.layers[:-1]])
        features = body.predict(images, batch_size=EVAL_BATCH_SIZE, verbose=0)
        kernel, bias = network.layers[-1].get_weights()
        logits.append(features.astype(np.float64) @ kernel + bias)
    return np.stack(logits)


def softmax_average(logits, temperature=1.0):
    """What the model outputs for those logits at a temperature: the members' mean softmax."""
    scaled = logits / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=-1, keepdims=True)).mean(axis=0)


def negative_log_likelihood(probabilities, labels):
    """Mean cross-entropy of the true classes, clipped as Keras clips it (so the test loss
    matches model.evaluate())."""
    true_class_p = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1 - 1e-7)
    return float(-np.log(true_class_p).mean())


def calibration_bins(probabilities, labels, bins=CALIBRATION_BINS):
    """Per equal-width bin of top probability (lo, hi]: images, accuracy, mean confidence."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    hits = np.bincount(index, weights=correct, minlength=bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return dict(count=count, accuracy=hits / count, confidence=confidence_sum / count)


def expected_calibration_error(probabilities, labels, bins=CALIBRATION_BINS):
    """ECE (Guo et al. 2017): the bins' |accuracy - confidence| weighted by their share of images."""
    table = calibration_bins(probabilities, labels, bins)
    filled = table["count"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float((gaps * table["count"][filled]).sum() / len(labels))


def fit_temperature(logits, labels, low=0.05, high=20.0, steps=80):
    """The temperature that minimises the negative log-likelihood of labels.

    Golden-section search on log(temperature), where the likelihood has one minimum.
    """
    def loss(log_t):
        return negative_log_likelihood(softmax_average(logits, math.exp(log_t)), labels)

    ratio = (math.sqrt(5) - 1) / 2
    a, b = math.log(low), math.log(high)
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    loss_c, loss_d = loss(c), loss(d)
    for _ in range(steps):
        if loss_c < loss_d:
            b, d, loss_d = d, c, loss_c
            c = b - ratio * (b - a)
            loss_c = loss(c)
        else:
            a, c, loss_c = c, d, loss_d
            d = a + ratio * (b - a)
            loss_d = loss(d)
    return math.exp((a + b) / 2)


def apply_temperature(model, temperature):
    """Divide each network's output weights by the temperature: softmax(z / T), saved as is.

    The calibration then needs no layer of its own, so model.keras stays plain Keras and
    every program that loads it gets the calibrated probabilities.
    """
    for network in networks(model):
        output = network.layers[-1]
        output.set_weights([weight / temperature for weight in output.get_weights()])


def unsure_table(probabilities, labels, levels=CONFIDENCE_LEVELS):
    """For each --min-confidence level: the share of answers called unsure, and how often the
    sure and the unsure answers are right."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    rows = []
    for level in levels:
        unsure = confidence < level
        rows.append(dict(
            min_confidence=level, unsure_share=float(unsure.mean()),
            sure_accuracy=float(correct[~unsure].mean()) if (~unsure).any() else None,
            unsure_accuracy=float(correct[unsure].mean()) if unsure.any() else None))
    return rows


def calibration_figures(probabilities, labels):
    """ECE, NLL and the reliability bins of some probabilities, as JSON-ready values."""
    return dict(ece=expected_calibration_error(probabilities, labels),
                nll=negative_log_likelihood(probabilities, labels),
                reliability={key: [None if np.isnan(v) else float(v) for v in values]
                             for key, values in calibration_bins(probabilities, labels).items()})


def calibrate(model, data):
    """Fit a temperature on the validation split and fold it into the model.

    Returns the calibration record: the temperature, test ECE and NLL before and after, the
    reliability bins before and after, and the unsure table on the validation split. Without
    a validation split nothing is fitted (temperature 1) and the record says so.
    """
    test_logits = network_logits(model, data["x_test"])
    before = softmax_average(test_logits)
    record = dict(fitted=False, temperature=1.0, validation_size=len(data["x_val"]),
                  bins=CALIBRATION_BINS)
    after, validation = before, None
    if len(data["x_val"]):
        validation_logits = network_logits(model, data["x_val"])
        temperature = fit_temperature(validation_logits, data["y_val"])
        apply_temperature(model, temperature)
        after = softmax_average(test_logits, temperature)
        validation = softmax_average(validation_logits, temperature)
        record.update(fitted=True, temperature=temperature)
    record.update(before=calibration_figures(before, data["y_test"]),
                  after=calibration_figures(after, data["y_test"]))
    if validation is not None:
        record["validation_unsure"] = unsure_table(validation, data["y_val"])
    return record


# Corruptions of the test set (after MNIST-C, Mu and Gilmer 2019, and Morpho-MNIST's thickening
# and thinning, Castro et al. 2019), each at three severities. The random parts (noise, the
# direction of a rotation or shift, where a patch goes) come from ROBUSTNESS_SEED, so every
# model is tested on the very same images.
CORRUPTIONS = {
    "gaussian noise": ("sigma", (0.1, 0.2, 0.4)),     # added to 0-1 pixels, then clipped
    "blur": ("sigma px", (0.6, 1.0, 1.5)),            # Gaussian blur
    "rotation": ("degrees", (15, 30, 45)),            # about the centre, random sign
    "translation": ("pixels", (2, 4, 6)),             # in a random direction
    "scaling": ("factor", (1.25, 1.5, 2.0)),          # enlarged or shrunk by it, at random
    "thickening": ("element", ("2x2", "3x3 cross", "3x3")),  # grey dilation
    "thinning": ("element", ("2x2", "3x3 cross", "3x3")),    # grey erosion
    "contrast loss": ("contrast", (0.5, 0.3, 0.15)),  # (x - mean) * c + mean
    "occlusion": ("patch px", (6, 10, 14)),           # a blank square over the digit area
}
ROBUSTNESS_SEED = 2019
STRUCTURING_ELEMENTS = {
    "2x2": [(0, 0), (0, 1), (1, 0), (1, 1)],
    "3x3 cross": [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)],
    "3x3": [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
}


def shifted(images, dy, dx):
    """Images moved by whole pixels, zeros coming in."""
    out = np.zeros_like(images)
    height, width = images.shape[1:]
    out[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        images[:, max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def resample(images, angle, scale, shift_y, shift_x):
    """Rotate (radians) and scale each image about its centre, then shift it; bilinear, 0 outside.

    Every argument but images is one value per image.
    """
    count, height, width = images.shape
    y, x = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32),
                       indexing="ij")
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    column = lambda values: np.asarray(values, np.float32)[:, None, None]  # noqa: E731
    cos, sin = column(np.cos(angle) / scale), column(np.sin(angle) / scale)
    out_y = y - centre_y - column(shift_y)
    out_x = x - centre_x - column(shift_x)
    src_y = cos * out_y - sin * out_x + centre_y  # the inverse map: where each pixel reads
    src_x = sin * out_y + cos * out_x + centre_x
    y0, x0 = np.floor(src_y), np.floor(src_x)
    first_pixel = (np.arange(count) * height * width)[:, None, None]
    flat = images.reshape(-1)
    out = np.zeros_like(images)
    for yi, wy in ((y0, 1 - (src_y - y0)), (y0 + 1, src_y - y0)):
        for xi, wx in ((x0, 1 - (src_x - x0)), (x0 + 1, src_x - x0)):
            inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
            index = (np.clip(yi, 0, height - 1) * width + np.clip(xi, 0, width - 1)).astype(int)
            out += np.take(flat, first_pixel + index) * (wy * wx * inside).astype(images.dtype)
    return out


def corrupt(images, name, severity, seed=ROBUSTNESS_SEED):
    """The images under corruption `name` at severity 1, 2 or 3 (0: unchanged); deterministic."""
    return np.asarray(corrupted(images, name, severity, seed), dtype=images.dtype)


def corrupted(images, name, severity, seed):
    """corrupt's arithmetic, in whatever precision it comes out."""
    if severity == 0:
        return images
    level = CORRUPTIONS[name][1][severity - 1]
    rng = np.random.default_rng([seed, list(CORRUPTIONS).index(name), severity])
    count = len(images)
    none, ones = np.zeros(count), np.ones(count)
    if name == "gaussian noise":
        noisy = images + rng.normal(0, level, images.shape).astype(images.dtype)
        return np.clip(noisy, 0, 1)
    if name == "blur":
        radius = int(math.ceil(3 * level))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / level) ** 2)
        taps = (taps / taps.sum()).astype(images.dtype)
        out = sum(tap * shifted(images, k, 0) for k, tap in zip(range(-radius, radius + 1), taps))
        return sum(tap * shifted(out, 0, k) for k, tap in zip(range(-radius, radius + 1), taps))
    if name == "rotation":
        angle = np.radians(level) * rng.choice([-1, 1], count)
        return resample(images, angle, ones, none, none)
    if name == "translation":
        direction = rng.uniform(0, 2 * np.pi, count)
        return resample(images, none, ones, level * np.sin(direction), level * np.cos(direction))
    if name == "scaling":
        scale = np.where(rng.random(count) < 0.5, level, 1 / level)
        return resample(images, none, scale, none, none)
    if name in ("thickening", "thinning"):
        pick = np.maximum if name == "thickening" else np.minimum
        moved = [shifted(images, dy, dx) for dy, dx in STRUCTURING_ELEMENTS[level]]
        return functools.reduce(pick, moved)
    if name == "contrast loss":
        mean = images.mean(axis=(1, 2), keepdims=True)
        return (images - mean) * level + mean
    if name == "occlusion":  # the patch lies inside the 20x20 box MNIST centres its digits in
        out = images.copy()
        top = rng.integers(4, 24 - level + 1, count)
        left = rng.integers(4, 24 - level + 1, count)
        for i in range(count):
            out[i, top[i]:top[i] + level, left[i]:left[i] + level] = 0
        return out
    raise ValueError(f"unknown corruption {name!r}")


def corrupted_accuracy(model, images, labels, name, severity):
    """The model's accuracy on the images under one corruption at one severity."""
    predicted = model.predict(corrupt(images, name, severity), batch_size=EVAL_BATCH_SIZE,
                              verbose=0).argmax(axis=1)
    return float((predicted == labels).mean())


def robustness(model, x_test, y_test, clean_accuracy):
    """Test accuracy under every corruption and severity: the record's 'robustness' entry."""
    results = {}
    for name, (parameter, levels) in CORRUPTIONS.items():
        accuracy = [corrupted_accuracy(model, x_test, y_test, name, severity)
                    for severity in range(1, len(levels) + 1)]
        results[name] = dict(parameter=parameter, levels=list(levels), accuracy=accuracy)
    return dict(clean_accuracy=clean_accuracy, seed=ROBUSTNESS_SEED, corruptions=results,
                mean_accuracy=float(np.mean([a for r in results.values() for a in r["accuracy"]])))


# ---------------------------------------------------------------------------
# Reports: pictures, metrics.json, report.html, terminal summary
# ---------------------------------------------------------------------------

def pyplot():
    """Matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    """Save a figure atomically as PNG and close it."""
    plt = pyplot()
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return path


def plot_confusion_matrix(confusion, class_names, title, path, normalize=False):
    """Seaborn heatmap of the confusion matrix: counts, or each row as recall."""
    import seaborn as sns

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 7))
    if normalize:
        rows = confusion.sum(axis=1, keepdims=True)
        values = 100 * np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
        # Cells that no test image reached stay blank, and one decimal of a percent keeps a
        # single mistake in a class of a thousand visible (0.1%) where "0.00" would hide it.
        labels = np.where(confusion > 0, np.char.mod("%.1f%%", values), "")
        sns.heatmap(values, annot=labels, fmt="", cmap="Blues", vmin=0, vmax=100, ax=ax,
                    xticklabels=class_names, yticklabels=class_names,
                    cbar_kws={"label": "% of the true class"})
    else:
        sns.heatmap(confusion, annot=True, fmt="d", cmap="Blues", ax=ax,
                    xticklabels=class_names, yticklabels=class_names,
                    cbar_kws={"label": "test images"})
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Truth")
    ax.set_title(title)
    rotate_long_ticks(ax, class_names)
    fig.tight_layout()
    return save_figure(fig, path)


def rotate_long_ticks(ax, class_names):
    """Slant x tick labels that would otherwise overlap (Fashion-MNIST names)."""
    ax.tick_params(axis="y", labelrotation=0)
    if max(len(name) for name in class_names) > 3:
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")


def plot_training_curves(history, kept_epoch, dataset_title, path, config):
    """Loss and accuracy per epoch, training and validation, with the kept epoch marked."""
    # What the training figures are: Keras averages them over the epoch's batches, as the
    # model saw them, so distorted images and, for a committee, the members' mean.
    training = ("training" + (" (distorted images)" if config.augment else "")
                + (" (members' mean)" if config.committee > 1 else ""))
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    epochs = [row["epoch"] for row in history]
    for ax, metric, label in ((axes[0], "loss", "loss (cross-entropy)"),
                              (axes[1], "accuracy", "accuracy")):
        for key, name, colour in ((metric, training, "tab:blue"),
                                  (f"val_{metric}", "validation", "tab:orange")):
            if any(key in row for row in history):
                ax.plot(epochs, [row.get(key, np.nan) for row in history], marker="o",
                        markersize=3, color=colour, label=name)
        if history and kept_epoch != epochs[-1]:
            ax.axvline(kept_epoch, color="tab:green", linestyle="--",
                       label=f"kept weights (epoch {kept_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    validated = any("val_loss" in row for row in history)
    fig.suptitle(f"{dataset_title}: training {'and validation ' if validated else ''}curves")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_digit_grid(images, captions, title, path, columns=8, caption_colours=None):
    """A grid of 28x28 images, each with a caption; white digits on black as the model sees them."""
    plt = pyplot()
    rows = max(1, math.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.5, rows * 1.75 + 0.6),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
            colour = caption_colours[i] if caption_colours else "black"
            ax.set_title(captions[i], fontsize=8.5, color=colour)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


MISCLASSIFIED_SHOWN = 40  # at most this many mistakes in misclassified.png


def plot_misclassified(x_test, y_test, scores, class_names, dataset_title, path,
                       limit=MISCLASSIFIED_SHOWN):
    """The test images the model got wrong, most confident mistakes first."""
    wrong = np.flatnonzero(scores["predicted"] != y_test)
    wrong = wrong[np.argsort(-scores["confidence"][wrong], kind="stable")]
    shown = wrong[:limit]
    if len(wrong) == 0:
        title = f"{dataset_title} test set: no misclassified images"
    elif len(wrong) <= limit:
        title = f"{dataset_title} test set: all {len(wrong)} misclassified images, most confident first"
    else:
        title = (f"{dataset_title} test set: the {limit} most confident of "
                 f"{len(wrong)} misclassified images")
    captions = [f"true {class_names[y_test[i]]}\npred {class_names[scores['predicted'][i]]} "
                f"{scores['confidence'][i]:.1%}" for i in shown]
    plot_digit_grid(x_test[shown], captions, title, path, columns=8)
    return len(shown)


def plot_samples(x_train, y_train, class_names, dataset_title, path, per_class=10, seed=0):
    """A few training images of each class, one row per class labelled on the left."""
    plt = pyplot()
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(NUM_CLASSES, per_class, figsize=(per_class * 0.9 + 1.2, 10.2),
                             squeeze=False)
    for label, row in enumerate(axes):
        candidates = np.flatnonzero(y_train == label)
        picks = rng.choice(candidates, size=min(per_class, len(candidates)), replace=False)
        for ax, index in zip(row, list(picks) + [None] * (per_class - len(picks))):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
            if index is not None:
                ax.imshow(x_train[index], cmap="gray", vmin=0, vmax=1)
        row[0].set_ylabel(class_names[label], rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(f"{dataset_title} training set: {per_class} random samples per class")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_calibration(calibration, dataset_title, path):
    """Reliability diagrams before and after temperature scaling, with the images per bin."""
    plt = pyplot()
    panels = [("before", "the saved model" if calibration.get("saved_model") else "as trained")]
    if calibration["fitted"]:
        panels.append(("after", f"temperature {calibration['temperature']:.2f}"))
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 7.5), squeeze=False,
                             sharex=True, gridspec_kw=dict(height_ratios=(3, 1)))
    bins = calibration["bins"]
    centres = (np.arange(bins) + 0.5) / bins
    for column, (key, label) in enumerate(panels):
        table = calibration[key]["reliability"]
        accuracy = np.array([np.nan if a is None else a for a in table["accuracy"]])
        confidence = np.array([np.nan if c is None else c for c in table["confidence"]])
        ax, counts = axes[0, column], axes[1, column]
        ax.bar(centres, np.nan_to_num(accuracy), width=1 / bins, edgecolor="black",
               color="tab:blue", label="accuracy in the bin")
        ax.bar(centres, np.nan_to_num(confidence - accuracy), bottom=np.nan_to_num(accuracy),
               width=1 / bins, color="tab:red", alpha=0.3, edgecolor="tab:red",
               label="gap to the mean confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{label}: ECE {calibration[key]['ece']:.2%}, "
                     f"NLL {calibration[key]['nll']:.4f}")
        ax.legend(loc="upper left", fontsize=9)
        counts.bar(centres, table["count"], width=1 / bins, color="grey", edgecolor="black")
        counts.set_yscale("log")
        counts.set_ylabel("test images")
        counts.set_xlabel("top probability (confidence)")
    fitted = ("temperature fitted on the validation split" if calibration["fitted"]
              else "probabilities as saved" if calibration.get("saved_model")
              else "no calibration fitted: no validation split")
    fig.suptitle(f"{dataset_title} test set: reliability diagram, {bins} bins ({fitted})")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_robustness(robustness_record, dataset_title, path):
    """Accuracy against severity, one line per corruption, the clean accuracy marked."""
    import seaborn as sns

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 6))
    corruptions = robustness_record["corruptions"]
    colours = sns.color_palette("tab10", len(corruptions))
    markers = "osD^v<>ph"
    clean = robustness_record["clean_accuracy"]
    for (name, result), colour, marker in zip(corruptions.items(), colours, markers):
        values = [clean, *result["accuracy"]]
        ax.plot(range(len(values)), [100 * v for v in values], marker=marker, color=colour,
                label=f"{name} ({result['parameter']}: "
                      f"{', '.join(map(str, result['levels']))})")
    ax.axhline(100 * clean, color="black", linestyle="--", linewidth=1,
               label=f"clean test set ({clean:.2%})")
    ax.set_xticks(range(4), ["clean", "1", "2", "3"])
    ax.set_xlabel("severity")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8.5, loc="lower left")
    ax.set_title(f"{dataset_title} test set under corruptions: mean accuracy "
                 f"{robustness_record['mean_accuracy']:.2%} over all 27")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_corruption_examples(image, dataset_title, path):
    """One test image under every corruption and severity: what robustness.png measures."""
    images, captions = [], []
    for name in CORRUPTIONS:
        for severity in range(4):
            images.append(corrupt(image[None], name, severity)[0])
            captions.append(f"{name}\n{'clean' if severity == 0 else f'severity {severity}'}")
    return plot_digit_grid(np.stack(images), captions,
                           f"{dataset_title}: the corruptions of robustness.png, on one test image",
                           path, columns=12)


def per_class_rows(scores, class_names):
    """Per-class precision, recall, F1 and support as JSON-ready dicts."""
    return [dict(label=class_names[i], precision=float(scores["precision"][i]),
                 recall=float(scores["recall"][i]), f1=float(scores["f1"][i]),
                 support=int(scores["support"][i])) for i in range(NUM_CLASSES)]


def versions():
    """Versions of Python and the libraries that made the result."""
    import keras

    found = dict(python=platform.python_version(), keras=keras.__version__,
                 numpy=np.__version__, backend=keras.backend.backend())
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        found["tensorflow"] = tf.__version__
    else:
        import jax

        found["jax"] = jax.__version__
    return found


def headline_rows(record):
    """What a reader asks first, as (label, HTML) rows: data, model, accuracy, training, status."""
    dataset, timing = record["dataset"], record.get("timing", {})
    rows = [("data", f"{html.escape(dataset['title'])}: {dataset['train_size']:,} training, "
                     f"{dataset['validation_size']:,} validation and {dataset['test_size']:,} "
                     f"test images <small>({html.escape(str(dataset['source']))})</small>")]
    if "architecture" in record:
        rows.append(("model", f"{html.escape(record['architecture'])}; "
                              f"{record['parameters']:,} parameters"))
    if "model" in record:
        rows.append(("saved model", html.escape(record["model"])))
    if "test_accuracy" in record:
        rows.append(("test accuracy",
                     f'<b id="test-accuracy">{record["test_accuracy"]:.4%}</b> (error rate '
                     f'{record["error_rate"]:.4%}, loss {record["test_loss"]:.4f})'))
    repeats = record.get("repeats")
    if repeats:
        each = ", ".join(f"{seed}: {accuracy:.2%}"
                         for seed, accuracy in zip(repeats["seeds"], repeats["test_accuracy"]))
        rows.append((f"over {len(repeats['seeds'])} seeds",
                     f'<b id="repeats">{repeats["test_accuracy_mean"]:.4%} ± '
                     f'{repeats["test_accuracy_std"]:.4%}</b> '
                     f'(mean ± standard deviation; {each}); '
                     f'training {repeats["train_seconds_mean"]:.1f} ± '
                     f'{repeats["train_seconds_std"]:.1f} s'))
    if record.get("member_test_accuracy"):
        rows.append(("committee members", '<span id="members">' + ", ".join(
            f"{accuracy:.2%}" for accuracy in record["member_test_accuracy"])
            + "</span> on their own; the committee averages their probabilities"))
    if timing.get("train_seconds") is not None:
        speed = timing.get("samples_per_second")
        rows.append(("training", f'<span id="training">{record["epochs_completed"]} epochs in '
                                 f'{timing["train_seconds"]:.1f} s'
                                 + (f", {speed:,.0f} samples per second" if speed else "")
                                 + "</span>"))
    if record["interrupted"]:
        rows.append(("status", f"interrupted after {record['epochs_completed']} finished "
                               f"epochs; the figures describe the model as it stood"))
    return rows


def html_table(header, rows):
    """A plain HTML table from a header row and rows of already-escaped cells."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html_report(path, record, images):
    """One self-contained page rendered from the run's record: headline, tables, every image."""
    def embed(image_path):
        """An <img> tag carrying the PNG inline."""
        data = base64.b64encode(Path(image_path).read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(Path(image_path).stem)}" src="data:image/png;base64,{data}">'

    def key_values(values):
        """A two-column table of a flat dict."""
        return html_table(("setting", "value"), [(html.escape(str(k)), html.escape(str(v)))
                                                 for k, v in values.items()])

    dataset = record["dataset"]
    sections = ["<table class=\"headline\">" + "".join(
        f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in headline_rows(record))
        + "</table>"]
    if "per_class" in record:
        sections.append("<h2>Per-class scores (test set)</h2>" + html_table(
            ("class", "precision", "recall", "F1", "support"),
            [(html.escape(row["label"]), f"{row['precision']:.4f}", f"{row['recall']:.4f}",
              f"{row['f1']:.4f}", row["support"]) for row in record["per_class"]]))
    if "calibration" in record:
        sections.append("<h2>Calibration (test set)</h2>" + calibration_html(record["calibration"]))
    if "robustness" in record:
        robust = record["robustness"]
        sections.append(
            f"<h2>Robustness: test accuracy under corruptions</h2><p>Clean test set: "
            f"{robust['clean_accuracy']:.2%}; mean over the 27 corrupted sets: "
            f'<b id="robustness-mean">{robust["mean_accuracy"]:.2%}</b> (seed {robust["seed"]}; '
            f"definitions in the README, section \"Can I trust an answer?\").</p>" + html_table(
                ("corruption", "parameter", "severity 1", "severity 2", "severity 3"),
                [(html.escape(name), html.escape(result["parameter"]), *(
                    f"{accuracy:.2%} <small>({html.escape(str(level))})</small>"
                    for level, accuracy in zip(result["levels"], result["accuracy"])))
                 for name, result in robust["corruptions"].items()]))
    if "comparison" in record:
        sections.append("<h2>Architectures compared (mean ± std over seeds)</h2>" + html_table(
            ("hidden layers", "parameters", "runs", "validation accuracy", "test accuracy",
             "training seconds"),
            [(format_hidden(row["hidden"]), f"{row['parameters']:,}", row["runs"],
              percent_spread(row["val_accuracy_mean"], row["val_accuracy_std"]),
              percent_spread(row["test_accuracy_mean"], row["test_accuracy_std"]),
              f"{row['train_seconds_mean']:.1f} ± {row['train_seconds_std']:.1f}")
             for row in record["comparison"]]))
    sections.append("<h2>Figures</h2>" + "".join(
        f"<figure>{embed(p)}<figcaption>{html.escape(Path(p).name)}</figcaption></figure>"
        for p in images))
    sections.append("<h2>Settings</h2>" + key_values(record["config"]))
    if record.get("timing"):
        sections.append("<h2>Timings (seconds)</h2>" + key_values(record["timing"]))
    sections.append("<h2>Versions</h2>" + key_values(record["versions"]))
    status = " (interrupted)" if record["interrupted"] else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(dataset['title'])} dense classifier report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1250px; margin: 2em auto; padding: 0 1em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
table.headline {{ font-size: 1.15em; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
figure {{ margin: 1.5em 0; }}
</style></head><body>
<h1>{html.escape(dataset['title'])} dense classifier{status}</h1>
{"".join(sections)}
</body></html>
"""
    return write_text(path, page)


def calibration_html(calibration):
    """The calibration section of report.html: ECE and NLL before and after, the unsure table."""
    if calibration.get("saved_model"):
        rows = [("the saved model's probabilities", calibration["before"])]
        intro = "The saved model's probabilities as they are, against its test-set accuracy."
    elif calibration["fitted"]:
        rows = [("as trained", calibration["before"]),
                (f"calibrated (temperature {calibration['temperature']:.3f})",
                 calibration["after"])]
        intro = (f"Temperature scaling fitted on the {calibration['validation_size']:,} "
                 f"validation images (no test image used); model.keras holds it.")
    else:
        rows = [("as trained", calibration["before"])]
        intro = "No calibration fitted: the run had no validation split (--validation-split 0)."
    page = f"<p>{intro}</p>" + html_table(
        ("probabilities", f"ECE ({calibration['bins']} bins)", "NLL"),
        [(html.escape(label), f"{figures['ece']:.3%}", f"{figures['nll']:.4f}")
         for label, figures in rows])
    if calibration.get("validation_unsure"):
        page += ("<p>Answers below --min-confidence are marked unsure by --predict "
                 f"(default {MIN_CONFIDENCE:g}). On the validation split:</p>" + html_table(
                     ("--min-confidence", "unsure answers", "sure answers right",
                      "unsure answers right"),
                     [(f"{row['min_confidence']:g}", f"{row['unsure_share']:.2%}",
                       "n/a" if row["sure_accuracy"] is None else f"{row['sure_accuracy']:.2%}",
                       "n/a" if row["unsure_accuracy"] is None
                       else f"{row['unsure_accuracy']:.2%}")
                      for row in calibration["validation_unsure"]]))
    return page


def percent_spread(mean, std):
    """Mean ± std as percentages, or n/a."""
    return "n/a" if mean is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def draw_pictures(output_dir, data, scores, config, training, calibration=None,
                  robustness_record=None):
    """Every picture of one evaluated model; returns their paths in page order."""
    output_dir = Path(output_dir)
    class_names, title = DATASETS[config.dataset]["classes"], DATASETS[config.dataset]["title"]
    images = []
    if training and training["history"]:
        images.append(plot_training_curves(training["history"], training["kept_epoch"], title,
                                           output_dir / "training_curves.png", config))
    images.append(plot_confusion_matrix(
        scores["confusion_matrix"], class_names,
        f"{title} test set: confusion matrix (accuracy {scores['test_accuracy']:.2%})",
        output_dir / "confusion_matrix.png"))
    images.append(plot_confusion_matrix(
        scores["confusion_matrix"], class_names,
        f"{title} test set: confusion matrix normalised by true class (recall)",
        output_dir / "confusion_matrix_normalized.png", normalize=True))
    plot_misclassified(data["x_test"], data["y_test"], scores, class_names, title,
                       output_dir / "misclassified.png")
    images.append(output_dir / "misclassified.png")
    if calibration:
        images.append(plot_calibration(calibration, title, output_dir / "calibration.png"))
    if robustness_record:
        images.append(plot_robustness(robustness_record, title, output_dir / "robustness.png"))
        images.append(plot_corruption_examples(data["x_test"][0], title,
                                               output_dir / "corruptions.png"))
    images.append(plot_samples(data["x_train"], data["y_train"], class_names, title,
                               output_dir / "samples.png", seed=config.seed))
    return images


def config_record(config):
    """The run's settings as JSON-ready values."""
    record = dataclasses.asdict(config)
    record["hidden"] = list(config.hidden)
    return record


def print_summary(record, paths, quiet):
    """Test accuracy, per-class table, weakest classes, top confusions and files written."""
    if quiet:
        return
    class_names = DATASETS[record["dataset"]["name"]]["classes"]
    status = "INTERRUPTED run, " if record["interrupted"] else ""
    print(f"\n{status}test accuracy {record['test_accuracy']:.4%}  "
          f"error rate {record['error_rate']:.4%}  test loss {record['test_loss']:.4f}")
    width = max(len(name) for name in class_names)
    print(f"\n{'class':>{width}}  precision  recall     f1  support")
    for row in record["per_class"]:
        print(f"{row['label']:>{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
              f"{row['f1']:5.4f}  {row['support']:7d}")
    weakest = sorted(record["per_class"], key=lambda row: row["recall"])[:5]
    print("\nlowest recall: " + ", ".join(f"{r['label']} ({r['recall']:.2%})" for r in weakest))
    confusion = np.array(record["confusion_matrix"])
    pairs = top_confusions(confusion, class_names)
    if pairs:
        print("most frequent confusions: " + "; ".join(
            f"{truth} taken for {predicted}: {times} times" for truth, predicted, times in pairs))
    calibration, robust = record.get("calibration"), record.get("robustness")
    if calibration and calibration["fitted"]:
        print(f"calibration: temperature {calibration['temperature']:.3f} fitted on the "
              f"validation split; test ECE {calibration['before']['ece']:.3%} -> "
              f"{calibration['after']['ece']:.3%}, NLL {calibration['before']['nll']:.4f} -> "
              f"{calibration['after']['nll']:.4f}")
    elif calibration:
        what = "" if calibration.get("saved_model") else "none fitted (no validation split); "
        print(f"calibration: {what}test ECE {calibration['before']['ece']:.3%}, NLL {calibration['before']['nll']:.4f}")
    if robust:
        worst = min(((name, level, accuracy) for name, result in robust["corruptions"].items()
                     for level, accuracy in zip(result["levels"], result["accuracy"])),
                    key=lambda item: item[2])
        print(f"robustness: mean accuracy {robust['mean_accuracy']:.2%} over 27 corrupted test "
              f"sets (clean {robust['clean_accuracy']:.2%}); hardest: {worst[0]} "
              f"({worst[1]}) {worst[2]:.2%}")
    print("\nwrote:")
    for path in paths:
        print(f"  {Path(path).resolve()}")
    if record["config"].get("tensorboard"):
        print_tensorboard_command(record["config"]["output_dir"])


def tensorboard_logs(output_dir):
    """The folder --tensorboard writes under OUTPUT_DIR: one sub-folder per training run."""
    return Path(output_dir) / "tensorboard"


def print_tensorboard_command(output_dir):
    """The command that shows --tensorboard's logs."""
    print(f"\nTensorBoard logs (per-epoch scalars and the model graph): "
          f"tensorboard --logdir {shlex.quote(str(tensorboard_logs(output_dir)))}")


# ---------------------------------------------------------------------------
# Training run, end to end
# ---------------------------------------------------------------------------

class NativeStderrSilenced:
    """Point file descriptor 2 at /dev/null: TensorFlow's C++ start-up logging ignores
    TF_CPP_MIN_LOG_LEVEL (it logs before reading it) and would otherwise greet every run
    with CUDA and oneDNN notices."""

    def __enter__(self):
        """Redirect fd 2 to /dev/null."""
        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        """Give fd 2 back."""
        os.dup2(self._saved, 2)
        os.close(self._saved)


def setup_keras(config):
    """Select the backend, import Keras, seed every generator, and opt into determinism."""
    # Level 3 also hides TensorFlow's C++ "E0000 ... NodeDef mentions attribute" lines, which
    # look like errors but are not (a real failure still arrives as a Python exception).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["KERAS_BACKEND"] = config.backend
    try:
        with NativeStderrSilenced():
            import keras

            if config.backend == "tensorflow":
                import tensorflow as tf

                tf.config.list_physical_devices()  # the CUDA probe that logs on CPU machines
                tf.get_logger().setLevel("ERROR")  # e.g. retracing notices when comparing models
    except ImportError as err:
        raise RunError(f"cannot import Keras with the {config.backend} backend ({err}); "
                       f"install it with: pip install -r requirements.txt") from None
    if keras.backend.backend() != config.backend:
        raise RunError(f"Keras was already imported with the {keras.backend.backend()} backend")
    if config.backend == "tensorflow" and config.committee == 1:
        one_op_at_a_time()
    keras.utils.set_random_seed(config.seed)
    if config.deterministic and config.backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    return keras


def one_op_at_a_time():
    """On a CPU, let TensorFlow run one op at a time, each on all cores (inter-op threads 1).

    One network's ops depend on each other, so TensorFlow's default of running independent
    ops side by side mostly makes threads compete: one at a time trains the default network
    about 1.15x faster here (README, Performance). A committee's members are independent
    networks, and there running them side by side is faster, so setup_keras leaves it to
    committees. The setting can only change before TensorFlow starts; a process that already
    started (tests, a committee trained first) keeps what it has.
    """
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


def load_data_and_backend(config, training=True):
    """Read the data, import the Keras backend, split and scale; return data, its record, timing.

    Local files are read before TensorFlow is imported, so bad data fails in a blink.
    """
    timing = {}
    start = time.perf_counter()
    arrays = source = None
    if config.data_dir is not None:
        arrays, source = load_dataset(config.dataset, config.data_dir)
        if training:
            check_training_size(len(arrays["x_train"]), config)
    timing["load_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    setup_keras(config)
    timing["import_seconds"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    if arrays is None:
        arrays, source = load_dataset(config.dataset, None)
        if training:
            check_training_size(len(arrays["x_train"]), config)
    data = split_and_scale(arrays, config.validation_split, config.seed)
    timing["load_seconds"] = round(timing["load_seconds"] + time.perf_counter() - start, 3)
    dataset_info = dict(name=config.dataset, title=DATASETS[config.dataset]["title"],
                        source=source, train_size=len(data["x_train"]),
                        validation_size=len(data["x_val"]), test_size=len(data["x_test"]))
    return data, dataset_info, timing


def new_model(config, train_count):
    """A freshly built model for config, compiled with its learning-rate schedule."""
    steps_per_epoch = math.ceil(train_count / config.batch_size)
    model = build_model(config.hidden, config.dropout, config.augment, config.dataset,
                        config.committee, config.deskew, config.width_norm)
    return compile_model(model, config, steps_per_epoch)


def train_and_evaluate(config, data, signals, output_dir=None, resumed=None, callbacks=()):
    """The pipeline every mode runs: build (or resume), train, strip, calibrate, evaluate.

    Returns plain values: the training model, the inference model (what model.keras holds,
    its probabilities calibrated), the training record (history, seconds, whether
    interrupted), the calibration record and the test scores.
    """
    model, initial_epoch, history = resumed or (new_model(config, len(data["x_train"])), 0, [])
    if not config.quiet:
        print(describe_model(model))
    if config.tensorboard:
        import keras

        callbacks = [*callbacks, keras.callbacks.TensorBoard(tensorboard_dir(config))]
    training = train(model, data, config, signals, output_dir, initial_epoch, history, callbacks)
    start = time.perf_counter()
    final = inference_model(model)
    calibration = calibrate(final, data)
    scores = evaluate(final, data["x_test"], data["y_test"])
    training["evaluate_seconds"] = time.perf_counter() - start
    return dict(model=model, final=final, training=training, scores=scores,
                calibration=calibration, parameters=int(final.count_params()))


def tensorboard_dir(config):
    """Where --tensorboard logs one training run: a folder per architecture and seed."""
    return tensorboard_logs(config.output_dir) / f"{format_hidden(config.hidden)}_seed{config.seed}"


def run_figures(result, seed):
    """One run's headline figures, as repeats and comparisons tabulate them."""
    training, scores = result["training"], result["scores"]
    kept = training["history"][training["kept_epoch"] - 1] if training["history"] else {}
    return dict(seed=seed, parameters=result["parameters"], val_accuracy=kept.get("val_accuracy"),
                test_accuracy=scores["test_accuracy"], test_loss=scores["test_loss"],
                train_seconds=training["seconds"])


def train_seeds(config, data, seeds, signals):
    """The seed loop: a fresh model per seed, all on the same split; stops at an interrupt."""
    import keras

    runs = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        result = train_and_evaluate(dataclasses.replace(config, seed=seed, quiet=True), data,
                                    signals)
        if result["training"]["interrupted"]:
            break
        runs.append(run_figures(result, seed))
        say(config, f"hidden {format_hidden(config.hidden)}, seed {seed}: test accuracy "
                    f"{runs[-1]['test_accuracy']:.4%} in {runs[-1]['train_seconds']:.1f} s")
    return runs


def mean_and_std(values):
    """Mean and sample standard deviation (0 for a single value); None when nothing to average."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def spread(runs, keys):
    """The runs' seeds, and each key's values over them with mean and standard deviation."""
    summary = dict(seeds=[run["seed"] for run in runs])
    for key in keys:
        summary[key] = [run[key] for run in runs]
        summary[f"{key}_mean"], summary[f"{key}_std"] = mean_and_std(summary[key])
    return summary


def member_accuracies(final, data):
    """Each committee member's own test accuracy, to set against the committee's."""
    return [evaluate(member, data["x_test"], data["y_test"])["test_accuracy"]
            for member in networks(final)]


def build_record(config, dataset_info, scores=None, *, training=None, model=None,
                 timing=None, repeats=None, members=None, comparison=None, model_path=None,
                 calibration=None, robustness=None):
    """The run's one record, what metrics.json holds and every report is rendered from.

    Built once, when every figure is known: the test scores, the training history and
    timings, the seeds of --repeats, the committee members, an architecture comparison.
    """
    class_names = DATASETS[config.dataset]["classes"]
    history = training["history"] if training else []
    record = dict(config=config_record(config), dataset=dataset_info)
    if model is not None:
        record.update(architecture=architecture(model), parameters=int(model.count_params()))
    if scores is not None:
        errors = int(scores["confusion_matrix"].sum() - np.trace(scores["confusion_matrix"]))
        record.update(
            test_accuracy=scores["test_accuracy"], test_loss=scores["test_loss"],
            error_rate=scores["error_rate"],
            confusion_matrix=scores["confusion_matrix"].tolist(),
            per_class=per_class_rows(scores, class_names),
            misclassified_shown=min(errors, MISCLASSIFIED_SHOWN))
    if training is not None:
        record.update(
            history={key: [row.get(key) for row in history]
                     for key in dict.fromkeys(k for row in history for k in row)},
            epochs_completed=training["epochs_completed"], kept_epoch=training["kept_epoch"],
            interrupted=training["interrupted"])
    else:
        record["interrupted"] = False
    if model_path is not None:
        record["model"] = str(Path(model_path).resolve())
    if members is not None:
        record["member_test_accuracy"] = members
    if repeats is not None:
        record["repeats"] = repeats
    if comparison is not None:
        record["comparison"] = comparison
    if calibration is not None:
        record["calibration"] = calibration
    if robustness is not None:
        record["robustness"] = robustness
    record.update(timing=timing or {}, versions=versions())
    return record


def run_training(config):
    """Load data, train, evaluate, and write every report. Returns the exit status."""
    total_start = time.perf_counter()
    needed, weights = check_memory(config)
    output_dir = prepare_output_dir(config.output_dir, lock=True, what="training")
    checkpoint = Checkpoint(output_dir)
    if checkpoint.exists() and not config.resume:
        done = checkpoint.read_state().get("epochs_done", "?")
        raise RunError(f"{checkpoint.directory} holds an unfinished run ({done} of its epochs "
                       f"done); pass --resume to continue it, or delete it to start over")
    data, dataset_info, timing = load_data_and_backend(config)
    resumed = None
    if config.resume and checkpoint.exists():
        resumed = checkpoint.load(config)
        say(config, f"resuming from {checkpoint.directory}: {resumed[1]} of "
                    f"{config.epochs} epochs done")
    elif config.resume:
        say(config, f"no checkpoint in {checkpoint.directory}; starting from scratch")
    if resumed is None:
        say(config, f"building the model: {weights:,} weights, about {needed / 2 ** 30:.1f} GiB "
                    f"of memory to train")

    with StopSignals() as signals:
        result = train_and_evaluate(config, data, signals, output_dir, resumed)
    training, final, scores = result["training"], result["final"], result["scores"]
    calibration = result["calibration"]
    timing["train_seconds"] = round(training["seconds"], 3)
    timing["samples_per_second"] = (round(training["samples_per_second"], 1)
                                    if training["samples_per_second"] else None)
    timing["evaluate_seconds"] = round(training["evaluate_seconds"], 3)
    if training["interrupted"]:
        say(config, f"interrupted by {signals.received} during epoch "
                    f"{training['epochs_completed'] + 1} of {config.epochs} "
                    f"({training['epochs_completed']} finished); evaluated the model as it stands")

    # From here on a second Ctrl-C exits at once; every file below is written atomically.
    with StopSignals():
        start = time.perf_counter()
        write_atomically(output_dir / "model.keras", lambda tmp: final.save(tmp))
        timing["save_seconds"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        robust = robustness(final, data["x_test"], data["y_test"], scores["test_accuracy"])
        timing["robustness_seconds"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        images = draw_pictures(output_dir, data, scores, config, training, calibration, robust)
        timing["report_seconds"] = round(time.perf_counter() - start, 3)
    members = member_accuracies(final, data) if config.committee > 1 else None
    if members:
        say(config, "committee members' test accuracy: " + ", ".join(
            f"{accuracy:.2%}" for accuracy in members))
    repeats = None
    if config.repeats > 1 and not training["interrupted"]:
        repeats = run_repeats(config, data, run_figures(result, config.seed))
    with StopSignals():
        timing["total_seconds"] = round(time.perf_counter() - total_start, 3)
        record = build_record(config, dataset_info, scores, training=training, model=final,
                              timing=timing, repeats=repeats, members=members,
                              calibration=calibration, robustness=robust)
        written = [*images, write_html_report(output_dir / "report.html", record, images),
                   write_json(output_dir / "metrics.json", record)]
        if not training["interrupted"]:
            checkpoint.remove()
    written += [output_dir / "model.keras"]
    written += [output_dir / "history.csv"] if training["history"] else []
    print_summary(record, written, config.quiet)
    if training["interrupted"]:
        print(f"interrupted: reports describe the model after {training['epochs_completed']} "
              f"epochs; rerun with --resume to finish training", file=sys.stderr)
        return 130
    return 0


def run_repeats(config, data, first_run):
    """Train the same configuration with seeds seed+1 ... and summarise all runs."""
    with StopSignals() as signals:
        runs = [first_run] + train_seeds(config, data,
                                         range(config.seed + 1, config.seed + config.repeats),
                                         signals)
    summary = spread(runs, ("test_accuracy", "test_loss", "train_seconds"))
    say(config, f"test accuracy over {len(runs)} seeds: {summary['test_accuracy_mean']:.4%} "
                f"± {summary['test_accuracy_std']:.4%} (mean ± standard deviation)")
    return summary


def say(config, message):
    """Print a progress message unless --quiet."""
    if not config.quiet:
        print(message, flush=True)


# ---------------------------------------------------------------------------
# Distortion of training images: --augment
# ---------------------------------------------------------------------------

@functools.cache
def distortion_layer_class():
    """RandomDistortion, defined on first use so that Keras is only imported when needed."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="digit_classifier")
    class RandomDistortion(keras.layers.Layer):
        """Random affine and elastic distortion of (batch, height, width) images, training only.

        One bilinear resampling per image: each output pixel reads the input at its own
        position rotated (+-rotation degrees), scaled (1 +- zoom, x and y independently),
        shifted (+-shift pixels) and, when elastic > 0, displaced by a random field smoothed
        with a Gaussian of sigma pixels and scaled by elastic (Simard et al., 2003). Pixels
        read from outside the image are 0. Outside training the layer passes images through.
        Keras' own RandomElasticTransform is not used: it draws the x and y fields from one
        seed, so every displacement points along the diagonal, and it loops over the batch in
        Python.
        """

        def __init__(self, rotation=0.0, zoom=0.0, shift=0.0, elastic=0.0, sigma=4.0,
                     seed=None, **kwargs):
            super().__init__(**kwargs)
            self.rotation, self.zoom, self.shift = rotation, zoom, shift
            self.elastic, self.sigma, self.seed = elastic, sigma, seed
            self.seed_generator = keras.random.SeedGenerator(seed)

        def get_config(self):
            return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom,
                    "shift": self.shift, "elastic": self.elastic, "sigma": self.sigma,
                    "seed": self.seed}

        def uniform(self, shape, limit):
            return keras.random.uniform(shape, -limit, limit, seed=self.seed_generator)

        def smoothed_noise(self, batch, height, width):
            """Uniform noise in -1..1 per pixel and axis, blurred by a Gaussian: (batch, 2, h, w).

            The blur is two small matrix products (rows, then columns) with the banded matrix
            of the Gaussian's taps: the same numbers as a separable convolution with zero
            padding, several times faster on a CPU.
            """
            noise = self.uniform((batch, 2, height, width), 1.0)
            return ops.matmul(ops.matmul(gaussian_matrix(height, self.sigma), noise),
                              gaussian_matrix(width, self.sigma).T)

        def affine_maps(self, batch, height, width):
            """Per image, where output pixel (y, x) reads: y = a_yx x + a_yy y + b_y, etc.

            Returns the six coefficients (a_xx, a_xy, b_x, a_yx, a_yy, b_y), each (batch, 1, 1),
            of a random rotation and scaling about the centre followed by a random shift.
            """
            angle = self.uniform((batch, 1, 1), math.radians(self.rotation))
            scale_y = 1.0 + self.uniform((batch, 1, 1), self.zoom)
            scale_x = 1.0 + self.uniform((batch, 1, 1), self.zoom)
            shift_y = self.uniform((batch, 1, 1), self.shift)
            shift_x = self.uniform((batch, 1, 1), self.shift)
            cos, sin = ops.cos(angle), ops.sin(angle)
            center_y, center_x = (height - 1) / 2, (width - 1) / 2
            a_xx, a_xy = cos * scale_x, -sin * scale_x
            a_yx, a_yy = sin * scale_y, cos * scale_y
            b_x = center_x + shift_x - a_xx * center_x - a_xy * center_y
            b_y = center_y + shift_y - a_yx * center_x - a_yy * center_y
            return a_xx, a_xy, b_x, a_yx, a_yy, b_y

        def call(self, images, training=False):
            if not training:
                return images
            batch, (height, width) = ops.shape(images)[0], images.shape[1:]
            a_xx, a_xy, b_x, a_yx, a_yy, b_y = self.affine_maps(batch, height, width)
            if self.elastic == 0:
                # The backend's own affine resampler (one native op on TensorFlow) is several
                # times faster than sampling through index arrays, and gives the same pixels.
                transform = ops.concatenate(
                    [ops.reshape(a, (-1, 1)) for a in (a_xx, a_xy, b_x, a_yx, a_yy, b_y)]
                    + [ops.zeros((batch, 2), dtype=a_xx.dtype)], axis=1)
                return ops.image.affine_transform(
                    images[..., None], transform, interpolation="bilinear",
                    fill_mode="constant", fill_value=0, data_format="channels_last")[..., 0]
            y, x = np.meshgrid(np.arange(height, dtype="float32"),
                               np.arange(width, dtype="float32"), indexing="ij")
            field = self.elastic * self.smoothed_noise(batch, height, width)
            src_y = a_yx * x + a_yy * y + b_y + field[:, 0]
            src_x = a_xx * x + a_xy * y + b_x + field[:, 1]
            return self.bilinear(images, src_y, src_x)

        @staticmethod
        def bilinear(images, src_y, src_x):
            """Sample images at fractional (src_y, src_x), 0 outside; all (batch, h, w).

            The images are padded with zeros (one row and column before, two after) and the
            positions clipped to that border, so that each output pixel reads its four
            neighbours by plain index arithmetic from one flat array, with no test of which
            of them lie inside: four gathers in all.
            """
            height, width = images.shape[1:]
            src_y = ops.clip(ops.cast(src_y, images.dtype), -1.0, float(height))
            src_x = ops.clip(ops.cast(src_x, images.dtype), -1.0, float(width))
            y0, x0 = ops.floor(src_y), ops.floor(src_x)
            dy, dx = src_y - y0, src_x - x0
            stride = width + 3
            padded = ops.reshape(ops.pad(images, ((0, 0), (1, 2), (1, 2))), (-1,))
            image_start = ops.arange(ops.shape(images)[0], dtype="int32") * (height + 3) * stride
            corner = (ops.cast((y0 + 1.0) * stride + (x0 + 1.0), "int32")
                      + image_start[:, None, None])
            top = ops.take(padded, corner) * (1.0 - dx) + ops.take(padded, corner + 1) * dx
            bottom = (ops.take(padded, corner + stride) * (1.0 - dx)
                      + ops.take(padded, corner + stride + 1) * dx)
            return top * (1.0 - dy) + bottom * dy

        def compute_output_shape(self, input_shape):
            return input_shape

    return RandomDistortion


def gaussian_matrix(size, sigma):
    """The (size, size) matrix that blurs a vector by a Gaussian of sigma, zeros beyond its ends.

    Row i holds the taps of a kernel truncated at 3 sigma, centred on i, so that
    matrix @ v is the 'same'-padded convolution of v with that kernel.
    """
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offset = np.arange(size)[None, :] - np.arange(size)[:, None]
    inside = np.abs(offset) <= radius
    return np.where(inside, taps[np.clip(offset + radius, 0, 2 * radius)], 0.0).astype("float32")


# Distortions for --augment: "affine" shifts, rotates and scales; "elastic" adds Simard's
# elastic field on top (alpha 34, sigma 4 pixels, as in Simard et al. 2003).
AFFINE = dict(rotation=10.0, zoom=0.1, shift=2.0)
AUGMENTATIONS = {"affine": AFFINE, "elastic": dict(AFFINE, elastic=34.0, sigma=4.0)}


# ---------------------------------------------------------------------------
# Saved models: --evaluate and --predict
# ---------------------------------------------------------------------------

MNIST_CENTRE_OF_MASS = 14.0  # where MNIST's digits have their centre of mass, in pixel indices
INK_THRESHOLD = 0.25  # fraction of the strongest ink below which a pixel counts as background
MIN_INK_CONTRAST = 0.12  # weaker contrast than this between ink and paper means a blank image


def train_first(config, model_path):
    """What to run to make the missing model, with the user's own data and output flags."""
    output_dir = str(Path(model_path).parent)
    return "train one first: " + suggested_command(
        dataclasses.replace(config, output_dir=output_dir))


def require_model_file(path, config):
    """Fail before any slow import when the saved model is not there."""
    if not Path(path).is_file():
        raise RunError(f"{path}: no saved model there; {train_first(config, path)}")


def load_saved_model(path, config):
    """Load a model this script saved, checking it takes 28x28 images and gives 10 classes."""
    path = Path(path)
    require_model_file(path, config)
    import keras

    try:
        model = keras.models.load_model(path)
    except Exception as err:  # Keras raises many types for files that are not its models
        raise RunError(f"{path}: not a loadable Keras model ({type(err).__name__}); "
                       f"{train_first(config, path)}") from None
    input_shape, output_shape = tuple(model.input_shape[1:]), tuple(model.output_shape[1:])
    if input_shape != IMAGE_SHAPE or output_shape != (NUM_CLASSES,):
        raise RunError(f"{path}: model maps {input_shape} to {output_shape}, not 28x28 images "
                       f"to 10 classes; {train_first(config, path)}")
    return model


def saved_record(model_path):
    """The record (metrics.json beside it) of the run that saved model_path, or None."""
    try:
        return json.loads((Path(model_path).parent / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def recorded_data(model_path):
    """The dataset and data directory of the run that saved model_path, or None when there
    is no readable record."""
    record = saved_record(model_path)
    try:
        dataset, data_dir = record["config"]["dataset"], record["config"]["data_dir"]
        if dataset not in DATASETS:
            return None
        if data_dir is not None:
            data_dir = record["dataset"]["source"]  # resolved when the run read it
        return dict(dataset=dataset, data_dir=data_dir)
    except (KeyError, TypeError):
        return None


def model_dataset(model):
    """The dataset a model was trained on, recorded in its name by build_model."""
    for name in DATASETS:
        if model.name == f"{name.replace('-', '_')}_dense":
            return name
    return "mnist"


def run_evaluation(config, model_path):
    """Evaluate a saved model on the test set and write the same reports as training."""
    total_start = time.perf_counter()
    require_model_file(model_path, config)
    output_dir = prepare_output_dir(config.output_dir, lock=True, what="evaluation")
    data, dataset_info, timing = load_data_and_backend(config, training=False)
    model = load_saved_model(model_path, config)
    trained_on = model_dataset(model)
    if trained_on != config.dataset:
        raise RunError(f"{model_path}: trained on {trained_on}; pass --dataset {trained_on}")
    start = time.perf_counter()
    scores = evaluate(model, data["x_test"], data["y_test"])
    timing["evaluate_seconds"] = round(time.perf_counter() - start, 3)
    # The saved model's probabilities as they are (calibrated when training fitted a
    # temperature): how well they match its accuracy on this test set.
    calibration = dict(saved_model=True, fitted=False, bins=CALIBRATION_BINS,
                       before=calibration_figures(scores["probabilities"], data["y_test"]))
    start = time.perf_counter()
    robust = robustness(model, data["x_test"], data["y_test"], scores["test_accuracy"])
    timing["robustness_seconds"] = round(time.perf_counter() - start, 3)
    with StopSignals():
        start = time.perf_counter()
        images = draw_pictures(output_dir, data, scores, config, None, calibration, robust)
        timing["report_seconds"] = round(time.perf_counter() - start, 3)
        timing["total_seconds"] = round(time.perf_counter() - total_start, 3)
        record = build_record(config, dataset_info, scores, model=model, timing=timing,
                              model_path=model_path, calibration=calibration,
                              robustness=robust)
        written = [*images, write_html_report(output_dir / "report.html", record, images),
                   write_json(output_dir / "metrics.json", record)]
    print_summary(record, written, config.quiet)
    return 0


class ImageError(Exception):
    """An image that cannot be classified: missing, unreadable or blank."""


class BlankImageError(ImageError):
    """An image with no ink on it."""


def read_image(path):
    """Open an image file as a float grayscale array in 0-1, flattening any transparency."""
    path = Path(path)
    if not path.exists():
        raise ImageError("no such file")
    if path.is_dir():
        raise ImageError("is a folder, not an image" if visible_entries(path)
                         else "is a folder with no files in it")
    if path.stat().st_size == 0:
        raise ImageError("file is empty")
    return decode_image(path)


def decode_image(source, max_pixels=None):
    """Decode an image (a path or a binary file object) to grayscale floats in 0-1."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(source) as opened:
            if max_pixels and opened.width * opened.height > max_pixels:
                raise ImageError(f"image is {opened.width}x{opened.height} pixels, more than "
                                 f"{max_pixels:,} in all")
            image = ImageOps.exif_transpose(opened)
            image.load()
    except UnidentifiedImageError:
        raise ImageError("not an image file Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"unreadable image ({err})") from None
    if "A" in image.getbands() or "transparency" in image.info:
        image = flatten_transparency(image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255


def flatten_transparency(rgba):
    """Composite onto the background that contrasts with the opaque pixels (the ink)."""
    from PIL import Image

    pixels = np.asarray(rgba)
    alpha = pixels[..., 3]
    opaque = alpha > 127
    if opaque.all() or not opaque.any():
        return rgba.convert("RGB")
    ink_luminance = np.asarray(rgba.convert("L"))[opaque].mean()
    background = (255, 255, 255) if ink_luminance < 128 else (0, 0, 0)
    canvas = Image.new("RGBA", rgba.size, background + (255,))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def to_mnist_format(gray):
    """Make any photo or scan of one digit look like MNIST: white ink on black, 20x20 in 28x28.

    The background is the median of the image border; light backgrounds are inverted. The
    ink is cropped, scaled to fit a 20x20 box keeping its aspect ratio, and placed so that
    its centre of mass lies where MNIST's does.
    """
    from PIL import Image

    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    ink = (background - gray) if background > 0.5 else (gray - background)
    ink = np.clip(ink, 0, None)
    strongest = float(ink.max()) if ink.size else 0.0
    if strongest < MIN_INK_CONTRAST:
        raise BlankImageError("no ink found: the image looks blank")
    ink /= strongest
    ink[ink < INK_THRESHOLD] = 0  # paper texture and JPEG noise
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    height, width = ink.shape
    scale = 20 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    patch = Image.fromarray(np.uint8(np.round(ink * 255))).resize(size, Image.LANCZOS)
    patch = np.asarray(patch, dtype=np.float32) / 255
    patch /= max(float(patch.max()), 1e-6)
    ys, xs = np.indices(patch.shape)
    mass = patch.sum()
    top = int(round(MNIST_CENTRE_OF_MASS - (ys * patch).sum() / mass))
    left = int(round(MNIST_CENTRE_OF_MASS - (xs * patch).sum() / mass))
    top = min(max(top, 0), IMAGE_SHAPE[0] - patch.shape[0])
    left = min(max(left, 0), IMAGE_SHAPE[1] - patch.shape[1])
    field = np.zeros(IMAGE_SHAPE, dtype=np.float32)
    field[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
    return field


PREDICT_CHUNK = 512  # images read and classified at a time, so memory stays bounded
PREDICTIONS_SHOWN = 48  # at most this many images in predictions.png
PREDICTION_COLUMNS = ("file", "prediction", "probability", "second", "second_probability",
                      "third", "third_probability", "unsure")


def visible_entries(folder):
    """What a folder holds, sorted by name, hidden files (a leading dot) left out."""
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def image_sources(paths):
    """(path, named) for each file named and for each file in each folder named;
    named is False for a folder's files."""
    for path in map(Path, paths):
        entries = visible_entries(path) if path.is_dir() else []
        if entries:
            yield from ((entry, False) for entry in entries)
        else:  # a file, or a folder with nothing in it (reported as an error)
            yield path, True


def prepared_images(sources, problems):
    """(path, 28x28 image) for each source that is an image; the others are reported on
    stderr (an error for a file named, "skipped" for a folder's) and listed in problems."""
    for path, named in sources:
        try:
            yield path, to_mnist_format(read_image(path))
        except ImageError as err:
            print(f"{'error' if named else 'skipped'}: {path}: {err}", file=sys.stderr)
            problems.append((path, named))


def classify(model, images, chunk=PREDICT_CHUNK):
    """(path, image, probabilities) for each (path, image), predicted chunk images at a time."""
    images = iter(images)
    while batch := list(itertools.islice(images, chunk)):
        probabilities = model.predict(np.stack([image for _, image in batch]),
                                      batch_size=EVAL_BATCH_SIZE, verbose=0)
        for (path, image), p in zip(batch, probabilities):
            yield path, image, p


def answer(probabilities, class_names, min_confidence):
    """The prediction, its probability, whether it is unsure, and the next two candidates."""
    ranked = np.argsort(-probabilities)[:3]
    best = ranked[0]
    return dict(prediction=class_names[best], probability=float(probabilities[best]),
                unsure=bool(probabilities[best] < min_confidence),
                candidates=[dict(label=class_names[i], probability=float(probabilities[i]))
                            for i in ranked[1:]])


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
            what = (f"{len(picked)} of {self.total:,} images, the unsure first" if self.unsure
                    else f"the first {len(picked)} of {self.total:,} images")
        unsure_orders = {order for order, _, _ in self.unsure}
        return (np.stack([image for _, image, _ in picked]), [c for _, _, c in picked],
                ["tab:red" if order in unsure_orders else "black" for order, _, _ in picked],
                what)


def run_prediction(config, model_path, image_paths, as_json, min_confidence=MIN_CONFIDENCE):
    """Classify image files and folders of them with a saved model: a line each on stdout,
    every answer in predictions.csv and a readable subset in predictions.png.

    Images are read and classified PREDICT_CHUNK at a time, so thousands take little memory.
    An answer whose (calibrated) top probability is below min_confidence is marked unsure.
    """
    require_model_file(model_path, config)
    output_dir = prepare_output_dir(config.output_dir)
    setup_keras(config)
    model = load_saved_model(model_path, config)
    class_names = DATASETS[model_dataset(model)]["classes"]
    problems, shown = [], ShownImages()
    unsure_count = 0

    def write_predictions(tmp):
        """Classify everything, printing each answer and writing its CSV row."""
        nonlocal unsure_count
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(PREDICTION_COLUMNS)
            for path, image, p in classify(model, prepared_images(image_sources(image_paths),
                                                                  problems)):
                result = answer(p, class_names, min_confidence)
                unsure_count += result["unsure"]
                second, third = result["candidates"]
                writer.writerow([path, result["prediction"], f"{result['probability']:.6f}",
                                 second["label"], f"{second['probability']:.6f}",
                                 third["label"], f"{third['probability']:.6f}",
                                 int(result["unsure"])])
                if as_json:
                    print(json.dumps(dict(file=str(path), **result)))
                else:
                    others = ", ".join(f"{c['label']} ({c['probability']:.1%})"
                                       for c in result["candidates"])
                    print(f"{path}: {result['prediction']} ({result['probability']:.1%})"
                          f"{'  UNSURE' if result['unsure'] else ''}  next: {others}")
                name = path.name if len(path.name) <= 20 else f"{path.name[:9]}…{path.name[-9:]}"
                shown.offer(image, f"{name}\n{result['prediction']} ({result['probability']:.0%})"
                            + (" unsure" if result["unsure"] else ""), result["unsure"])
        if not shown.total:
            raise RunError("no image to classify" + (
                f": none of the {len(problems)} files could be read" if problems else ""))

    write_atomically(output_dir / "predictions.csv", write_predictions)
    images, captions, colours, how_many = shown.chosen()
    plot_digit_grid(images, captions,
                    f"{how_many.capitalize() + ' ' if how_many else 'Your images '}as the model "
                    f"saw them, with its prediction (unsure, in red: below {min_confidence:.0%})",
                    output_dir / "predictions.png",
                    columns=min(8 if len(images) > 12 else 6, len(images)),
                    caption_colours=colours)
    if not as_json and not config.quiet:
        skipped = sum(not named for _, named in problems)
        print(f"classified {shown.total:,} images ({unsure_count:,} unsure)"
              + (f"; skipped {skipped:,} files that are not images" if skipped else ""))
        print(f"wrote {output_dir / 'predictions.csv'}\nwrote {output_dir / 'predictions.png'}")
    return 1 if any(named for _, named in problems) else 0


# ---------------------------------------------------------------------------
# Drawing in the browser: --draw
# ---------------------------------------------------------------------------

DRAW_PORT = 2828  # --draw's default port: 28 x 28, away from the ports dev servers take
DRAWING_MAX_BYTES = 1_000_000  # larger request bodies are refused unread (413)
DRAWING_MAX_PIXELS = 2048 * 2048  # larger images are refused before they are decoded


def open_drawing_server(port):
    """A threading HTTP server listening on 127.0.0.1 only; a taken port is a one-line error."""
    import http.server

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True  # a stalled client never holds up Ctrl-C

        def handle_error(self, request, client_address):
            """A client that hung up mid-reply is no error of ours; anything else is one line,
            not socketserver's traceback, and the server goes on serving."""
            error = sys.exc_info()[1]
            if not isinstance(error, (ConnectionError, TimeoutError)):
                print(f"error: request from {client_address[0]}: {type(error).__name__}: "
                      f"{error}", file=sys.stderr)

    try:
        return Server(("127.0.0.1", port), http.server.BaseHTTPRequestHandler)
    except OSError as err:
        reason = ("is already in use" if err.errno == errno.EADDRINUSE
                  else f"cannot be opened ({err.strerror})")
        raise RunError(f"port {port} on 127.0.0.1 {reason}; choose another with --port") from None


def drawing_classifier(model, class_names, min_confidence):
    """A function from a drawing's image bytes to (HTTP status, JSON-ready answer)."""
    lock = threading.Lock()  # one prediction at a time; requests arrive on many threads

    def classify_drawing(body):
        """The model's answer, with the 28x28 image it saw; blank drawings and non-images
        get a 4xx and say why."""
        try:
            image = to_mnist_format(decode_image(io.BytesIO(body), DRAWING_MAX_PIXELS))
        except BlankImageError as err:
            return 422, dict(blank=True, error=f"blank drawing: {err}")
        except ImageError as err:
            return 415, dict(blank=False, error=str(err))
        with lock:
            probabilities = np.asarray(model.predict_on_batch(image[None]))[0]
        result = answer(probabilities, class_names, min_confidence)
        return 200, dict(
            blank=False, **result, min_confidence=min_confidence,
            top=[dict(label=result["prediction"], probability=result["probability"]),
                 *result["candidates"]],
            pixels=np.round(image * 255).astype(int).ravel().tolist())

    return classify_drawing


def drawing_handler(page, classify_drawing):
    """The request handler: the page at /, drawings POSTed to /predict, 4xx for the rest."""
    import http.server
    from urllib.parse import urlsplit

    class DrawingHandler(http.server.BaseHTTPRequestHandler):
        server_version = "digit_classifier"
        sys_version = ""
        default_request_version = "HTTP/1.0"  # so even a garbled request gets a status line
        timeout = 15  # seconds a client may take over its request

        def do_GET(self):
            """The page; nothing else is served."""
            path = urlsplit(self.path).path
            if path == "/":
                self.reply(200, page, "text/html; charset=utf-8")
            elif path == "/predict":
                self.refuse(405, "send a drawing with POST", allow="POST")
            else:
                self.refuse(404, "not found: the page is at /")

        do_HEAD = do_GET

        def do_POST(self):
            """Classify the PNG (or any image) in the request body."""
            path = urlsplit(self.path).path
            if path != "/predict":
                return (self.refuse(405, "POST drawings to /predict", allow="GET, HEAD")
                        if path == "/" else self.refuse(404, "not found: POST to /predict"))
            length = self.headers.get("Content-Length")
            if length is None:
                return self.refuse(411, "a Content-Length header is required")
            if not length.isdigit():
                return self.refuse(400, f"bad Content-Length {length!r}")
            length = int(length)
            if length > DRAWING_MAX_BYTES:
                self.close_connection = True  # the body is never read
                return self.refuse(413, f"a drawing is at most {DRAWING_MAX_BYTES:,} bytes")
            body = self.rfile.read(length)
            if len(body) < length:
                return self.refuse(400, "the body is shorter than its Content-Length")
            status, result = classify_drawing(body)
            self.reply(status, json.dumps(result).encode(), "application/json")

        def __getattr__(self, name):
            """Any other method (PUT, DELETE, ...) is answered 405, not 501."""
            if name.startswith("do_"):
                return lambda: self.refuse(405, f"{self.command} is not allowed here",
                                           allow="GET, HEAD, POST")
            raise AttributeError(name)

        def refuse(self, status, message, allow=None):
            """A 4xx with a JSON body that says why."""
            self.reply(status, json.dumps(dict(error=message)).encode(), "application/json",
                       allow)

        def reply(self, status, payload, content_type, allow=None):
            """Send a complete response; the page may load nothing from anywhere else."""
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", "default-src 'none'; connect-src 'self'; "
                             "img-src data:; script-src 'unsafe-inline'; "
                             "style-src 'unsafe-inline'")
            if allow:
                self.send_header("Allow", allow)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def log_message(self, format, *args):
            """Silent: the page sends a request per stroke, which would flood the terminal."""

    return DrawingHandler


def drawing_page(model_path, min_confidence):
    """The page, with what is known about the model filled in at the foot."""
    facts = [f"model: {model_path}"]
    record = saved_record(model_path)
    try:
        facts.append(f"test accuracy {record['test_accuracy']:.2%} on "
                     f"{record['dataset']['title']}")
        calibration = record.get("calibration") or {}
        facts.append(f"probabilities calibrated (temperature {calibration['temperature']:.3f})"
                     if calibration.get("fitted") else "probabilities not calibrated")
    except (KeyError, TypeError):  # no record, or not one this script wrote
        pass
    facts.append(f"answers below {min_confidence:.0%} are marked unsure")
    return DRAW_PAGE.replace("{{facts}}", html.escape(" · ".join(facts))).encode()


def run_draw(config, model_path, port, min_confidence):
    """Serve the drawing page on 127.0.0.1 until Ctrl-C (or SIGTERM); returns 0 then."""
    require_model_file(model_path, config)
    server = open_drawing_server(port)  # a taken port fails here, before the slow imports
    with server:
        setup_keras(config)
        model = load_saved_model(model_path, config)
        classify_drawing = drawing_classifier(model, DATASETS[model_dataset(model)]["classes"],
                                              min_confidence)
        model.predict_on_batch(np.zeros((1, *IMAGE_SHAPE), np.float32))  # traced before serving
        server.RequestHandlerClass = drawing_handler(drawing_page(model_path, min_confidence),
                                                     classify_drawing)
        host, port = server.server_address[:2]
        print(f"draw a digit at http://{host}:{port}/  (Ctrl-C to stop)", flush=True)

        def stop(signum, frame):
            """Ctrl-C, or SIGTERM, stops the server."""
            raise KeyboardInterrupt

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, stop)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    say(config, "stopped")
    return 0


DRAW_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Draw a digit</title>
<link rel="icon" href="data:,">
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; background: #f6f6f3; }
  h1 { font-size: 1.4rem; margin: 0 0 1rem; }
  main { display: flex; flex-wrap: wrap; gap: 2rem; align-items: flex-start; }
  #pad { width: min(86vw, 336px); aspect-ratio: 1; background: #fff; border: 2px solid #999;
         border-radius: 8px; touch-action: none; cursor: crosshair; display: block; }
  button { font: inherit; padding: .35rem 1.2rem; margin-top: .6rem; }
  #status { color: #666; margin-left: .6rem; }
  #answer { min-width: 15rem; }
  #prediction { font-size: 5.5rem; font-weight: 700; line-height: 1; }
  #confidence { margin: .3rem 0 .8rem; color: #444; }
  .unsure #prediction, .unsure #confidence { color: #c0392b; }
  table { border-collapse: collapse; }
  td { padding: .15rem .4rem; }
  .bar { background: #4c72b0; height: .9rem; }
  #seen { width: 112px; height: 112px; image-rendering: pixelated; background: #000;
          border: 1px solid #999; display: block; margin-top: .3rem; }
  footer { margin-top: 1.5rem; color: #777; font-size: .85rem; }
</style>
</head>
<body>
<h1>Draw a digit, 0 to 9</h1>
<main>
  <section>
    <canvas id="pad" width="336" height="336" aria-label="drawing pad"></canvas>
    <button id="clear" type="button">Clear</button><span id="status">with mouse, pen or finger</span>
  </section>
  <section id="answer" aria-live="polite">
    <div>The model says</div>
    <div id="prediction">&ndash;</div>
    <div id="confidence">&nbsp;</div>
    <table id="top"></table>
    <div style="margin-top: 1rem">What the model saw (28&times;28)</div>
    <canvas id="seen" width="28" height="28"></canvas>
  </section>
</main>
<footer>{{facts}}</footer>
<script>
"use strict";
const pad = document.getElementById("pad"), ink = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const $ = id => document.getElementById(id);
let drawing = false, last = null, strokes = 0, cleared = 0, changed = false, busy = false;

function blankPad() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  ink.strokeStyle = ink.fillStyle = "#000";
  ink.lineWidth = 22;
  ink.lineCap = ink.lineJoin = "round";
}
function at(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width,
          (event.clientY - box.top) * pad.height / box.height];
}
function segment(from, to) {
  ink.beginPath(); ink.moveTo(...from); ink.lineTo(...to); ink.stroke();
}
pad.addEventListener("pointerdown", event => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = true; strokes++; last = at(event);
  segment(last, last);
  update();
});
pad.addEventListener("pointermove", event => {
  if (!drawing) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const each of events.length ? events : [event]) {
    const point = at(each);
    segment(last, point);
    last = point;
  }
  update();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => { if (drawing) { drawing = false; update(); } });
}

// One request in flight at a time; whatever was drawn meanwhile goes in the next.
function update() { changed = true; if (!busy) ask(); }
async function ask() {
  busy = true;
  while (changed && strokes) {
    changed = false;
    const round = cleared;
    const png = await new Promise(done => pad.toBlob(done, "image/png"));
    try {
      const response = await fetch("predict", { method: "POST", body: png,
                                                headers: { "Content-Type": "image/png" } });
      const reply = await response.json();
      if (round === cleared) show(reply);
    } catch (error) {
      $("status").textContent = "no answer from the server (" + error.message + ")";
    }
  }
  busy = false;
}
function show(reply) {
  const answer = $("answer"), rows = $("top");
  rows.replaceChildren();
  seen.fillStyle = "#000"; seen.fillRect(0, 0, 28, 28);
  answer.classList.toggle("unsure", Boolean(reply && reply.unsure));
  if (!reply || reply.error) {
    $("prediction").textContent = "\\u2013";
    $("confidence").textContent = reply ? (reply.blank ? "blank: draw a digit" : reply.error)
                                        : "\\u00a0";
    return;
  }
  $("prediction").textContent = reply.prediction;
  $("confidence").textContent = (100 * reply.probability).toFixed(1) + "% sure" +
    (reply.unsure ? " \\u2013 unsure (below " + Math.round(100 * reply.min_confidence) + "%)" : "");
  for (const candidate of reply.top) {
    const row = rows.insertRow();
    row.insertCell().textContent = candidate.label;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = Math.max(1, Math.round(160 * candidate.probability)) + "px";
    const cell = row.insertCell(); cell.style.width = "170px"; cell.append(bar);
    row.insertCell().textContent = (100 * candidate.probability).toFixed(1) + "%";
  }
  const image = seen.createImageData(28, 28);
  reply.pixels.forEach((value, i) => {
    image.data.set([value, value, value, 255], 4 * i);
  });
  seen.putImageData(image, 0, 0);
}
function clearAll() { cleared++; strokes = 0; changed = false; blankPad(); show(null); }
$("clear").addEventListener("click", clearAll);
document.addEventListener("keydown", event => {
  if (event.key === "Escape" || event.key === "Delete") clearAll();
});
blankPad();
</script>
</body>
</html>
"""


# ---------------------------------------------------------------------------
# Architecture comparison: --compare
# ---------------------------------------------------------------------------

def summarise_runs(hidden, runs):
    """Mean and spread of one architecture's runs."""
    return dict(hidden=list(hidden), parameters=runs[0]["parameters"], runs=len(runs),
                **spread(runs, ("val_accuracy", "test_accuracy", "train_seconds")))


def plot_comparison(rows, dataset_title, path):
    """Test accuracy against parameter count, one labelled point per architecture."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in rows:
        ax.errorbar(row["parameters"], 100 * row["test_accuracy_mean"],
                    yerr=100 * row["test_accuracy_std"], fmt="o", capsize=4, color="tab:blue")
        ax.annotate(format_hidden(row["hidden"]),
                    (row["parameters"], 100 * row["test_accuracy_mean"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    runs = rows[0]["runs"]
    ax.set_title(f"{dataset_title} test set: accuracy by architecture "
                 f"(mean ± std over {runs} seed{'s' if runs > 1 else ''})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def write_comparison(output_dir, rows, dataset_title):
    """comparison.csv, comparison.md and comparison.png, one row per architecture."""
    columns = ["hidden", "parameters", "runs", "val_accuracy_mean", "val_accuracy_std",
               "test_accuracy_mean", "test_accuracy_std", "train_seconds_mean",
               "train_seconds_std"]

    write_csv(output_dir / "comparison.csv", columns,
              [dict(row, hidden=format_hidden(row["hidden"])) for row in rows])

    table = ["| hidden layers | parameters | runs | validation accuracy (%) | "
             "test accuracy (%) | training seconds |", "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {format_hidden(r['hidden'])} | {r['parameters']:,} | {r['runs']} | "
              f"{percent_spread(r['val_accuracy_mean'], r['val_accuracy_std'])} | "
              f"{percent_spread(r['test_accuracy_mean'], r['test_accuracy_std'])} | "
              f"{r['train_seconds_mean']:.1f} ± {r['train_seconds_std']:.1f} |" for r in rows]
    write_text(output_dir / "comparison.md", "\n".join(table) + "\n")
    plot_comparison(rows, dataset_title, output_dir / "comparison.png")
    return table


def run_comparison(config, specs):
    """Train every architecture with the same data split and settings, repeats times each."""
    total_start = time.perf_counter()
    check_memory(config, specs)
    output_dir = prepare_output_dir(config.output_dir, lock=True, what="comparison")
    data, dataset_info, timing = load_data_and_backend(config)
    rows = []
    with StopSignals() as signals:
        for hidden in specs:
            runs = train_seeds(dataclasses.replace(config, hidden=tuple(hidden)), data,
                               range(config.seed, config.seed + config.repeats), signals)
            if runs:
                rows.append(summarise_runs(hidden, runs))
            if signals.received:
                break
    if not rows:
        print("interrupted before any architecture finished; nothing written", file=sys.stderr)
        return 130
    with StopSignals():
        table = write_comparison(output_dir, rows, DATASETS[config.dataset]["title"])
        timing["total_seconds"] = round(time.perf_counter() - total_start, 3)
        record = build_record(config, dataset_info, timing=timing, comparison=rows)
        record["interrupted"] = signals.received is not None
        write_json(output_dir / "comparison.json", record)
        write_html_report(output_dir / "report.html", record, [output_dir / "comparison.png"])
    if not config.quiet:
        print("\n" + "\n".join(table))
        print(f"\nwrote {output_dir / 'comparison.csv'}, comparison.md, comparison.png, "
              f"comparison.json, report.html")
        if config.tensorboard:
            print_tensorboard_command(config.output_dir)
    if signals.received:
        print("interrupted: the comparison holds the architectures finished so far",
              file=sys.stderr)
        return 130
    return 0


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are a single line on stderr (exit 2)."""

    def error(self, message):
        """Print one line and exit 2."""
        # Escape control characters a user's argument may carry, so the error stays one line.
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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


def hidden_spec(text):
    """Comma-separated hidden widths such as '512,256', or 'none' for no hidden layer."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(positive_int(part) for part in text.split(","))
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"bad architecture {text!r}: {err}") from None


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
    mode.add_argument("--evaluate", action="store_true",
                      help="evaluate a saved model on the test set and write its reports "
                           "in OUTPUT_DIR/evaluation")
    mode.add_argument("--compare", nargs="+", metavar="SPEC", type=hidden_spec,
                      help="train one network per SPEC of comma-separated hidden widths "
                           "(e.g. 100 100,100 512,256; 'none' for no hidden layer) and compare")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(DATASETS),
                      help=f"which dataset (default: {d.dataset})")
    data.add_argument("--data-dir", metavar="DIR",
                      help="read the four IDX files (plain or .gz) or an mnist.npz from DIR "
                           "instead of downloading (default: Keras' download and cache)")
    data.add_argument("--validation-split", type=fraction, metavar="FRACTION",
                      help=f"fraction of the training set held out for validation "
                           f"(default: {d.validation_split})")

    model = parser.add_argument_group("model")
    model.add_argument("--hidden", nargs="*", type=positive_int, metavar="WIDTH",
                       help=f"widths of the Dense ReLU hidden layers; none for softmax regression "
                            f"(default: {' '.join(map(str, d.hidden))})")
    model.add_argument("--dropout", type=fraction, metavar="RATE",
                       help=f"fraction of units dropped after each hidden layer (default: {d.dropout})")
    model.add_argument("--augment", nargs="?", const="affine",
                       choices=[*sorted(AUGMENTATIONS), "none"],
                       help="randomly distort training images: affine shifts (+-2 px), rotates "
                            "(+-10 degrees) and scales (+-10%%); elastic adds an elastic "
                            f"warp; none trains on the images as they are (default: {d.augment}; "
                            "--augment alone: affine)")
    model.add_argument("--deskew", action=argparse.BooleanOptionalAction,
                       help="deskew every image by its moments inside the model, in training "
                            "and in use (default: off; on in --preset best)")
    model.add_argument("--width-norm", action=argparse.BooleanOptionalAction,
                       help="with --deskew and --committee: the members after the first also "
                            "bring each digit's ink to a width of their own ("
                            + ", ".join(f"{w:g}" for w in MEMBER_INK_WIDTHS[1:])
                            + " pixels of spread), so that they err on different digits "
                              "(default: off)")
    model.add_argument("--committee", type=positive_int, metavar="N",
                       help="train N networks side by side and average their predictions "
                            f"(default: {d.committee})")

    training = parser.add_argument_group("training")
    training.add_argument("--preset", choices=sorted(PRESETS),
                          help="a named set of the options below (default: none)")
    training.add_argument("--epochs", type=positive_int, help=f"training epochs (default: {d.epochs})")
    training.add_argument("--batch-size", type=positive_int,
                          help=f"images per training step (default: {d.batch_size})")
    training.add_argument("--learning-rate", type=positive_float, metavar="RATE",
                          help=f"Adam's (peak) learning rate (default: {d.learning_rate:g})")
    training.add_argument("--lr-schedule", choices=("constant", "cosine"),
                          help=f"constant, or cosine decay to 0 over training (default: {d.lr_schedule})")
    training.add_argument("--warmup-epochs", type=nonnegative_int, metavar="N",
                          help=f"with --lr-schedule cosine, ramp the rate up linearly over the "
                               f"first N epochs (default: {d.warmup_epochs})")
    training.add_argument("--patience", type=positive_int, metavar="N",
                          help="stop when validation loss has not improved for N epochs and keep "
                               "the best weights (default: off)")
    training.add_argument("--steps-per-execution", type=positive_int, metavar="N",
                          help=f"training steps per call into the compiled graph "
                               f"(default: {d.steps_per_execution})")
    training.add_argument("--seed", type=nonnegative_int,
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
    output.add_argument("--output-dir", metavar="DIR",
                        help=f"where reports and the model go (default: {d.output_dir})")
    output.add_argument("--port", type=port_number, metavar="N",
                        help=f"with --draw, the port to listen on; 0 picks a free one "
                             f"(default: {DRAW_PORT})")
    output.add_argument("--model", metavar="PATH",
                        help="saved model for --predict, --draw and --evaluate "
                             "(default: OUTPUT_DIR/model.keras)")
    output.add_argument("--json", action="store_true",
                        help="with --predict, print one JSON object per image")
    output.add_argument("--min-confidence", type=probability, metavar="P",
                        help="with --predict or --draw, mark answers whose calibrated top probability is "
                             f"below P as unsure (default: {MIN_CONFIDENCE:g}; report.html shows "
                             "what each level means on the validation split)")
    output.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard logs (per-epoch scalars, the model graph) to "
                             "OUTPUT_DIR/tensorboard; needs the tensorboard package (default: off)")
    output.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def parse_command_line(argv=None):
    """Parse and cross-check the flags; return (mode, config, options) or exit 2."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    mode = next((name for name in ("predict", "draw", "evaluate", "compare") if name in args),
                "train")

    def refuse(flag, reason):
        """Fail with a usage error if flag was given."""
        if flag in args:
            parser.error(f"argument --{flag.replace('_', '-')}: {reason}")

    if mode != "predict":
        refuse("json", "only with --predict")
    if mode not in ("predict", "draw"):
        refuse("min_confidence", "only with --predict or --draw")
    if mode != "draw":
        refuse("port", "only with --draw")
    if mode not in ("predict", "draw", "evaluate"):
        refuse("model", "only with --predict, --draw or --evaluate")
    if mode != "train":
        refuse("resume", "only when training")
    if mode not in ("train", "compare"):
        refuse("tensorboard", "only when training or comparing")
    if mode in ("predict", "draw", "evaluate"):
        for flag in ("repeats", "epochs", "hidden", "preset", "patience", "resume", "augment",
                     "deskew", "width_norm", "committee"):
            refuse(flag, f"has no effect with --{mode}")
    if mode == "compare":
        refuse("hidden", "not with --compare, whose SPECs give the hidden layers")

    fields = {f.name for f in dataclasses.fields(Config)}
    values = dict(PRESETS.get(args.get("preset"), {}))
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
    if mode == "evaluate" and "output_dir" not in args:
        values["output_dir"] = str(Path(Config.output_dir) / "evaluation")
    config = Config(**values)

    if config.patience is not None and config.validation_split == 0:
        parser.error("argument --patience: needs a validation set (--validation-split above 0)")
    if config.warmup_epochs and config.lr_schedule != "cosine":
        parser.error("argument --warmup-epochs: only with --lr-schedule cosine")
    if config.warmup_epochs >= config.epochs and config.warmup_epochs:
        parser.error(f"argument --warmup-epochs: must be fewer than --epochs ({config.epochs})")
    if config.repeats > 1 and config.resume:
        parser.error("argument --resume: not with --repeats")
    if config.width_norm and not (config.deskew and config.committee > 1):
        parser.error("argument --width-norm: needs --deskew and --committee 2 or more")
    options = dict(specs=args.get("compare"), images=args.get("predict"),
                   json=args.get("json", False),
                   min_confidence=args.get("min_confidence", MIN_CONFIDENCE),
                   model=model_path, recorded=recorded, port=args.get("port", DRAW_PORT))
    return mode, config, options


def main(argv=None):
    """Parse the command line, run the chosen mode, and turn failures into exit statuses."""
    mode, config, options = parse_command_line(argv)
    failed = True
    try:
        if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise RunError("--tensorboard needs the tensorboard package; install it with: "
                           "pip install -r requirements.txt")
        if mode == "predict":
            status = run_prediction(config, options["model"], options["images"],
                                    options["json"], options["min_confidence"])
        elif mode == "draw":
            status = run_draw(config, options["model"], options["port"], options["min_confidence"])
        elif mode == "evaluate":
            if options["recorded"] and not config.quiet:
                print(f"data: {config.data_dir or 'the Keras download'} ({config.dataset}), "
                      f"as recorded by the run that saved {options['model']}")
            status = run_evaluation(config, options["model"])
        elif mode == "compare":
            status = run_comparison(config, options["specs"])
        else:
            status = run_training(config)
        failed = False
        return status
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.status
    except OSError as err:  # output that cannot be written: full disk, permissions
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        # A run that failed before writing any result leaves no directory it created behind.
        release_output_dirs(failed)


if __name__ == "__main__":
    raise SystemExit(main())
