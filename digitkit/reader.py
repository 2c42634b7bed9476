"""Reader: a saved model put to use on your own digits, from Python.

    from digitkit.reader import DigitReader
    reader = DigitReader.load("outputs/model.keras")
    reader.read("house_number.jpg")["prediction"]      # "2026"
    reader.read(pil_image); reader.read(numpy_array)   # the same, from memory

The model takes a batch of (28, 28) float32 images in 0-1, white ink on black, the digit
fitted to 20x20 and centred by its mass (MNIST's format), and returns one calibrated
probability per class (`INPUT_FORMAT`, also in the saved model's digit_classifier.json).
`read` first turns any photo, scan or drawing into that format with the same steps as
--predict (digitkit/ink.py), digit by digit. Imports Keras at its top: from the command line,
import this module only after backend.start.
"""

from pathlib import Path

import keras
import numpy as np

from digitkit import images, ink
from digitkit.config import DATASETS, IMAGE_SHAPE, MIN_CONFIDENCE
from digitkit.metrics import answer
from digitkit.networks import INPUT_FORMAT, saved_dataset  # noqa: F401 (INPUT_FORMAT: the API)



class DigitReader:
    """A model and the class names it answers with; reads digits and whole numbers."""

    def __init__(self, model, dataset="mnist", min_confidence=MIN_CONFIDENCE):
        self.model = model
        self.dataset = dataset
        self.class_names = DATASETS[dataset]["classes"]
        self.min_confidence = min_confidence
        self.reads_numbers = dataset == "mnist"  # several digits make a number; clothes don't

    @classmethod
    def load(cls, path, min_confidence=MIN_CONFIDENCE):
        """A reader for a model.keras this project saved (plain keras.models.load_model)."""
        model = keras.models.load_model(path)
        return cls(model, saved_dataset(Path(path), model), min_confidence)

    def probabilities(self, batch):
        """The model's probabilities for a batch of MNIST-format images (N, 28, 28)."""
        batch = np.asarray(batch, np.float32).reshape(-1, *IMAGE_SHAPE)
        return np.asarray(self.model.predict_on_batch(batch))

    def read(self, source):
        """The answer for one image: a file path, a PIL image or an array (grey or RGB, uint8
        0-255 or float 0-1). See `whole_answer` for what it holds; an image with no ink
        raises digitkit.ink.BlankImageError, an unreadable file digitkit.ink.ImageError."""
        reading = ink.read(pixels_of(source), single=not self.reads_numbers)
        return self.answer(reading, ink.digit_probabilities(self.probabilities, reading.digits))

    def answer(self, reading, probabilities):
        """The answer for a reading, given its digits' probabilities."""
        digits = [answer(p, self.class_names, self.min_confidence) for p in probabilities]
        return whole_answer(digits, reading.doubtful, self.min_confidence)


def pixels_of(source):
    """Floats in 0-1 (grey H x W or RGB H x W x 3) from a path, a PIL image or an array."""
    if isinstance(source, (str, Path)):
        return images.read_image(source)
    if hasattr(source, "getbands"):  # a PIL image
        if "A" in source.getbands() or "transparency" in source.info:
            source = images.flatten_transparency(source.convert("RGBA"))
        return np.asarray(source.convert("RGB"), np.float32) / 255
    array = np.asarray(source)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    array = array.astype(np.float32)
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError("an array of floats must hold values in 0-1 (or pass uint8 pixels)")
    return array[..., :3] if array.ndim == 3 else array


def whole_answer(digits, doubtful=None, min_confidence=MIN_CONFIDENCE):
    """One image's answer from its digits' answers (metrics.answer each), left to right.

    A single digit, clearly segmented, is its own answer (prediction, probability, unsure,
    candidates). Several digits: prediction is the string of digits ("2026"), probability
    the product of theirs (the chance that all are right), unsure when that is below
    min_confidence (so whenever any digit is unsure) or the segmentation is doubtful (named
    in doubtful), and digits lists each one's answer.
    """
    if len(digits) == 1 and doubtful is None:
        return digits[0]
    probability = float(np.prod([digit["probability"] for digit in digits]))
    return dict(prediction="".join(digit["prediction"] for digit in digits),
                probability=probability,
                unsure=probability < min_confidence or doubtful is not None,
                digits=digits, doubtful=doubtful)
