"""Ink: find the handwritten digits in a photo, scan or drawing, as a person would, and turn
each into an MNIST image (white ink on black, fitted to 20x20, centred by its mass in 28x28).

The steps, each a function below: shrink a large photo to a working size; tell the ink from
the paper (dark pen on light paper, or chalk on a board); divide out the page's uneven light;
pick the ink with an automatic threshold (Otsu's, bounded below by the measured noise, with
hysteresis); drop ruled and squared lines; then digitkit/digits.py groups what is left into
digits read left to right, each in MNIST's format. `read` returns the digits and every
intermediate image (for --explain). Shared by --predict,
--draw and the Python API (digitkit.reader). Imports OpenCV (opencv-python-headless), NumPy
and nothing of TensorFlow; import it only where images are read.
"""

from dataclasses import dataclass, field

import cv2
import numpy as np

from digitkit.digits import digit_groups, mnist_images

WORK_SIDE = 1024  # a larger photo is shrunk to this longer side first (averaging its pixels)
SMALL_SIDE = 160  # a smaller image (a 28x28 file, an 8x8 scan) is enlarged to this first
MIN_INK_CONTRAST = 0.12  # ink that differs from its paper by less than this: a blank page
NOISE_SIGMAS = 5.0  # the threshold stays this many noise deviations above the paper...
MAX_FLOOR = 0.4  # ...but however noisy the paper, ink this much darker than it is ink


class ImageError(Exception):
    """An image that cannot be classified: missing, unreadable or blank."""


class BlankImageError(ImageError):
    """An image with no ink on it."""


@dataclass
class Digit:
    """One digit found: its 28x28 MNIST image, its box in the working image (x, y, w, h),
    why its segmentation is doubtful (None when it is not), and further views of it that
    the model reads too (the ink thinned, for strokes far thicker than MNIST's)."""

    image: np.ndarray
    box: tuple
    doubtful: str = None
    more_views: list = field(default_factory=list)

    @property
    def views(self):
        """Every 28x28 view of the digit, its image first."""
        return [self.image, *self.more_views]


@dataclass
class Reading:
    """The digits found, left to right, and the steps that found them (working images)."""

    digits: list
    steps: dict = field(default_factory=dict)

    @property
    def doubtful(self):
        """Why the segmentation is doubtful, or None."""
        reasons = [digit.doubtful for digit in self.digits if digit.doubtful]
        return reasons[0] if reasons else None


def read(pixels, single=False):
    """Find the digits in an image (H x W grey, or H x W x 3 colour, floats in 0-1).

    single: the image holds one digit (a drawing on --draw's pad), so all ink is one digit.
    Raises BlankImageError when no ink stands out from the paper.
    """
    pixels = np.asarray(pixels, np.float32)
    cropped = max(pixels.shape[:2]) < SMALL_SIDE  # a digit's own small image, not a page
    colour = working_size(pixels)
    steps = dict(photo=colour)
    darkness = ink_darkness(colour, cropped)
    contrast, noise = remove_lighting(darkness, cropped)
    steps["ink"] = contrast
    low, high = thresholds(contrast, noise)
    candidates, lines = without_ruled_lines(contrast > low)
    steps["lines"] = lines
    mask = seeded(candidates, contrast > high)
    groups = digit_groups(mask, contrast, single, cropped)
    if not groups:
        raise BlankImageError("no ink found: the image looks blank")
    steps["mask"] = mask
    digits = []
    for group_mask, box, doubtful in groups:
        image, *more_views = mnist_images(contrast, group_mask, box)
        digits.append(Digit(image, box, doubtful, more_views))
    return Reading(digits, steps)


def digit_probabilities(predict, digits):
    """Each digit's class probabilities, (len(digits), classes): the mean of what
    predict(batch of 28x28 images) gives for its views."""
    views = [view for digit in digits for view in digit.views]
    probabilities = np.asarray(predict(np.stack(views)))
    means, start = [], 0
    for digit in digits:
        means.append(probabilities[start:start + len(digit.views)].mean(axis=0))
        start += len(digit.views)
    return np.stack(means)


def working_size(pixels):
    """The image at a size the steps work well on: large photos shrunk (INTER_AREA), tiny
    images enlarged smoothly; colour kept."""
    height, width = pixels.shape[:2]
    longest = max(height, width)
    if longest > WORK_SIDE:
        scale, method = WORK_SIDE / longest, cv2.INTER_AREA
    elif longest < SMALL_SIDE:
        scale, method = SMALL_SIDE / longest, cv2.INTER_CUBIC
    else:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.clip(cv2.resize(pixels, size, interpolation=method), 0, 1)


def ink_darkness(colour, cropped=False):
    """An image where ink is dark and paper light, whatever the ink's colour or polarity.

    Polarity is the sign of the skew of the image's detail (the image less its blurred self):
    strokes are a minority of pixels that differ strongly one way, noise differs both ways.
    A digit's own crop may be half ink: there the paper is what its rim mostly shows.
    A coloured pen darkens at least one channel, so on light paper the darkest channel shows
    blue and red ink as well as black; on a dark board the brightest channel shows chalk.
    """
    grey = colour if colour.ndim == 2 else cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)
    if cropped:
        rim = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        dark_ink = float(np.median(rim)) >= float(grey.mean())
    else:
        small = shrunk(grey, 160)  # the sign needs no detail finer than this
        detail = small - cv2.GaussianBlur(small, (0, 0), max(small.shape) / 16)
        dark_ink = float(np.mean(detail ** 3)) <= 0
    if colour.ndim == 2:
        return grey if dark_ink else 1 - grey
    red, green, blue = cv2.split(colour)
    if dark_ink:
        return np.minimum(np.minimum(red, green), blue)
    return 1 - np.maximum(np.maximum(red, green), blue)


def shrunk(image, side):
    """The image with its longer side at most `side` pixels (pixels averaged)."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def remove_lighting(darkness, cropped=False):
    """(ink contrast in 0-1, the noise's deviation): each pixel's darkness below the paper
    around it, as a share of that paper's brightness.

    The paper is estimated by a morphological closing, which fills in every dark feature
    narrower than a quarter of the image (the strokes) and keeps shading that varies slowly,
    on a small copy, smoothed and enlarged back; dividing by it evens out the light. A digit's
    own small crop has no page to light: its paper is one level, its lightest pixels'.
    """
    height, width = darkness.shape
    if cropped:
        paper = np.full_like(darkness, max(float(np.percentile(darkness, 95)), 0.05))
    else:
        paper = paper_light(darkness)
    raw = (paper - darkness) / np.maximum(paper, 0.05)
    smooth = cv2.GaussianBlur(raw, (0, 0), max(0.7, max(height, width) / 700))
    # The paper's level and noise: from every fourth pixel of a page (mostly paper), from
    # the rim of a crop (which may be half ink).
    sample = (np.concatenate([smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1]]) if cropped
              else smooth[::2, ::2])
    centre = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - centre)))
    return np.clip(smooth - centre, 0, 1), noise


def paper_light(darkness):
    """The paper's brightness under the page's light, everywhere: a closing on a small copy,
    smoothed and enlarged back."""
    height, width = darkness.shape
    small_scale = 96 / max(height, width)
    small_size = (max(8, round(width * small_scale)), max(8, round(height * small_scale)))
    small = cv2.resize(darkness, small_size, interpolation=cv2.INTER_AREA)
    side = max(3, (min(small_size) // 4) | 1)  # odd
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    paper = cv2.morphologyEx(small, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_REPLICATE)
    paper = cv2.GaussianBlur(paper, (0, 0), 1.0)  # blockiness only: a shadow keeps its edge
    return cv2.resize(paper, (width, height), interpolation=cv2.INTER_LINEAR)


def otsu(values):
    """Otsu's threshold of values in 0-1."""
    as_bytes = np.uint8(np.round(np.clip(values, 0, 1) * 255)).reshape(1, -1)
    level, _ = cv2.threshold(as_bytes, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return level / 255


def thresholds(contrast, noise):
    """(low, high): the high one Otsu's, over the pixels that stand above the noise, the low
    one for the faint edges of strokes that reach a pixel above the high one. A blank page
    has no pixel above either."""
    floor = min(max(NOISE_SIGMAS * noise, 0.04), MAX_FLOOR)
    if float(contrast.max()) < max(MIN_INK_CONTRAST, 1.5 * floor):
        raise BlankImageError("no ink found: the image looks blank")
    high = max(otsu(contrast[contrast > floor]), 1.5 * floor, 0.5 * MIN_INK_CONTRAST)
    return max(floor, 0.45 * high), high


def seeded(candidates, seeds):
    """Hysteresis: the connected parts of candidates that hold at least one seed pixel."""
    count, labels = cv2.connectedComponents(np.uint8(candidates), connectivity=8)
    kept = np.zeros(count, bool)
    kept[np.unique(labels[seeds & candidates])] = True
    kept[0] = False
    return kept[labels]


def without_ruled_lines(mask):
    """(the mask without the ruled lines of lined or squared paper, the lines removed).

    A ruled line is a thin run of ink across most of the image; where a stroke crosses it,
    the ink there is thick, and stays.
    """
    lines = ruled_lines(mask) | ruled_lines(mask.T).T  # horizontal lines, then vertical ones
    return mask & ~lines, lines


def ruled_lines(mask):
    """The horizontal ruled lines in a mask: its long horizontal runs of ink that is thin
    across them, joined into lines that span most of its width."""
    height, width = mask.shape
    mask8 = np.uint8(mask)
    thickest = max(4, round(0.012 * height))  # a ruled line is at most this thick
    # Strokes thicker than a ruled line both ways (a digit's, where it crosses a line) stay;
    # the crossings of squared paper's lines are thin one way or the other, and go.
    side = thickest + 2
    thick = cv2.morphologyEx(mask8, cv2.MORPH_OPEN, np.ones((side, side), np.uint8))
    thin = mask8 & (1 - thick)
    runs = cv2.morphologyEx(thin, cv2.MORPH_OPEN, np.ones((1, max(8, width // 8)), np.uint8))
    if not runs.any():
        return np.zeros_like(mask)
    joined = cv2.dilate(runs, np.ones((3, 15), np.uint8))  # across small gaps, a tilt
    count, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    # Pieces on the same rows are one line, broken where a digit's stroke lies along it.
    pieces = sorted(range(1, count), key=lambda i: stats[i, cv2.CC_STAT_TOP])
    lines, spans = [], []
    for i in pieces:
        top, rows = stats[i, cv2.CC_STAT_TOP], stats[i, cv2.CC_STAT_HEIGHT]
        if lines and top < lines[-1][1]:
            lines[-1][0].append(i)
            lines[-1][1] = max(lines[-1][1], top + rows)
        else:
            lines.append([[i], top + rows])
    for members, _ in lines:
        span = sum(stats[i, cv2.CC_STAT_WIDTH] for i in members)
        spans.append((members, span))
    long_ones = [(members, span) for members, span in spans if span >= 0.75 * width]
    # One long thin run could be a digit's bar in a tight crop; paper has several.
    if len(long_ones) < 2 and not any(span >= 0.95 * width for _, span in long_ones):
        return np.zeros_like(mask)
    found = np.isin(labels, [i for members, _ in long_ones for i in members]) & (runs > 0)
    near = cv2.dilate(np.uint8(found), np.ones((3, 3), np.uint8))
    return (near > 0) & (thin > 0)
