"""Augmentation and deskewing: what the network sees of an image, as Keras layers.

RandomDistortion distorts each training batch anew (affine, or elastic on top) and passes
images through untouched outside training; deskew_model shears each digit upright by its
moments, in training and in use, so it travels inside model.keras. Imports Keras at its top:
import this module only after backend.start.
"""

import math

import keras
import numpy as np
from keras import ops

from digitkit.config import IMAGE_SHAPE, distortion


@keras.saving.register_keras_serializable(package="digit_classifier")
class RandomDistortion(keras.layers.Layer):
    """Random affine and elastic distortion of (batch, height, width) images, training only.

    One bilinear resampling per image: each output pixel reads the input at its own
    position mirrored left to right (half the images, when flip), rotated (+-rotation
    degrees), scaled (1 +- zoom, x and y independently), shifted (+-shift pixels) and,
    when elastic > 0, displaced by a random field smoothed with a Gaussian of sigma pixels
    and scaled by elastic (Simard et al., 2003). Pixels read from outside the image are 0.
    Outside training the layer passes images through. Keras' own RandomElasticTransform is
    not used: it draws the x and y fields from one seed, so every displacement points along
    the diagonal, and it loops over the batch in Python.
    """

    def __init__(self, rotation=0.0, zoom=0.0, shift=0.0, elastic=0.0, sigma=4.0,
                 flip=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.shift, self.flip = rotation, zoom, shift, flip
        self.elastic, self.sigma, self.seed = elastic, sigma, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom,
                "shift": self.shift, "elastic": self.elastic, "sigma": self.sigma,
                "flip": self.flip, "seed": self.seed}

    def uniform(self, shape, limit):
        """Uniform noise in -limit..limit, from the layer's own seed generator."""
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
        if self.flip:  # a negative x scale about the centre mirrors the image
            scale_x = ops.where(self.uniform((batch, 1, 1), 1.0) < 0, -scale_x, scale_x)
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
        Every affine resampling here goes through Keras' affine_transform; this one samples
        the elastic field's arbitrary positions. Keras' map_coordinates gives the same
        numbers, but slower on a CPU (docs/performance.md, "Design notes").
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


MAX_SKEW = 1.0  # deskewing shears by at most one pixel sideways per pixel down (45 degrees)


def deskew_model():
    """Moment-based deskewing (LeCun et al. 1998) as a small Keras model of Keras ops.

    Per image: the centre of mass (cy, cx) of the ink, and the skew alpha = cov(y, x) / var(y)
    of its second moments; the output pixel (y, x) reads the input at (y + cy - 14,
    x + cx - 14 + alpha (y - 14)), so that the slant is sheared upright and the centre of
    mass moved to (14, 14). Made of keras.ops only, no layer class of this package's, so
    that model.keras still loads in any Keras program with plain keras.models.load_model,
    and the deskewing goes wherever the model goes (--evaluate, --predict, --draw, other
    programs).
    """
    height, width = IMAGE_SHAPE
    images = keras.Input(shape=IMAGE_SHAPE)
    y = np.arange(height, dtype="float32")[:, None]
    x = np.arange(width, dtype="float32")[None, :]

    def mean(values):
        """The ink-weighted mean of values over each image, (batch,)."""
        return ops.sum(images * values, axis=(1, 2)) / (ops.sum(images, axis=(1, 2)) + 1e-6)

    cy, cx = mean(y), mean(x)
    dy = ops.subtract(y, ops.expand_dims(ops.expand_dims(cy, 1), 2))
    dx = ops.subtract(x, ops.expand_dims(ops.expand_dims(cx, 1), 2))
    alpha = ops.clip(mean(dy * dx) / (mean(dy * dy) + 1e-6), -MAX_SKEW, MAX_SKEW)
    one, zero = ops.ones_like(alpha), ops.zeros_like(alpha)
    # Keras' affine transform maps each output (x, y) to the input position
    # (a0 x + a1 y + a2, b0 x + b1 y + b2); the last two entries are for projective maps.
    transform = ops.stack([one, alpha, cx - width / 2 - alpha * (height / 2),
                           zero, one, cy - height / 2, zero, zero], axis=1)
    deskewed = ops.image.affine_transform(ops.expand_dims(images, -1), transform,
                                          interpolation="bilinear", fill_mode="constant",
                                          data_format="channels_last")
    return keras.Model(images, ops.squeeze(deskewed, -1), name="deskew")


def layers(config):
    """What stands between the input and Flatten for config: the distortion of every training
    batch (--augment, at --augment-strength; never in use), then the deskewing (--deskew),
    after it, so that the network always sees upright digits."""
    found = []
    if config.augment and config.augment_strength > 0:
        shapes = distortion(config.augment, config.augment_strength)
        found.append(RandomDistortion(**shapes, name="distort"))
    if config.deskew:
        found.append(deskew_model())
    return found
