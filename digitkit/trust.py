"""Trust: probabilities that mean what they say, and accuracy on corrupted images.

Calibration fits one temperature on the validation split (never the test set) and folds it
into the saved model's output weights, so every program that loads model.keras gets the
calibrated probabilities. Robustness measures the test accuracy under 27 seeded corruptions
(after MNIST-C). Imports Keras at its top: import this module only after backend.start.
"""

import functools
import math
import weakref

import keras
import numpy as np

from digitkit.augment import gaussian_matrix
from digitkit.config import CALIBRATION_BINS, CONFIDENCE_LEVELS, EVAL_BATCH_SIZE, IMAGE_SHAPE
from digitkit.metrics import negative_log_likelihood
from digitkit.networks import networks


BODIES = weakref.WeakKeyDictionary()  # network -> the model of all its layers but the last


def network_logits(model, images):
    """Each network's pre-softmax outputs, (networks, images, classes), in float64.

    Read from the input of the last Dense layer and its weights, so that a temperature can be
    fitted exactly without another forward pass per trial.
    """
    logits = []
    for network in networks(model):
        if network not in BODIES:  # built and traced once, however often it is asked
            BODIES[network] = keras.Sequential([keras.Input(shape=IMAGE_SHAPE),
                                                *network.layers[:-1]])
        features = BODIES[network].predict(images, batch_size=EVAL_BATCH_SIZE, verbose=0)
        kernel, bias = network.layers[-1].get_weights()
        logits.append(features.astype(np.float64) @ kernel + bias)
    return np.stack(logits)


def softmax_average(logits, temperature=1.0):
    """What the model outputs for those logits at a temperature: the members' mean softmax."""
    scaled = logits / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=-1, keepdims=True)).mean(axis=0)


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
        """The negative log-likelihood at temperature exp(log_t)."""
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


def calibrate(model, data, test_logits):
    """Fit a temperature on the validation split and fold it into the model.

    test_logits are network_logits(model, data["x_test"]), computed once by the caller.
    Returns the calibration record: the temperature, test ECE and NLL before and after, the
    reliability bins before and after, and the unsure table on the validation split. Without
    a validation split nothing is fitted (temperature 1) and the record says so.
    """
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


def member_accuracies(test_logits, labels):
    """Each committee member's own test accuracy, from the logits the committee's came from."""
    return [float((logits.argmax(axis=1) == labels).mean()) for logits in test_logits]


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
ROBUSTNESS_IMAGES = 2000  # test images the corruptions are measured on (robustness)
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

    Every argument but images is one value per image. The same resampler as the training
    distortion's and the deskewing's: Keras' affine transform, given for each output pixel
    (x, y) the input position it reads, here the inverse of the rotation, scaling and shift.
    """
    height, width = images.shape[1:]
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    angle, scale = np.asarray(angle, np.float64), np.asarray(scale, np.float64)
    shift_y, shift_x = np.asarray(shift_y, np.float64), np.asarray(shift_x, np.float64)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    from_y, from_x = centre_y + shift_y, centre_x + shift_x  # where the centre goes
    transform = np.stack([cos, sin, centre_x - cos * from_x - sin * from_y,
                          -sin, cos, centre_y - cos * from_y + sin * from_x,
                          np.zeros_like(cos), np.zeros_like(cos)], axis=1).astype(np.float32)
    out = keras.ops.image.affine_transform(
        np.asarray(images, np.float32)[..., None], transform, interpolation="bilinear",
        fill_mode="constant", fill_value=0, data_format="channels_last")
    return np.asarray(out)[..., 0].astype(images.dtype)


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
    if name == "blur":  # separable: the rows, then the columns, zeros beyond the border
        height, width = images.shape[1:]
        return (gaussian_matrix(height, level).astype(images.dtype) @ images
                @ gaussian_matrix(width, level).astype(images.dtype).T)
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
        top = rng.integers(4, 24 - level + 1, count)[:, None, None]
        left = rng.integers(4, 24 - level + 1, count)[:, None, None]
        rows = np.arange(images.shape[1])[None, :, None]
        columns = np.arange(images.shape[2])[None, None, :]
        patch = (rows >= top) & (rows < top + level) & (columns >= left) & (columns < left + level)
        return np.where(patch, 0, images)
    raise ValueError(f"unknown corruption {name!r}")


def corrupted_accuracy(model, images, labels, name, severity):
    """The model's accuracy on the images under one corruption at one severity."""
    predicted = model.predict(corrupt(images, name, severity), batch_size=EVAL_BATCH_SIZE,
                              verbose=0).argmax(axis=1)
    return float((predicted == labels).mean())


def robustness(model, x_test, y_test, images=ROBUSTNESS_IMAGES, max_images=60_000,
               via_logits=False):
    """Test accuracy under every corruption and severity: the record's 'robustness' entry.

    Measured on a fixed subset of the test set, `images` of them drawn with ROBUSTNESS_SEED
    (all of them in a smaller test set), so that every model meets the very same images:
    enough to know each corrupted set's accuracy within about 2 points either way (the 95%
    interval, recorded for each), at a fifth of the cost of MNIST's 10,000. The clean subset
    and the 27 corrupted sets are predicted together, as few at a time as keep one call under
    max_images images (60,000 of 28x28 float32: 190 MB): two calls for 2,000 images.
    via_logits: model is one this package built and evaluated (evaluate), so its answers come
    through network_logits' models, already traced, instead of a new trace of model.predict.
    """
    if len(x_test) > images:
        pick = np.sort(np.random.default_rng(ROBUSTNESS_SEED).choice(len(x_test), images,
                                                                     replace=False))
        x_test, y_test = x_test[pick], y_test[pick]
    sets = [("clean", 0)] + [(name, severity) for name, (_, levels) in CORRUPTIONS.items()
                             for severity in range(1, len(levels) + 1)]
    per_call = max(1, max_images // max(1, len(x_test)))
    accuracy = {}
    for start in range(0, len(sets), per_call):
        group = sets[start:start + per_call]
        batch = np.concatenate([x_test if severity == 0 else corrupt(x_test, name, severity)
                                for name, severity in group])
        probabilities = (softmax_average(network_logits(model, batch)) if via_logits
                         else model.predict(batch, batch_size=EVAL_BATCH_SIZE, verbose=0))
        predicted = probabilities.argmax(axis=1)
        for (name, severity), answers in zip(group, np.split(predicted, len(group))):
            accuracy[name, severity] = float((answers == y_test).mean())
    clean = accuracy.pop(("clean", 0))

    def interval(share):
        """Half the width of the 95% interval of an accuracy measured on these images."""
        return float(1.96 * np.sqrt(share * (1 - share) / len(x_test)))

    results = {name: dict(parameter=parameter, levels=list(levels),
                          accuracy=[accuracy[name, severity]
                                    for severity in range(1, len(levels) + 1)],
                          interval95=[interval(accuracy[name, severity])
                                      for severity in range(1, len(levels) + 1)])
               for name, (parameter, levels) in CORRUPTIONS.items()}
    return dict(images=len(x_test), clean_accuracy=clean, seed=ROBUSTNESS_SEED,
                corruptions=results, mean_accuracy=float(np.mean(list(accuracy.values()))))
