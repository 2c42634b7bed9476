"""Backend: the one place Keras is first imported, with the backend the flags chose, seeded.

Keras reads KERAS_BACKEND once, when it is first imported, so every module of this package
that imports Keras at its top is imported only after start() has run. On a machine with a
GPU, TensorFlow (tensorflow[and-cuda]) or JAX (jax[cuda]) uses it with no change here;
device() says which device the run used, and every report records it.
"""

import contextlib
import gc
import importlib
import os
import platform
import sys

import numpy as np

from digitkit.errors import RunError


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


def start(config):
    """Select the backend, import Keras, seed every generator, and opt into determinism."""
    # Level 3 also hides TensorFlow's C++ "E0000 ... NodeDef mentions attribute" lines, which
    # look like errors but are not (a real failure still arrives as a Python exception).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["KERAS_BACKEND"] = config.backend
    # TensorFlow's TFLite converter imports JAX at start-up whenever it is installed, for a
    # JAX converter this script never uses; Keras imports scikit-learn (and SciPy's
    # statistics with it), pandas, OpenCV and Matplotlib's pyplot, for wrappers, DataFrame
    # inputs and drawing helpers it never uses either. The pictures and --predict import
    # Matplotlib and OpenCV themselves when they need them (the cost: docs/performance.md).
    unused = ["sklearn", "pandas", "cv2", "matplotlib"]
    if config.backend == "tensorflow":
        unused.append("jax")
    try:
        with NativeStderrSilenced():
            keras = imported_once("keras", unused)

            # Another backend needs TensorFlow only for --tensorboard's summary writer: then it
            # is imported here, its notices silenced, rather than in the middle of fit().
            if config.backend == "tensorflow" or config.tensorboard:
                import tensorflow as tf

                tf.config.list_physical_devices()  # the CUDA probe that logs on CPU machines
                tf.get_logger().setLevel("ERROR")  # e.g. retracing notices when comparing models
    except ImportError as err:
        hint = ("pip install -r requirements.txt" if config.backend == "tensorflow"
                else "pip install jax (listed in requirements-dev.txt)")
        raise RunError(f"cannot import Keras with the {config.backend} backend ({err}); "
                       f"install it with: {hint}") from None
    if keras.backend.backend() != config.backend:
        raise RunError(f"Keras was already imported with the {keras.backend.backend()} backend")
    if config.backend == "tensorflow" and config.committee == 1:
        one_op_at_a_time()
    # Keras seeds TensorFlow too whenever it is installed, for tf.data pipelines, importing it
    # if need be: about 3 s of a JAX run's start, for a generator it never draws from. Where
    # TensorFlow is already imported (its backend, --tensorboard), it is seeded as before.
    with import_blocked(["tensorflow"]):
        keras.utils.set_random_seed(config.seed)
    if config.deterministic and config.backend == "tensorflow":
        tf.config.experimental.enable_op_determinism()
    return keras


def imported_once(module, unused):
    """import_without(module, unused), the cyclic garbage collector paused while the process
    imports it for the first time (collection_paused); afterwards, the module as imported."""
    if module in sys.modules:
        return sys.modules[module]
    with collection_paused():
        return import_without(module, unused)


@contextlib.contextmanager
def collection_paused():
    """Python's cyclic garbage collector paused for the block, and what the block made frozen
    (gc.freeze) after it.

    Importing TensorFlow makes millions of objects, and every few hundred of them set off a
    collection that walks those made before, though none is garbage: modules, functions and
    classes live as long as the process. Frozen, no later collection walks them either
    (while training, drawing, predicting). About 0.2 s of a start and 0.5 s of a short run:
    docs/performance.md.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def import_without(module, unused):
    """Import module as if the modules named in unused were not installed, for the optional
    imports a library makes at its top for features this script never uses; returns it.

    A name set to None in sys.modules makes its import fail at once, as for a missing
    package, so the library takes its own fallback; afterwards the names are importable
    again. Should a library need one of them after all, it is imported the normal way.
    """
    try:
        with import_blocked(unused):
            return importlib.import_module(module)
    except ImportError:
        pass
    return importlib.import_module(module)


@contextlib.contextmanager
def import_blocked(names):
    """In the block, importing one of the named modules that is not yet imported fails at
    once, as for a missing package (its name set to None in sys.modules); afterwards the
    names are importable again."""
    blocked = [name for name in names if name not in sys.modules]
    sys.modules.update(dict.fromkeys(blocked, None))
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def one_op_at_a_time():
    """On a CPU, let TensorFlow run one op at a time, each on all cores (inter-op threads 1).

    One network's ops depend on each other, so TensorFlow's default of running independent
    ops side by side mostly makes threads compete: one at a time trains the default network
    about 1.15x faster here (README, Performance). A committee's members are independent
    networks, and there running them side by side is faster, so start() leaves it to
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


def device():
    """What trains: "CPU", or the accelerators' name and count, e.g. "1 x NVIDIA H200"."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        found = [d.device_kind for d in jax.devices() if d.platform != "cpu"]
    else:
        import tensorflow as tf

        found = [tf.config.experimental.get_device_details(gpu).get("device_name", "GPU")
                 for gpu in tf.config.list_physical_devices("GPU")]
    if not found:
        return "CPU"
    names = sorted(set(found))
    return ", ".join(f"{found.count(name)} x {name}" for name in names)


def environment():
    """What made a result: Python, NumPy, Keras and its backend's versions, and the device."""
    import keras

    found = dict(python=platform.python_version(), keras=keras.__version__,
                 numpy=np.__version__, backend=keras.backend.backend())
    if found["backend"] == "tensorflow":
        import tensorflow as tf

        found["tensorflow"] = tf.__version__
    else:
        import jax

        found["jax"] = jax.__version__
    return found, device()
