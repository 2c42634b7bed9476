"""Export: a saved model for another runtime, with what it expects written beside it.

--export onnx writes model.onnx (onnxruntime, and any ONNX runtime), litert model.tflite
(LiteRT, formerly TensorFlow Lite: phones, embedded boards, the browser), savedmodel a
TensorFlow SavedModel folder (TF Serving), each through Keras' own model.export, with a
JSON file beside it: the class names, the input it takes (shape, scale, polarity), the
source model and its test accuracy. The exported model is checked against the Keras model
in its own runtime when that runtime is installed. One run writes one format or several
(--export onnx litert savedmodel: the model loaded once). The converter a format needs is
imported only for that format; a missing one is one line naming its pip install. Imports
Keras at its top: import this module only after backend.start.
"""

import importlib.util
import logging
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np

from digitkit.backend import NativeStderrSilenced
from digitkit.config import DATASETS, IMAGE_SHAPE
from digitkit.errors import RunError, one_line
from digitkit.files import write_json
from digitkit.folders import staged
from digitkit.messages import LOGGER
from digitkit.networks import INPUT_FORMAT, networks
from digitkit.report import saved_record
from digitkit.saved import load_saved_model

log = logging.getLogger(LOGGER)
# format -> the file it writes, Keras' name for it, the packages Keras needs to write it,
# and the runtime that reads it back (the check after writing)
FORMATS = {
    "onnx": dict(file="model.onnx", keras="onnx", needs=("tf2onnx", "onnx"),
                 runtime="onnxruntime"),
    "litert": dict(file="model.tflite", keras="litert", needs=(), runtime="ai_edge_litert"),
    "savedmodel": dict(file="savedmodel", keras="tf_saved_model", needs=(),
                       runtime="tensorflow"),
}
PIP_NAMES = {"ai_edge_litert": "ai-edge-litert"}
CHECK_IMAGES = 64  # seeded images the export and the Keras model must answer alike
CHECK_TOLERANCE = 1e-4  # the largest difference in any probability


def refusal(model, export_format):
    """Why model cannot be exported to export_format, or None."""
    deskews = any(isinstance(layer, keras.Model) and layer.name.startswith("deskew")
                  for network in networks(model) for layer in network.layers)
    if deskews and export_format in ("onnx", "litert"):
        runtime = "ONNX has no operator" if export_format == "onnx" else \
            "LiteRT's built-in operators have none (only its Flex delegate)"
        return (f"the model deskews its input (--deskew) with TensorFlow's image transform "
                f"(ImageProjectiveTransformV3), for which {runtime}; export it with --export "
                f"savedmodel, or train a model without --deskew")
    return None


def run_export(config, options, output_dir):
    """Write the saved model (options["model"]) in each of options["export"]'s formats into
    output_dir, each with its JSON beside it; an earlier export of a format moves to
    previous/. What would refuse a format (a missing converter, a layer the format cannot
    hold) is found before the first file is written. Returns 0."""
    formats, model_path = options["export"], Path(options["model"])
    for export_format in formats:
        missing = [name for name in FORMATS[export_format]["needs"]
                   if importlib.util.find_spec(name) is None]
        if missing:
            raise RunError(f"--export {export_format} needs {' and '.join(missing)}; install "
                           f"with: pip install {' '.join(missing)}")
    model, dataset = load_saved_model(model_path, config)
    for export_format in formats:
        why = refusal(model, export_format)
        if why:
            raise RunError(f"--export {export_format}: {why}")
    record = saved_record(model_path) or {}
    for export_format in formats:
        export_one(model, model_path, dataset, record, export_format, output_dir)
    return 0


def export_one(model, model_path, dataset, record, export_format, output_dir):
    """Write, check and describe one format's export in output_dir, published whole."""
    spec = FORMATS[export_format]
    accuracy = record.get("test_accuracy")
    about = dict(
        format=export_format, file=spec["file"], source=str(model_path.resolve()),
        test_accuracy=accuracy if isinstance(accuracy, (int, float)) else None,
        dataset=dataset, classes=list(DATASETS[dataset]["classes"]),
        input=dict(INPUT_FORMAT, shape=[None, *IMAGE_SHAPE]),
        output=dict(shape=[None, len(DATASETS[dataset]["classes"])], dtype="float32",
                    meaning="calibrated probabilities of the classes, in the order of classes"),
        versions=dict(keras=keras.__version__))
    name = spec["file"] + ".json"  # model.onnx.json, model.tflite.json, savedmodel.json
    with staged(output_dir, "export", names=(spec["file"], name), prefix="export-") as stage:
        try:
            with warnings.catch_warnings():  # the converters' own deprecation notices
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                model.export(str(stage / spec["file"]), format=spec["keras"], verbose=False)
        except Exception as err:  # a converter's failure, in whatever type it raises
            shutil.rmtree(stage / spec["file"], ignore_errors=True)
            raise RunError(f"--export {export_format}: the converter failed "
                           f"({one_line(err)})") from None
        about["check"] = check(model, stage / spec["file"], export_format, spec["runtime"])
        write_json(stage / name, about)
    log.info(f"wrote {output_dir / spec['file']} and {output_dir / name}")
    check_line = about["check"]
    log.info(f"checked in {spec['runtime']}: largest difference from Keras "
             f"{check_line['largest_difference']:.2g} on {check_line['images']} images, the "
             f"same top class for all" if check_line.get("checked") else
             f"not checked: {check_line['why']}")


def check(model, path, export_format, runtime):
    """The export's answers against the Keras model's on CHECK_IMAGES seeded images, in the
    export's own runtime (a RunError if they differ); what was found, for the JSON."""
    if importlib.util.find_spec(runtime) is None:
        return dict(checked=False, why=f"{runtime} is not installed (pip install "
                                       f"{PIP_NAMES.get(runtime, runtime)})")
    images = np.random.default_rng(0).random((CHECK_IMAGES, *IMAGE_SHAPE), dtype=np.float32)
    expected = np.asarray(model.predict(images, verbose=0))
    try:
        with NativeStderrSilenced():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK ..."
            got = np.asarray(RUNNERS[export_format](path, images))
    except Exception as err:  # whatever the runtime raises for a file it cannot run
        raise RunError(f"--export {export_format}: {runtime} cannot run the export "
                       f"({one_line(err)}); the export is not kept") from None
    difference = float(np.abs(got - expected).max())
    same = bool((got.argmax(axis=1) == expected.argmax(axis=1)).all())
    if difference > CHECK_TOLERANCE or not same:
        raise RunError(f"--export {export_format}: {runtime} answers differently from Keras "
                       f"(largest difference {difference:.2g}); the export is not kept")
    return dict(checked=True, runtime=runtime, images=CHECK_IMAGES,
                largest_difference=difference)


def run_onnx(path, images):
    """Probabilities from model.onnx in onnxruntime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def run_litert(path, images):
    """Probabilities from model.tflite in LiteRT's interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    entry = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(entry["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def run_savedmodel(path, images):
    """Probabilities from the SavedModel's serve function in TensorFlow."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # held: serve needs its variables alive
    return loaded.serve(images).numpy()


RUNNERS = dict(onnx=run_onnx, litert=run_litert, savedmodel=run_savedmodel)
