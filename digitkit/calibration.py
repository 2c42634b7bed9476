"""Calibration: probabilities that mean what they say.

One temperature T is fitted on the validation split (never the test set); the model it
gives divides each network's logits by T before the softmax, in Keras' own layers, so every
program that loads model.keras gets the calibrated probabilities. The record says how well
they match the test set's accuracy before and after. Imports Keras at its top: import this
module only after backend.start.
"""

import math
import weakref

import keras
import numpy as np

from digitkit.config import EVAL_BATCH_SIZE, IMAGE_SHAPE
from digitkit.metrics import negative_log_likelihood
from digitkit.networks import averaged, networks

CALIBRATION_BINS = 15  # equal-width confidence bins of the expected calibration error
CONFIDENCE_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # tabulated on the validation split
BODIES = weakref.WeakKeyDictionary()  # network -> the model of all its layers but the last


def network_logits(model, images):
    """Each network's pre-softmax outputs, (networks, images, classes), in float64, for a
    model whose networks end in Dense(10, softmax) (not yet calibrated).

    Read from the input of the last Dense layer and its weights, so that a temperature can be
    fitted exactly without another forward pass per trial.
    """
    logits = []
    for network in networks(model):
        if network not in BODIES:  # built and traced once, however often it is asked
            BODIES[network] = keras.Sequential([keras.Input(shape=IMAGE_SHAPE),
                                                *network.layers[:-1]])
        features = BODIES[network].predict(images, batch_size=EVAL_BATCH_SIZE, verbose=0)
        kernel, bias = network.layers[-1].get_weights()
        logits.append(features.astype(np.float64) @ kernel + bias)
    return np.stack(logits)


def softmax_average(logits, temperature=1.0):
    """What the model outputs for those logits at a temperature: the members' mean softmax."""
    scaled = logits / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=-1, keepdims=True)).mean(axis=0)


def calibration_bins(probabilities, labels, bins=CALIBRATION_BINS):
    """Per equal-width bin of top probability (lo, hi]: images, accuracy, mean confidence."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    hits = np.bincount(index, weights=correct, minlength=bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return dict(count=count, accuracy=hits / count, confidence=confidence_sum / count)


def expected_calibration_error(probabilities, labels, bins=CALIBRATION_BINS):
    """ECE (Guo et al. 2017): the bins' |accuracy - confidence| weighted by their share of images."""
    table = calibration_bins(probabilities, labels, bins)
    filled = table["count"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float((gaps * table["count"][filled]).sum() / len(labels))


def fit_temperature(logits, labels, low=0.05, high=20.0, steps=80):
    """The temperature that minimises the negative log-likelihood of labels.

    Golden-section search on log(temperature), where the likelihood has one minimum.
    """
    def loss(log_t):
        """The negative log-likelihood at temperature exp(log_t)."""
        return negative_log_likelihood(softmax_average(logits, math.exp(log_t)), labels)

    ratio = (math.sqrt(5) - 1) / 2
    a, b = math.log(low), math.log(high)
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    loss_c, loss_d = loss(c), loss(d)
    for _ in range(steps):
        if loss_c < loss_d:
            b, d, loss_d = d, c, loss_c
            c = b - ratio * (b - a)
            loss_c = loss(c)
        else:
            a, c, loss_c = c, d, loss_d
            d = a + ratio * (b - a)
            loss_d = loss(d)
    return math.exp((a + b) / 2)


def with_temperature(model, temperature):
    """A new model: each network of model with its logits divided by temperature.

    A network's last layer, Dense(10, softmax), becomes the same Dense without its softmax
    (the logits, the same weights), then Rescaling(1 / T) named "temperature", then Softmax:
    plain Keras layers, so model.keras loads with keras.models.load_model alone, and the
    model's summary shows the step. The other layers are shared, weights and all.
    """
    def tempered(network):
        """One network with the temperature before its softmax."""
        output = network.layers[-1]
        logits = keras.layers.Dense(output.units, name="logits")
        tempered = keras.Sequential([keras.Input(shape=IMAGE_SHAPE), *network.layers[:-1],
                                     logits, keras.layers.Rescaling(1 / temperature,
                                                                    name="temperature"),
                                     keras.layers.Softmax(name="output")], name=network.name)
        logits.set_weights(output.get_weights())
        return tempered

    members = [tempered(network) for network in networks(model)]
    return members[0] if isinstance(model, keras.Sequential) else averaged(members, model.name)


def unsure_table(probabilities, labels, levels=CONFIDENCE_LEVELS):
    """For each --min-confidence level: the share of answers called unsure, and how often the
    sure and the unsure answers are right."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    rows = []
    for level in levels:
        unsure = confidence < level
        rows.append(dict(
            min_confidence=level, unsure_share=float(unsure.mean()),
            sure_accuracy=float(correct[~unsure].mean()) if (~unsure).any() else None,
            unsure_accuracy=float(correct[unsure].mean()) if unsure.any() else None))
    return rows


def calibration_figures(probabilities, labels):
    """ECE, NLL and the reliability bins of some probabilities, as JSON-ready values."""
    return dict(ece=expected_calibration_error(probabilities, labels),
                nll=negative_log_likelihood(probabilities, labels),
                reliability={key: [None if np.isnan(v) else float(v) for v in values]
                             for key, values in calibration_bins(probabilities, labels).items()})


def calibrate(model, data):
    """Fit a temperature on the validation split; returns the model with it and the record.

    model: a trained inference model (networks.for_inference). The record holds the
    temperature, the test set's ECE and NLL before and after, their reliability bins, and
    the unsure table on the validation split. Without a validation split nothing is fitted:
    the model comes back as it was, and the record says so (temperature 1).
    """
    test_logits = network_logits(model, data["x_test"])
    before = softmax_average(test_logits)
    record = dict(fitted=False, temperature=1.0, validation_size=len(data["x_val"]),
                  bins=CALIBRATION_BINS)
    after, validation, calibrated = before, None, model
    if len(data["x_val"]):
        validation_logits = network_logits(model, data["x_val"])
        temperature = fit_temperature(validation_logits, data["y_val"])
        calibrated = with_temperature(model, temperature)
        after = softmax_average(test_logits, temperature)
        validation = softmax_average(validation_logits, temperature)
        record.update(fitted=True, temperature=temperature)
    record.update(before=calibration_figures(before, data["y_test"]),
                  after=calibration_figures(after, data["y_test"]))
    if validation is not None:
        record["validation_unsure"] = unsure_table(validation, data["y_val"])
    return calibrated, record
