"""Images: reading a user's photo, scan or drawing of digits from a file or bytes.

Reads any image Pillow can, within a pixel limit, and flattens transparency onto the paper
that contrasts with the ink; digitkit/ink.py then finds the digits in it. Shared by
--predict, --draw and the Python API (digitkit/reader.py).
"""

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digitkit import ink
from digitkit.ink import BlankImageError, ImageError  # noqa: F401 (the errors callers catch)

# Larger images are refused before they are decoded, by --predict and --draw alike: room for
# a phone's 12-50 MP photo of a digit, none for a decompression bomb.
IMAGE_MAX_PIXELS = 50_000_000
# A larger image is decoded at a whole fraction of its size, no side above this (JPEG by its
# own reduced decoding, others by averaging blocks): the ink steps shrink any photo to 1,024
# pixels anyway (ink.WORK_SIDE), and a 50-megapixel photo decoded whole to floats takes more
# memory than a capped process may have. A 12-megapixel phone photo is decoded whole.
DECODE_SIDE = 4096


def read_image(path):
    """Open an image file as floats in 0-1 (grey, or RGB where it has colour), flattening
    any transparency."""
    path = Path(path)
    if not path.exists():
        raise ImageError("no such file")
    if path.is_dir():
        try:
            entries = visible_entries(path)
        except OSError as err:  # listed, but not searchable (no execute permission), or not
            raise ImageError(f"a folder that cannot be read ({err.strerror})") from None
        raise ImageError("is a folder, not an image" if entries
                         else "is a folder with no files in it")
    if not path.is_file():  # a FIFO would block, a device never ends
        raise ImageError("not a regular file")
    if path.stat().st_size == 0:
        raise ImageError("file is empty")
    return decode_image(path)


def decode_image(source, max_pixels=IMAGE_MAX_PIXELS):
    """Decode an image (a path or a binary file object) to floats in 0-1, grey (H x W) or,
    where it has colour, RGB (H x W x 3); one with more than max_pixels is refused from its
    header, before it is decoded, and a large one is decoded smaller (DECODE_SIDE)."""
    try:
        with warnings.catch_warnings():
            # Pillow warns, in two lines, above 89 million pixels; the check below speaks.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(source)
        with opened:
            if opened.width * opened.height > max_pixels:
                raise ImageError(f"image is {opened.width:,}x{opened.height:,} pixels, more "
                                 f"than the {max_pixels:,} allowed")
            factor = math.ceil(max(opened.size) / DECODE_SIDE)
            if factor > 1:
                opened.draft(opened.mode, (opened.width // factor, opened.height // factor))
            image = ImageOps.exif_transpose(opened)
            image.load()
            factor = math.ceil(max(image.size) / DECODE_SIDE)
            if factor > 1:
                image = image.reduce(factor)
        if "A" in image.getbands() or "transparency" in image.info:
            image = flatten_transparency(image.convert("RGBA"))
        grey = image.mode in ("1", "L", "I", "I;16", "F") or (image.mode == "P" and all(
            r == g == b for r, g, b in zip(*[iter(image.getpalette() or [])] * 3)))
        return np.asarray(image.convert("L" if grey else "RGB"), dtype=np.float32) / 255
    except MemoryError:
        raise ImageError("too large to decode in the memory this process may use") from None
    except UnidentifiedImageError:
        raise ImageError("not an image file Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"unreadable image ({err})") from None


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


def to_mnist_format(pixels):
    """One digit (a drawing, or an image that holds a single digit) as MNIST's 28x28: all
    the ink found is that digit (digitkit/ink.py)."""
    return ink.read(pixels, single=True).digits[0].image


def visible_entries(folder):
    """What a folder holds, sorted by name, hidden files (a leading dot) left out."""
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
