"""Photo-style digits: MNIST test digits redrawn as a phone photographs handwriting, and the
accuracy of a saved model on them, condition by condition.

    python benchmarks/photos.py --data-dir ../shared/data/mnist --model outputs/model.keras \\
        --count 1000

Each condition renders `--count` test digits (the first ones, in order) onto a photographed
page: grey paper, light falling off across it, the digit small and off-centre, a slight blur
and JPEG compression, and what the condition adds (sensor noise, ruled or squared paper,
coloured ink, a pencil's thin grey stroke, chalk on a blackboard, a shadow). "numbers" puts
2-4 consecutive test digits side by side, as a house number or a year is written; --uci adds
the UCI handwritten digits (43 writers, 8x8) that scikit-learn ships. The images
go through the same reading as `--predict` (digitkit.ink) and the model; the script prints
one row per condition (right answers, and the share of answers called sure that are right).
The tests import the renderer (tests/test_own_digits.py); nothing here is used by the
program itself.
"""

import argparse
import functools
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
PAGE = (480, 640)  # height, width of the photo

CONDITIONS = ("clean", "noise", "lined", "squared", "blue-ink", "red-ink", "pencil",
              "chalk", "shadow", "small", "numbers")


def stroke_alpha(digit, height, rng, thin=False):
    """The digit's ink coverage (0-1) at `height` pixels tall: MNIST's grey levels as a pen's
    stroke, enlarged smoothly; a pencil's stroke is thinner."""
    image = Image.fromarray(np.uint8(digit)).resize((height, height), Image.BICUBIC)
    alpha = np.clip(np.asarray(image, np.float32) / 255, 0, 1)
    if thin:  # a fine line: keep the stroke's core only
        alpha = np.clip((alpha - 0.55) / 0.3, 0, 1)
    else:
        alpha = np.clip((alpha - 0.2) / 0.5, 0, 1)
    rows, cols = np.flatnonzero(alpha.max(axis=1) > 0), np.flatnonzero(alpha.max(axis=0) > 0)
    return alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def lighting(rng, shape):
    """Light across the page: a linear fall-off in a random direction and a soft vignette."""
    across, down, radius = page_grid(shape)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * across + np.sin(angle) * down
    light = 1 + rng.uniform(0.3, 0.6) * ramp
    return light * (1 - rng.uniform(0.1, 0.3) * radius)


@functools.lru_cache(maxsize=4)
def page_grid(shape):
    """Each pixel's place on the page, -0.5 to 0.5 across and down (float32), and its squared
    distance from the centre: the same for every photo, so made once."""
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    across, down = xs / width - 0.5, ys / height - 0.5
    return across, down, across ** 2 + down ** 2


def page(rng, condition):
    """The paper (RGB, 0-1) before any ink, and the ink's colour."""
    height, width = PAGE
    grey = rng.uniform(0.6, 0.85)
    tint = np.array([1.0, rng.uniform(0.96, 1.0), rng.uniform(0.88, 0.98)], np.float32)
    paper = np.full((height, width, 3), np.float32(grey) * tint)  # ones * grey * tint
    ink = np.full(3, rng.uniform(0.05, 0.2), np.float32)
    if condition in ("lined", "squared"):  # light blue rules, ~1-2 px, every 28-36 px
        rule = np.array([0.55, 0.65, 0.9], np.float32) * grey
        step = int(rng.integers(28, 37))
        thickness = int(rng.integers(1, 3))
        for y in range(int(rng.integers(5, step)), height, step):
            paper[y:y + thickness] = rule
        if condition == "squared":
            for x in range(int(rng.integers(5, step)), width, step):
                paper[:, x:x + thickness] = rule
    if condition == "blue-ink":
        ink = np.array([0.1, 0.15, 0.55], np.float32) * rng.uniform(0.7, 1.1)
    elif condition == "red-ink":
        ink = np.array([0.7, 0.1, 0.12], np.float32) * rng.uniform(0.8, 1.1)
    elif condition == "pencil":
        ink = np.full(3, rng.uniform(0.3, 0.42), np.float32) * grey / 0.75
    elif condition == "chalk":  # a dark green-grey board, white chalk
        paper = np.ones((height, width, 3), np.float32) * np.array([0.16, 0.22, 0.2]) * \
            rng.uniform(0.8, 1.2)
        ink = np.full(3, rng.uniform(0.75, 0.9), np.float32)
    return paper, ink


def photograph(digits, rng, condition):
    """One photo (a PIL RGB image) of the digits, written side by side."""
    height, width = PAGE
    paper, ink = page(rng, condition)
    tall = int(rng.integers(20, 32)) if condition == "small" else int(rng.integers(70, 150))
    alphas = [stroke_alpha(d, tall, rng, thin=condition == "pencil") for d in digits]
    gaps = [int(rng.integers(tall // 8, tall // 3)) for _ in alphas[1:]]  # none: a blank page
    total = sum(a.shape[1] for a in alphas) + sum(gaps)
    coverage = np.zeros((height, width), np.float32)
    top = int(rng.integers(10, height - tall - 10))
    left = int(rng.integers(10, max(11, width - total - 10)))
    for alpha, gap in zip(alphas, [0, *gaps]):
        left += gap
        h, w = alpha.shape
        y = top + int(rng.integers(-tall // 10, tall // 10 + 1)) if len(alphas) > 1 else top
        y = min(max(y, 0), height - h)
        coverage[y:y + h, left:left + w] = np.maximum(coverage[y:y + h, left:left + w],
                                                      alpha[:, :min(w, width - left)])
        left += w
    # Ink over paper: paper * (1 - coverage) + ink * coverage, worked out only where there is
    # ink (elsewhere it is the paper, to the bit), which is a small part of the page.
    photo = paper.astype(np.result_type(paper, ink, coverage))
    rows, cols = np.flatnonzero(coverage.any(axis=1)), np.flatnonzero(coverage.any(axis=0))
    if len(rows):  # none on a blank page
        inked = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        under = coverage[inked][..., None]
        photo[inked] = paper[inked] * (1 - under) + ink * under
    photo = photo * lighting(rng, (height, width))[..., None]
    if condition == "shadow":  # a hand's or phone's shadow over one corner
        ys, xs = np.mgrid[0:height, 0:width]
        corner = (ys / height + xs / width) < rng.uniform(0.5, 0.8)
        soft = np.asarray(Image.fromarray(np.uint8(corner * 255)).filter(
            ImageFilter.GaussianBlur(15)), np.float32) / 255
        photo = photo * (1 - 0.45 * soft[..., None])
    if condition not in ("clean",):
        photo += rng.normal(0, rng.uniform(0.025, 0.05), photo.shape)  # sensor noise
    image = Image.fromarray(np.uint8(np.clip(photo, 0, 1, out=photo) * 255), "RGB")
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.2)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(70, 92)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def rendered(x_test, y_test, condition, count, seed=0):
    """(photo, label text) for the first `count` test digits (or numbers) in a condition."""
    rng = np.random.default_rng([seed, CONDITIONS.index(condition)])
    position = 0
    for _ in range(count):
        n = int(rng.integers(2, 5)) if condition == "numbers" else 1
        picked = [(position + i) % len(x_test) for i in range(n)]
        position += n
        label = "".join(str(int(y_test[i])) for i in picked)
        yield photograph([x_test[i] for i in picked], rng, condition), label


def measure(model_path, x_test, y_test, conditions, count):
    """Rows of (condition, right, count, sure and right, sure) with the program's reading."""
    from digitkit import backend
    from digitkit.config import Config

    backend.start(Config())
    from digitkit.reader import DigitReader

    reader = DigitReader.load(model_path)
    for condition in conditions:
        right = sure = sure_right = 0
        for photo, label in rendered(x_test, y_test, condition, count):
            result = reader.read(np.asarray(photo))
            right += result["prediction"] == label
            sure += not result["unsure"]
            sure_right += (not result["unsure"]) and result["prediction"] == label
        yield condition, right, count, sure_right, sure


def uci_digits():
    """The UCI optical digits scikit-learn ships (1,797 images, 8x8, 43 writers) as (image,
    label) pairs: uint8 grey images, white ink on black as the 0-16 counts give it."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for image, label in zip(digits.images, digits.target):
        yield np.uint8(np.round(image * 255 / 16)), str(int(label))


def measure_uci(model_path):
    """(right, count) on the UCI digits with the program's reading."""
    from digitkit.reader import DigitReader

    reader = DigitReader.load(model_path)
    results = [reader.read(image)["prediction"] == label for image, label in uci_digits()]
    return sum(results), len(results)


def main(argv=None):
    """Print the accuracy table for the conditions asked for."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS),
                        choices=CONDITIONS)
    parser.add_argument("--uci", action="store_true", help="also the UCI handwritten digits "
                        "scikit-learn ships (pip install scikit-learn)")
    parser.add_argument("--save", type=Path, help="also save the first 8 photos of each "
                        "condition here, to look at")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from digitkit import data

    arrays, _ = data.read_data_dir(args.data_dir, "mnist")
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for condition in args.conditions:
            for i, (photo, label) in enumerate(rendered(x_test, y_test, condition, 8)):
                photo.save(args.save / f"{condition}-{i}-label{label}.jpg", quality=95)
    print(f"{'condition':<10} {'right':>14} {'sure and right':>16}   ({args.model}, "
          f"{args.count} images each)")
    started = time.perf_counter()
    for condition, right, count, sure_right, sure in measure(
            args.model, x_test, y_test, args.conditions, args.count):
        print(f"{condition:<10} {right:>5}/{count} {right / count:6.2%} "
              f"{sure_right:>6}/{sure} {sure_right / max(sure, 1):6.2%}", flush=True)
    if args.uci:
        right, count = measure_uci(args.model)
        print(f"{'uci':<10} {right:>5}/{count} {right / count:6.2%}")
    print(f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
