"""Images: a user's photo, scan or drawing of one digit, made to look like MNIST.

Reads any image Pillow can, flattens transparency, finds the ink whatever the paper, and
centres it in 28x28 as MNIST's digits are. Shared by --predict and --draw. Imports Pillow
and NumPy only.
"""

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digitkit.config import IMAGE_MAX_PIXELS, IMAGE_SHAPE

MNIST_CENTRE_OF_MASS = 14.0  # where MNIST's digits have their centre of mass, in pixel indices
INK_THRESHOLD = 0.25  # fraction of the strongest ink below which a pixel counts as background
MIN_INK_CONTRAST = 0.12  # weaker contrast than this between ink and paper means a blank image


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
    if not path.is_file():  # a FIFO would block, a device never ends
        raise ImageError("not a regular file")
    if path.stat().st_size == 0:
        raise ImageError("file is empty")
    return decode_image(path)


def decode_image(source, max_pixels=IMAGE_MAX_PIXELS):
    """Decode an image (a path or a binary file object) to grayscale floats in 0-1; one with
    more than max_pixels is refused from its header, before it is decoded."""
    try:
        with warnings.catch_warnings():
            # Pillow warns, in two lines, above 89 million pixels; the check below speaks.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(source)
        with opened:
            if opened.width * opened.height > max_pixels:
                raise ImageError(f"image is {opened.width:,}x{opened.height:,} pixels, more "
                                 f"than the {max_pixels:,} allowed")
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


def visible_entries(folder):
    """What a folder holds, sorted by name, hidden files (a leading dot) left out."""
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
