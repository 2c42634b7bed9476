"""Data: read MNIST or Fashion-MNIST from IDX files, a Keras .npz or Keras' download, and check it.

Returns uint8 arrays exactly as stored; scaling them to 0-1 is the script's own step. Local
files are read before TensorFlow is imported, so bad data fails in a blink, then Keras is
started (backend.start); every failure is a RunError naming the offending file. Imports
nothing heavy.
"""

import gzip
import hashlib
import math
import urllib.error
import zlib
from pathlib import Path

import numpy as np

from digitkit import backend
from digitkit.clock import timed
from digitkit.config import DATASETS, IMAGE_SHAPE, NUM_CLASSES
from digitkit.errors import RunError, UsageError
from digitkit.memory import available_memory

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
    """Read one IDX file of unsigned bytes (gzip-compressed or not) into a NumPy array.

    Only a regular file is opened (a FIFO would block for ever, a device never ends), and no
    more is read than its header promises, one byte past it to tell a padded file, so a
    hostile file (a small gzip that expands to gigabytes) costs no more than an honest one;
    a promise larger than the memory available is refused before anything is read.
    """
    if path.is_dir():
        raise RunError(f"{path}: is a directory, expected an IDX file")
    if not path.is_file():  # follows links: one to /dev/zero is no regular file either
        raise RunError(f"{path}: not a regular file (a FIFO, a device?), expected an IDX file")
    header_size = 4 + 4 * ndim
    try:
        with open(path, "rb") as file:
            compressed = file.read(2) == b"\x1f\x8b"
            file.seek(0)
            stream = gzip.GzipFile(fileobj=file) if compressed else file
            header = stream.read(header_size)
            if not header:
                raise RunError(f"{path}: file is empty")
            if len(header) < header_size:
                raise RunError(f"{path}: too short for an IDX header ({len(header)} bytes)")
            magic = int.from_bytes(header[:4], "big")
            if magic != IDX_MAGIC[ndim]:
                raise RunError(f"{path}: wrong magic number 0x{magic:08x}, expected "
                               f"0x{IDX_MAGIC[ndim]:08x} (IDX "
                               f"{'images' if ndim == 3 else 'labels'})")
            shape = tuple(int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big")
                          for i in range(ndim))
            expected = math.prod(shape)
            available = available_memory()
            if available is not None and expected > available // 2:
                raise RunError(f"{path}: header promises {'x'.join(map(str, shape))} = "
                               f"{expected:,} bytes, more than half the memory available")
            body = stream.read(expected + 1)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise RunError(f"{path}: corrupt or truncated gzip data ({err})") from None
    except OSError as err:
        raise RunError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(body) != expected:
        holds = f"{len(body):,}" if len(body) < expected else "more"
        raise RunError(f"{path}: header promises {'x'.join(map(str, shape))} bytes of data "
                       f"but the file holds {holds} (truncated or padded)")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


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
    if data_dir.is_file():
        raise RunError(f"--data-dir {data_dir}: is a file, not a folder; pass the folder that "
                       f"holds the four IDX files, or an .npz")
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
    """Load through Keras' downloader, which caches the files under ~/.keras/datasets.

    Called only after backend.start, since importing Keras fixes its backend.
    """
    import keras  # the one import of Keras outside the modules that need it at their top

    loader = keras.datasets.mnist if dataset == "mnist" else keras.datasets.fashion_mnist
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as err:
        if not is_download_failure(err):
            raise  # a bug, not the network: let it show
        raise RunError(f"could not download {DATASETS[dataset]['title']}: {download_failure(err)}; "
                       f"without a network, pass --data-dir DIR holding its four IDX files, "
                       f"or set DIGIT_CLASSIFIER_DATA_DIR=DIR for every command (where to get "
                       f"them: docs/data.md, Offline use)") from None
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return arrays, {key: f"keras.datasets.{loader.__name__.rsplit('.', 1)[-1]}" for key in arrays}


def is_download_failure(err):
    """Whether err is what a download raises: the network or the disk (OSError and the URL
    errors under it), a failed checksum or a bad archive (ValueError, EOFError, zlib.error),
    or the bare Exception Keras wraps HTTP and URL errors in."""
    return type(err) is Exception or isinstance(err, (OSError, ValueError, EOFError, zlib.error))


def download_failure(err):
    """The real cause of a failed download, from the exception Keras raised and its context."""
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


# The official files, recognised whatever their format (gzip or plain IDX, .npz, Keras' cache)
# by a checksum of their 70,000 labels, training then test, as uint8.
LABELS_SHA256 = {
    "671ff9d70b4811116d55c3dd479efa7a981e2e62753ef7a6d5c15fea81e63d27": "mnist",
    "8ab940a680640f36c0bf1d2549cb2f3b3d4068c12547116cc7b1161b1d26663d": "fashion-mnist",
}


def recognise_dataset(arrays):
    """'mnist' or 'fashion-mnist' for the official data sets, None for any other data."""
    labels = np.concatenate([arrays["y_train"], arrays["y_test"]]).astype(np.uint8)
    return LABELS_SHA256.get(hashlib.sha256(labels.tobytes()).hexdigest())


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


def load(config, training=True):
    """The flags' dataset, checked, with Keras started: returns its arrays, a record of where
    they came from, and the seconds spent loading and starting Keras.

    The files of --data-dir are read before TensorFlow is imported, so bad data fails in a
    blink; Keras' download needs Keras, so it comes after backend.start. For training, a
    batch must fit in the training split.
    """
    timing, loaded = {}, None
    if config.data_dir is not None:
        with timed(timing, "load_seconds"):
            loaded = load_dataset(config.dataset, config.data_dir)
        if training:
            check_training_size(len(loaded[0]["x_train"]), config)
    with timed(timing, "import_seconds"):
        backend.start(config)
    if loaded is None:
        with timed(timing, "load_seconds"):
            loaded = load_dataset(config.dataset, None)
        if training:
            check_training_size(len(loaded[0]["x_train"]), config)
    arrays, source = loaded
    info = dict(name=config.dataset, title=DATASETS[config.dataset]["title"], source=source)
    return arrays, info, timing
