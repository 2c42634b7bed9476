"""Robustness: the test accuracy under 27 seeded corruptions of the test images (after
MNIST-C), each measured with its 95% interval. Imports Keras at its top (the Gaussian blur
is a Keras op): import this module only after backend.start.
"""

import functools

import keras
import numpy as np

from digitkit.augment import gaussian_matrix
from digitkit.config import EVAL_BATCH_SIZE

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


def robustness(model, x_test, y_test, images=ROBUSTNESS_IMAGES, max_images=60_000):
    """Test accuracy under every corruption and severity: the record's 'robustness' entry.

    Measured on a fixed subset of the test set, `images` of them drawn with ROBUSTNESS_SEED
    (all of them in a smaller test set), so that every model meets the very same images:
    enough to know each corrupted set's accuracy within about 2 points either way (the 95%
    interval, recorded for each), at a fifth of the cost of MNIST's 10,000. The clean subset
    and the 27 corrupted sets are predicted together, as few at a time as keep one call under
    max_images images (60,000 of 28x28 float32: 190 MB): two calls for 2,000 images.
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
        predicted = model.predict(batch, batch_size=EVAL_BATCH_SIZE, verbose=0).argmax(axis=1)
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
