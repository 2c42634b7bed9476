"""Ink: find the handwritten digits in a photo, scan or drawing, as a person would, and turn
each into an MNIST image (white ink on black, fitted to 20x20, centred by its mass in 28x28).

The steps, each a function below: shrink a large photo to a working size; tell the ink from
the paper (dark pen on light paper, or chalk on a board); divide out the page's uneven light;
pick the ink with an automatic threshold (Otsu's, bounded below by the measured noise, with
hysteresis); drop ruled and squared lines, specks, and what belongs to the page's edge or a
shadow; group what is left into digits read left to right; then MNIST's own recipe for each.
`read` returns the digits and every intermediate image (for --explain). Shared by --predict,
--draw and the Python API (digitkit.reader). Imports OpenCV (opencv-python-headless), NumPy
and nothing of TensorFlow; import it only where images are read.
"""

from dataclasses import dataclass, field

import cv2
import numpy as np

from digitkit.config import IMAGE_SHAPE

MNIST_BOX = 20  # MNIST fits each digit's longer side to 20 pixels...
MNIST_CENTRE_OF_MASS = 14.0  # ...and puts its centre of mass at the middle of 28x28
WORK_SIDE = 1024  # a larger photo is shrunk to this longer side first (averaging its pixels)
SMALL_SIDE = 160  # a smaller image (a 28x28 file, an 8x8 scan) is enlarged to this first
MIN_INK_CONTRAST = 0.12  # ink that differs from its paper by less than this: a blank page
NOISE_SIGMAS = 5.0  # the threshold stays this many noise deviations above the paper...
MAX_FLOOR = 0.4  # ...but however noisy the paper, ink this much darker than it is ink
MIN_AREA = 1e-4  # nor is a component with less ink than this share of the image
FAINT_AT_RIM = 0.4  # ink at the border fainter than this is the page's light, not a pen
PAGE_CONTACT = 0.12  # ink along this share of the image's rim is the page's, not a digit's
SPECK = 0.03  # a component with less ink than this share of the largest is a speck
TOO_WIDE = 1.3  # one digit is rarely wider than this many times its height
MNIST_STROKE = 0.12  # MNIST's strokes are about this share of the digit's longer side


class ImageError(Exception):
    """An image that cannot be classified: missing, unreadable or blank."""


class BlankImageError(ImageError):
    """An image with no ink on it."""


@dataclass
class Digit:
    """One digit found: its 28x28 MNIST image, its box in the working image (x, y, w, h),
    and why its segmentation is doubtful (None when it is not)."""

    image: np.ndarray
    box: tuple
    doubtful: str = None


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
        digits.append(Digit(mnist_image(contrast, group_mask, box), box, doubtful))
    return Reading(digits, steps)


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


def stroke_width(mask):
    """The mean width of the strokes in a mask: twice its area over its outline's length."""
    mask8 = np.uint8(mask)
    area = int(mask8.sum())
    if not area:
        return 0.0
    outline = area - int(cv2.erode(mask8, np.ones((3, 3), np.uint8)).sum())
    return 2 * area / max(outline, 1)


def digit_groups(mask, contrast, single, cropped=False):
    """[(mask of one digit, its box, why it is doubtful or None)], left to right. single:
    all ink is one digit; cropped: the image is the digits' own small crop, with no page."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(np.uint8(mask), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if not len(areas):
        return []
    least = max(6, MIN_AREA * mask.size)  # a speck of dust on a blank page is no digit
    parts = [i + 1 for i, area in enumerate(areas) if area >= least]
    if not (cropped or single):  # a photo of a page (a drawing pad has no page edge)
        parts = off_the_page_edge(parts, labels, stats, contrast)
    if not parts:
        return []
    largest = max(stats[i, cv2.CC_STAT_AREA] for i in parts)
    parts = [i for i in parts if stats[i, cv2.CC_STAT_AREA] >= SPECK * largest]
    boxes = {i: stats[i, :4].tolist() for i in parts}  # x, y, w, h
    groups = [[i] for i in sorted(parts, key=lambda i: boxes[i][0])]
    if single:
        groups = [parts]
    else:
        groups = merged_by_columns(groups, boxes)
        groups = on_one_line(groups, boxes)
    found = []
    for group in groups:
        group_mask = np.isin(labels, group)
        pieces = [group_mask] if single else split_touching(group_mask)
        doubtful = None if len(pieces) == 1 else "touching digits, split where the ink is thinnest"
        for piece in pieces:
            found.append((piece, box_of(piece), doubtful))
    return found


def box_of(mask):
    """The bounding box (x, y, w, h) of a mask's pixels."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def split_touching(mask):
    """A group too wide for one digit, cut where its ink is thinnest in its middle third,
    again while a piece is too wide; one piece if there is no such neck (a wide digit, a
    long bar)."""
    x, y, w, h = box_of(mask)
    if w <= TOO_WIDE * h:
        return [mask]
    columns = mask[y:y + h, x:x + w].sum(axis=0).astype(np.float32)
    inner = slice(w // 3, w - w // 3)  # digits of like widths meet in the middle third
    cut = inner.start + int(np.argmin(columns[inner]))
    if columns[cut] > 0.2 * columns.max():
        return [mask]
    left, right = mask.copy(), mask.copy()
    left[:, x + cut:] = False
    right[:, :x + cut] = False
    if not left.any() or not right.any():
        return [mask]
    if min(box_of(left)[3], box_of(right)[3]) < 0.6 * h:  # a 2's long tail, a 7's bar
        return [mask]
    return split_touching(left) + split_touching(right)


def off_the_page_edge(parts, labels, stats, contrast):
    """The parts less those that belong to the page rather than the writing: one that runs
    along the image's border for a long stretch (the page's edge, a shadow, the table),
    covers half the image, or touches the border and is faint (what is left of the light
    falling off there). A pen's stroke that touches the border is dark, and is kept."""
    rim = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    contact = np.bincount(rim, minlength=len(stats))
    peak = np.zeros(len(stats), np.float32)
    np.maximum.at(peak, labels.ravel(), contrast.ravel())
    return [i for i in parts
            if contact[i] < PAGE_CONTACT * len(rim)
            and not (contact[i] and peak[i] < FAINT_AT_RIM)
            and stats[i, cv2.CC_STAT_WIDTH] * stats[i, cv2.CC_STAT_HEIGHT] < 0.5 * labels.size]


def merged_by_columns(groups, boxes):
    """Groups whose columns overlap by much of the narrower one's width are one digit
    (a 5's separate bar, a 4 written in two strokes, a broken pencil line)."""
    def extent(group):
        """The columns a group spans."""
        return (min(boxes[i][0] for i in group), max(boxes[i][0] + boxes[i][2] for i in group))

    merged = [groups[0]]
    for group in groups[1:]:
        (a0, a1), (b0, b1) = extent(merged[-1]), extent(group)
        overlap = min(a1, b1) - max(a0, b0)
        if overlap > 0.5 * min(a1 - a0, b1 - b0):
            merged[-1] = merged[-1] + group
        else:
            merged.append(group)
    return merged


def on_one_line(groups, boxes):
    """The groups that stand on the line of the tallest one and are tall enough to be digits
    (a dash, a dot or a stray mark above or below is dropped)."""
    def rows(group):
        """The rows a group spans."""
        return (min(boxes[i][1] for i in group), max(boxes[i][1] + boxes[i][3] for i in group))

    tallest = max(groups, key=lambda g: rows(g)[1] - rows(g)[0])
    top, bottom = rows(tallest)
    height = bottom - top
    kept = []
    for group in groups:
        g0, g1 = rows(group)
        centre = (g0 + g1) / 2
        if g1 - g0 >= 0.4 * height and top - 0.25 * height <= centre <= bottom + 0.25 * height:
            kept.append(group)
    return kept


def mnist_image(contrast, group_mask, box):
    """One digit as MNIST's: its ink (strokes saturated, the paper zero), thickened to MNIST's
    stroke width if it is thinner (pencil), its box fitted to 20x20 keeping the aspect ratio,
    anti-aliased, and centred by its centre of mass in 28x28."""
    x, y, w, h = box
    margin = max(2, round(0.05 * max(w, h)))
    y0, y1 = max(0, y - margin), min(contrast.shape[0], y + h + margin)
    x0, x1 = max(0, x - margin), min(contrast.shape[1], x + w + margin)
    mask = group_mask[y0:y1, x0:x1]
    crop = contrast[y0:y1, x0:x1]
    strong = float(np.percentile(crop[mask], 90)) if mask.any() else 1.0
    near = cv2.dilate(np.uint8(mask), np.ones((3, 3), np.uint8)) > 0
    ink = np.clip(crop / max(strong, 1e-3), 0, 1) * near
    target = MNIST_STROKE * max(w, h)
    width = stroke_width(mask)
    if width < 0.6 * target:  # a thin pencil line would vanish at 20x20
        radius = max(1, round((0.8 * target - width) / 2))
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        ink = cv2.dilate(ink.astype(np.float32), disk)
    rows, cols = np.flatnonzero(ink.max(axis=1) > 0.05), np.flatnonzero(ink.max(axis=0) > 0.05)
    ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return centred(ink)


def centred(ink):
    """A cropped digit fitted to 20x20 (aspect kept, anti-aliased) and placed so that its
    centre of mass lies where MNIST's do, in a 28x28 field of float32 in 0-1."""
    height, width = ink.shape
    scale = MNIST_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    method = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    patch = np.clip(cv2.resize(ink.astype(np.float32), size, interpolation=method), 0, None)
    patch /= max(float(patch.max()), 1e-6)
    ys, xs = np.indices(patch.shape)
    mass = patch.sum()
    top = int(round(MNIST_CENTRE_OF_MASS - (ys * patch).sum() / mass))
    left = int(round(MNIST_CENTRE_OF_MASS - (xs * patch).sum() / mass))
    top = min(max(top, 0), IMAGE_SHAPE[0] - patch.shape[0])
    left = min(max(left, 0), IMAGE_SHAPE[1] - patch.shape[1])
    field_ = np.zeros(IMAGE_SHAPE, dtype=np.float32)
    field_[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
    return field_
