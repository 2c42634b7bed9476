"""Metrics: scores from predicted probabilities, and the mean and spread over seeds.

Plain NumPy in, plain values out: accuracy, the confusion matrix, per-class precision,
recall and F1, the loss as Keras computes it. Imports nothing heavy.
"""

import numpy as np

from digitkit.config import NUM_CLASSES


def score(probabilities, labels, loss=None, accuracy=None):
    """Metrics from predicted class probabilities and true labels.

    loss and accuracy: what model.evaluate measured on the same images, recorded in place of
    the same figures computed here (the accuracy as the exact share of images it stands for).
    """
    predicted = probabilities.argmax(axis=1)
    confusion = np.bincount(labels * NUM_CLASSES + predicted,
                            minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
    true_positive = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    precision = np.divide(true_positive, predicted_count, out=np.zeros(NUM_CLASSES),
                          where=predicted_count > 0)
    recall = np.divide(true_positive, support, out=np.zeros(NUM_CLASSES), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(NUM_CLASSES),
                   where=(precision + recall) > 0)
    if accuracy is None:
        accuracy = float(true_positive.sum() / len(labels))
    else:  # a float32 share of images, such as 0.99119997, as the share it is: 0.9912
        accuracy = round(float(accuracy) * len(labels)) / len(labels)
    loss = negative_log_likelihood(probabilities, labels) if loss is None else float(loss)
    return dict(
        test_accuracy=accuracy, test_loss=loss,
        error_rate=round((1.0 - accuracy) * len(labels)) / len(labels),  # k/N exactly
        confusion_matrix=confusion,
        precision=precision, recall=recall, f1=f1, support=support,
        predicted=predicted, confidence=probabilities.max(axis=1), probabilities=probabilities,
    )


def negative_log_likelihood(probabilities, labels):
    """Mean cross-entropy of the true classes, clipped as Keras clips it (so the test loss
    matches model.evaluate())."""
    true_class_p = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1 - 1e-7)
    return float(-np.log(true_class_p).mean())


def top_confusions(confusion, class_names, count=5):
    """The most frequent (truth, predicted, times) off-diagonal pairs."""
    off_diagonal = confusion.copy()
    np.fill_diagonal(off_diagonal, 0)
    order = np.argsort(off_diagonal, axis=None)[::-1][:count]
    pairs = [np.unravel_index(i, confusion.shape) for i in order]
    return [(class_names[t], class_names[p], int(off_diagonal[t, p]))
            for t, p in pairs if off_diagonal[t, p] > 0]


def per_class_rows(scores, class_names):
    """Per-class precision, recall, F1 and support as JSON-ready dicts."""
    return [dict(label=class_names[i], precision=float(scores["precision"][i]),
                 recall=float(scores["recall"][i]), f1=float(scores["f1"][i]),
                 support=int(scores["support"][i])) for i in range(NUM_CLASSES)]


def mean_and_std(values):
    """Mean and sample standard deviation (0 for a single value); None when nothing to average."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def spread(runs, keys):
    """The runs' seeds, and each key's values over them with mean and standard deviation."""
    summary = dict(seeds=[run["seed"] for run in runs])
    for key in keys:
        summary[key] = [run[key] for run in runs]
        summary[f"{key}_mean"], summary[f"{key}_std"] = mean_and_std(summary[key])
    return summary


def answer(probabilities, class_names, min_confidence):
    """The prediction, its probability, whether it is unsure, and the next two candidates."""
    ranked = np.argsort(-probabilities)[:3]
    best = ranked[0]
    return dict(prediction=class_names[best], probability=float(probabilities[best]),
                unsure=bool(probabilities[best] < min_confidence),
                candidates=[dict(label=class_names[i], probability=float(probabilities[i]))
                            for i in ranked[1:]])
