"""Digits: the ink found in an image (digitkit/ink.py) grouped into digits read left to
right, and each made an MNIST image (white on black, fitted to 20x20, centred by its mass in
28x28).

Specks and what belongs to the page (its edge, a shadow, the table) are dropped; parts whose
columns overlap are one digit; what does not stand on the line of the tallest digit goes; a
part too wide for one digit is cut at a thin neck. Imports OpenCV and NumPy only.
"""

import cv2
import numpy as np

from digitkit.config import IMAGE_SHAPE

MNIST_BOX = 20  # MNIST fits each digit's longer side to 20 pixels...
MNIST_CENTRE_OF_MASS = 14.0  # ...and puts its centre of mass at the middle of 28x28
MIN_AREA = 1e-4  # nor is a component with less ink than this share of the image
FAINT_AT_RIM = 0.4  # ink at the border fainter than this is the page's light, not a pen
PAGE_CONTACT = 0.12  # ink along this share of the image's rim is the page's, not a digit's
SPECK = 0.03  # a component with less ink than this share of the largest is a speck
TOO_WIDE = 1.3  # one digit is rarely wider than this many times its height
MNIST_STROKE = 0.12  # MNIST's strokes are about this share of the digit's longer side
THIN_STROKE = 0.6  # strokes thinner than this many times MNIST's are thickened (pencil)...
THICK_STROKE = 1.6  # ...thicker than this, also read thinned (a marker, an 8x8 scan)


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


def mnist_images(contrast, group_mask, box):
    """One digit as MNIST's: its ink (strokes saturated, the paper zero), thickened to MNIST's
    stroke width if it is thinner (pencil), its box fitted to 20x20 keeping the aspect ratio,
    anti-aliased, and centred by its centre of mass in 28x28.

    Returns the views of the digit the model reads (their probabilities are averaged): the
    ink as it is, and, for strokes far thicker than MNIST's (a marker, a coarse 8x8 scan), the
    ink thinned to MNIST's width as well. Thinning alone opens a 1's flag into a clean stroke
    but can break an 8's or a 9's narrow waist; the two views together read both.
    """
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
    if width < THIN_STROKE * target:  # a thin pencil line would vanish at 20x20
        radius = max(1, round((0.8 * target - width) / 2))
        ink = cv2.dilate(ink.astype(np.float32), disk(radius))
    views = [ink]
    if width > THICK_STROKE * target:
        cores = cv2.erode(np.uint8(mask), disk(max(1, round((width - target) / 2))))
        if cores.any():
            views.append(ink * (cv2.dilate(cores, np.ones((3, 3), np.uint8)) > 0))
    return [centred(trimmed(view)) for view in views]


def disk(radius):
    """A round structuring element of the given radius."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def trimmed(ink):
    """The ink cropped to the rows and columns that hold any."""
    rows, cols = np.flatnonzero(ink.max(axis=1) > 0.05), np.flatnonzero(ink.max(axis=0) > 0.05)
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


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
