"""What each --export costs: file size, and milliseconds per image in its own runtime.

    python benchmarks/export.py --model outputs/model.keras [--calls 200]

Exports the model with the script (`--export onnx litert savedmodel`, into a temporary
folder), then times, in this one process, one image at a time (the median of --calls calls,
after 20 to warm up) and a batch of 1,000 (the median of 5 calls, per image) in onnxruntime,
LiteRT's interpreter, TensorFlow's SavedModel and Keras itself. Needs the export packages of
requirements-dev.txt.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FILES = {"onnx": "model.onnx", "litert": "model.tflite", "savedmodel": "savedmodel"}


def size_mb(path):
    """A file's size, or a folder's total, in MB."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def runners(folder, model):
    """name -> a function from a batch of images to probabilities, one per runtime."""
    import onnxruntime as ort
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    session = ort.InferenceSession(str(folder / FILES["onnx"]),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    interpreter = Interpreter(model_path=str(folder / FILES["litert"]))
    entry = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]["index"]
    shape = [None]

    def litert(images):
        """LiteRT: resized only when the batch size changes."""
        if shape[0] != images.shape:
            interpreter.resize_tensor_input(entry["index"], images.shape)
            interpreter.allocate_tensors()
            shape[0] = images.shape
        interpreter.set_tensor(entry["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(output)

    saved = tf.saved_model.load(str(folder / FILES["savedmodel"]))
    return {"onnx": lambda images: session.run(None, {name: images})[0], "litert": litert,
            "savedmodel": lambda images: saved.serve(images).numpy(),
            "keras": lambda images: np.asarray(model.predict_on_batch(images))}


def median_ms(run, images, calls):
    """Median milliseconds per image of run(images) over calls calls."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run(images)
        times.append((time.perf_counter() - start) * 1000 / len(images))
    return statistics.median(times)


def main():
    """Export, time, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="export-benchmark-"))
    subprocess.run([sys.executable, str(ROOT / "digit_classifier.py"), "--export", *FILES,
                    "--model", args.model, "--output-dir", str(folder), "--quiet"], check=True)
    import keras

    model = keras.models.load_model(args.model)
    one = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    batch = np.random.default_rng(1).random((1000, 28, 28), dtype=np.float32)
    print(f"{'runtime':10}  {'file MB':>8}  {'ms, 1 image':>11}  {'ms/image, batch 1000':>20}")
    for name, run in runners(folder, model).items():
        median_ms(run, one, 20)  # warm up: tracing, allocation
        single = median_ms(run, one, args.calls)
        batched = median_ms(run, batch, 5)
        size = size_mb(folder / FILES[name]) if name in FILES else size_mb(args.model)
        print(f"{name:10}  {size:8.2f}  {single:11.3f}  {batched:20.4f}")


if __name__ == "__main__":
    main()
