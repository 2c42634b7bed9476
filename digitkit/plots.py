"""Plots: every picture of a run, each drawn on its own figure, saved whole, and closed.

Each function takes arrays and a path and returns the path; the confusion-matrix heatmap is
Seaborn's. Imports Matplotlib (on its file-only Agg backend, except in a notebook, which
keeps its inline one) and Seaborn at its top: import this module only when a run has
pictures to draw.
"""

import math
import sys
import textwrap
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a notebook keeps its own inline backend
    matplotlib.use("Agg")  # files only: no window, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from digitkit.backend import import_without  # noqa: E402
from digitkit.config import DATASETS, MISCLASSIFIED_SHOWN, NUM_CLASSES  # noqa: E402
from digitkit.files import write_atomically  # noqa: E402
from digitkit.robustness import CORRUPTIONS, corrupt  # noqa: E402

# Seaborn imports SciPy's statistics for its density estimates (the cost: docs/performance.md);
# the heatmap, the one Seaborn plot here, never uses them, and Seaborn works without SciPy.
sns = import_without("seaborn", ["scipy.stats"])


def save_figure(fig, path):
    """Save a figure atomically as PNG and close it."""
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return path


def plot_confusion_matrix(confusion, class_names, title, path, normalize=False):
    """Seaborn heatmap of the confusion matrix: counts, or each row as recall."""
    fig, ax = plt.subplots(figsize=(10, 7))
    if normalize:
        rows = confusion.sum(axis=1, keepdims=True)
        values = 100 * np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
        # Cells that no test image reached stay blank, and one decimal of a percent keeps a
        # single mistake in a class of a thousand visible (0.1%) where "0.00" would hide it.
        labels = np.where(confusion > 0, np.char.mod("%.1f%%", values), "")
        sns.heatmap(values, annot=labels, fmt="", cmap="Blues", vmin=0, vmax=100, ax=ax,
                    xticklabels=class_names, yticklabels=class_names,
                    cbar_kws={"label": "% of the true class"})
    else:
        sns.heatmap(confusion, annot=True, fmt="d", cmap="Blues", ax=ax,
                    xticklabels=class_names, yticklabels=class_names,
                    cbar_kws={"label": "test images"})
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Truth")
    ax.set_title(title)
    rotate_long_ticks(ax, class_names)
    fig.tight_layout()
    return save_figure(fig, path)


def rotate_long_ticks(ax, class_names):
    """Slant x tick labels that would otherwise overlap (Fashion-MNIST names)."""
    ax.tick_params(axis="y", labelrotation=0)
    if max(len(name) for name in class_names) > 3:
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")


def plot_training_curves(history, kept_epoch, dataset_title, path, config):
    """Loss and accuracy per epoch, training and validation, with the kept epoch marked."""
    # What the training figures are: Keras averages them over the epoch's batches, as the
    # model saw them, so distorted images and, for a committee, the members' mean.
    training = ("training" + (" (distorted images)" if config.augment else "")
                + (" (members' mean)" if config.committee > 1 else ""))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    epochs = [row["epoch"] for row in history]
    for ax, metric, label in ((axes[0], "loss", "loss (cross-entropy)"),
                              (axes[1], "accuracy", "accuracy")):
        for key, name, colour in ((metric, training, "tab:blue"),
                                  (f"val_{metric}", "validation", "tab:orange")):
            if any(key in row for row in history):
                ax.plot(epochs, [row.get(key, np.nan) for row in history], marker="o",
                        markersize=3, color=colour, label=name)
        if history and kept_epoch != epochs[-1]:
            ax.axvline(kept_epoch, color="tab:green", linestyle="--",
                       label=f"kept weights (epoch {kept_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    validated = any("val_loss" in row for row in history)
    fig.suptitle(f"{dataset_title}: training {'and validation ' if validated else ''}curves")
    fig.tight_layout()
    return save_figure(fig, path)


TILE = 28  # pixels of one image in a mosaic
GAP = 6  # pixels of paper between two tiles
INCHES_PER_PIXEL = 1.5 / (TILE + GAP)  # a tile and its gap 1.5 inches wide, as one axis was


def mosaic(images, columns, above=0, left=0):
    """The images tiled row by row onto white paper: (canvas, the (x, y) each tile's centre
    has on it). `above` pixels over each tile hold its caption, `left` pixels before each row
    its label."""
    rows = max(1, math.ceil(len(images) / columns))
    cell_w, cell_h = TILE + GAP, TILE + GAP + above
    canvas = np.ones((rows * cell_h, left + columns * cell_w), np.float32)
    centres = []
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        top, start = row * cell_h + above + GAP // 2, left + column * cell_w + GAP // 2
        canvas[top:top + TILE, start:start + TILE] = image
        centres.append((start + TILE / 2, top + TILE / 2))
    return canvas, centres


def mosaic_figure(canvas, title):
    """A figure showing the canvas pixel for pixel (no axis per image), a title above it."""
    height, width = canvas.shape
    # Wrapped to the picture's width, so that a mosaic of one or two images shows it whole.
    per_line = max(16, int(width * INCHES_PER_PIXEL * 72 / (14.4 * 0.55)))
    title = "\n".join(textwrap.wrap(title, per_line)) or title
    title_inches = 0.35 + 0.25 * (title.count("\n") + 1)
    fig = plt.figure(figsize=(width * INCHES_PER_PIXEL,
                              height * INCHES_PER_PIXEL + title_inches))
    image_share = height * INCHES_PER_PIXEL / fig.get_figheight()
    ax = fig.add_axes((0, 0, 1, image_share))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.axis("off")
    fig.suptitle(title, y=1 - 0.25 * title_inches / fig.get_figheight(), va="top")
    return fig, ax


def plot_digit_grid(images, captions, title, path, columns=8, caption_colours=None):
    """A grid of 28x28 images, each with a caption over it; white digits on black as the model
    sees them. One picture (a mosaic), not an axis per image: drawing 40 axes took seconds."""
    lines = max((caption.count("\n") + 1 for caption in captions), default=1)
    canvas, centres = mosaic(images, columns, above=10 * lines + 2)
    fig, ax = mosaic_figure(canvas, title)
    for i, (x, y) in enumerate(centres):
        # A file name is shown as it is: a $ would start Matplotlib's math text.
        ax.text(x, y - TILE / 2 - 2, captions[i].replace("$", r"\$"), ha="center",
                va="bottom", fontsize=8.5,
                color=caption_colours[i] if caption_colours else "black")
    return save_figure(fig, path)


def plot_misclassified(x_test, y_test, scores, class_names, dataset_title, path,
                       limit=MISCLASSIFIED_SHOWN):
    """The test images the model got wrong, most confident mistakes first."""
    wrong = np.flatnonzero(scores["predicted"] != y_test)
    wrong = wrong[np.argsort(-scores["confidence"][wrong], kind="stable")]
    shown = wrong[:limit]
    if len(wrong) == 0:
        title = f"{dataset_title} test set: no misclassified images"
    elif len(wrong) <= limit:
        title = f"{dataset_title} test set: all {len(wrong)} misclassified images, most confident first"
    else:
        title = (f"{dataset_title} test set: the {limit} most confident of "
                 f"{len(wrong)} misclassified images")
    captions = [f"true {class_names[y_test[i]]}\npred {class_names[scores['predicted'][i]]} "
                f"{scores['confidence'][i]:.1%}" for i in shown]
    plot_digit_grid(x_test[shown], captions, title, path, columns=8)
    return len(shown)


def plot_samples(x_train, y_train, class_names, dataset_title, path, per_class=10, seed=0):
    """A few training images of each class, one row per class labelled on the left."""
    rng = np.random.default_rng(seed)
    images = []
    for label in range(NUM_CLASSES):
        candidates = np.flatnonzero(y_train == label)
        picks = rng.choice(candidates, size=min(per_class, len(candidates)), replace=False)
        images += [x_train[i] for i in picks]
        images += [np.ones((TILE, TILE), np.float32)] * (per_class - len(picks))  # paper
    label_pixels = 12 + 6 * max(len(name) for name in class_names)
    canvas, centres = mosaic(images, per_class, left=label_pixels)
    fig, ax = mosaic_figure(canvas, f"{dataset_title} training set: {per_class} random "
                                    f"samples per class")
    for label, name in enumerate(class_names):
        ax.text(label_pixels - 4, centres[label * per_class][1], name, ha="right",
                va="center", fontsize=10)
    return save_figure(fig, path)


def plot_calibration(calibration, dataset_title, path):
    """Reliability diagrams before and after temperature scaling, with the images per bin."""
    panels = [("before", "the saved model" if calibration.get("saved_model") else "as trained")]
    if calibration["fitted"]:
        panels.append(("after", f"temperature {calibration['temperature']:.2f}"))
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 7.5), squeeze=False,
                             sharex=True, gridspec_kw=dict(height_ratios=(3, 1)))
    bins = calibration["bins"]
    centres = (np.arange(bins) + 0.5) / bins
    for column, (key, label) in enumerate(panels):
        table = calibration[key]["reliability"]
        accuracy = np.array([np.nan if a is None else a for a in table["accuracy"]])
        confidence = np.array([np.nan if c is None else c for c in table["confidence"]])
        ax, counts = axes[0, column], axes[1, column]
        ax.bar(centres, np.nan_to_num(accuracy), width=1 / bins, edgecolor="black",
               color="tab:blue", label="accuracy in the bin")
        ax.bar(centres, np.nan_to_num(confidence - accuracy), bottom=np.nan_to_num(accuracy),
               width=1 / bins, color="tab:red", alpha=0.3, edgecolor="tab:red",
               label="gap to the mean confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{label}: ECE {calibration[key]['ece']:.2%}, "
                     f"NLL {calibration[key]['nll']:.4f}")
        ax.legend(loc="upper left", fontsize=9)
        counts.bar(centres, table["count"], width=1 / bins, color="grey", edgecolor="black")
        counts.set_yscale("log")
        counts.set_ylabel("test images")
        counts.set_xlabel("top probability (confidence)")
    fitted = ("temperature fitted on the validation split" if calibration["fitted"]
              else "probabilities as saved" if calibration.get("saved_model")
              else "no calibration fitted: no validation split")
    fig.suptitle(f"{dataset_title} test set: reliability diagram, {bins} bins ({fitted})")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_robustness(robustness_record, dataset_title, path):
    """Accuracy against severity, one line per corruption, the clean accuracy marked."""
    fig, ax = plt.subplots(figsize=(10, 6))
    corruptions = robustness_record["corruptions"]
    colours = sns.color_palette("tab10", len(corruptions))
    markers = "osD^v<>ph"
    clean = robustness_record["clean_accuracy"]
    for (name, result), colour, marker in zip(corruptions.items(), colours, markers):
        values = [clean, *result["accuracy"]]
        ax.plot(range(len(values)), [100 * v for v in values], marker=marker, color=colour,
                label=f"{name} ({result['parameter']}: "
                      f"{', '.join(map(str, result['levels']))})")
    ax.axhline(100 * clean, color="black", linestyle="--", linewidth=1,
               label=f"clean ({clean:.2%} of the {robustness_record['images']:,} test images)")
    ax.set_xticks(range(4), ["clean", "1", "2", "3"])
    ax.set_xlabel("severity")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8.5, loc="lower left")
    ax.set_title(f"{dataset_title} test set under corruptions: mean accuracy "
                 f"{robustness_record['mean_accuracy']:.2%} over all 27")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_corruption_examples(image, dataset_title, path):
    """One test image under every corruption and severity: what robustness.png measures."""
    images, captions = [], []
    for name in CORRUPTIONS:
        for severity in range(4):
            images.append(corrupt(image[None], name, severity)[0])
            captions.append(f"{name}\n{'clean' if severity == 0 else f'severity {severity}'}")
    return plot_digit_grid(np.stack(images), captions,
                           f"{dataset_title}: the corruptions of robustness.png, on one test image",
                           path, columns=12)


def draw_pictures(output_dir, data, scores, config, training, calibration=None):
    """Every picture of one evaluated model but the confusion-matrix heatmap, which the
    caller draws first, and robustness.png, which needs the robustness check's figures
    (add_robustness_picture); returns their paths in page order."""
    output_dir = Path(output_dir)
    class_names, title = DATASETS[config.dataset]["classes"], DATASETS[config.dataset]["title"]
    images = []
    if training and training["history"]:
        images.append(plot_training_curves(training["history"], training["kept_epoch"], title,
                                           output_dir / "training_curves.png", config))
    images.append(plot_confusion_matrix(
        scores["confusion_matrix"], class_names,
        f"{title} test set: confusion matrix normalised by true class (recall)",
        output_dir / "confusion_matrix_normalized.png", normalize=True))
    plot_misclassified(data["x_test"], data["y_test"], scores, class_names, title,
                       output_dir / "misclassified.png")
    images.append(output_dir / "misclassified.png")
    if calibration:
        images.append(plot_calibration(calibration, title, output_dir / "calibration.png"))
    images.append(plot_corruption_examples(data["x_test"][0], title,
                                           output_dir / "corruptions.png"))
    images.append(plot_samples(data["x_train"], data["y_train"], class_names, title,
                               output_dir / "samples.png", seed=config.seed))
    return images


def add_robustness_picture(images, robustness_record, config):
    """Draw robustness.png beside draw_pictures' images and add it to their list where the
    page shows it: before corruptions.png."""
    corruptions = next(path for path in images if Path(path).name == "corruptions.png")
    images.insert(images.index(corruptions), plot_robustness(
        robustness_record, DATASETS[config.dataset]["title"],
        Path(corruptions).parent / "robustness.png"))


def plot_reading(reading, result, name, path):
    """How one image was read (--explain): the photo, the ink found with the lighting evened
    out, the ink kept with each digit's box (ruled lines dropped, in red), and each digit as
    the model saw it with its answer."""
    digits = result.get("digits", [result])
    steps = reading.steps
    columns = max(3, len(digits))
    fig = plt.figure(figsize=(3.2 * 3, 6.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(1.6, 1))
    axes = top.subplots(1, 3)
    photo = steps["photo"]
    axes[0].imshow(photo, cmap="gray" if photo.ndim == 2 else None, vmin=0, vmax=1)
    axes[0].set_title("the image")
    axes[1].imshow(steps["ink"], cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("ink, lighting evened out")
    kept = np.stack([steps["lines"], steps["mask"], steps["mask"]], axis=-1).astype(np.float32)
    axes[2].imshow(kept)
    for k, digit in enumerate(reading.digits, start=1):
        x, y, w, h = digit.box
        axes[2].add_patch(plt.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, lw=1.2,
                                        ec="tab:orange" if digit.doubtful else "tab:green"))
        axes[2].text(x, y - 2, str(k), color="tab:green", fontsize=9, va="bottom")
    axes[2].set_title(f"kept: {len(reading.digits)} digit{'s' * (len(reading.digits) > 1)}")
    for ax in axes:
        ax.axis("off")
    small = bottom.subplots(1, columns, squeeze=False)[0]
    for ax in small:
        ax.axis("off")
    for ax, digit, said in zip(small, reading.digits, digits):
        ax.imshow(digit.image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{said['prediction']} ({said['probability']:.0%})", fontsize=10,
                     color="tab:red" if said["unsure"] else "black")
    doubt = f"; {result['doubtful']}" if result.get("doubtful") else ""
    fig.suptitle(f"{name}: {result['prediction']} ({result['probability']:.1%})"
                 f"{' unsure' if result['unsure'] else ''}{doubt}".replace("$", r"\$"))
    path.parent.mkdir(exist_ok=True)
    return save_figure(fig, path)
