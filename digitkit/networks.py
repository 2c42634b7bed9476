"""Networks: a committee side by side, the model that is saved, what it is, and what it knows.

The script builds one dense network; this module stacks several into a committee, strips
the training-only distortion and averages the members for the saved model, describes a
model in one line, and writes and reads the facts model.keras carries beside its weights
(the dataset it was trained on, hence its class names). Imports Keras at its top: import
this module only after backend.start.
"""

import json
import zipfile

import keras
from keras import layers

from digitkit.augment import RandomDistortion
from digitkit.config import DATASETS, EVAL_BATCH_SIZE, IMAGE_SHAPE, NUM_CLASSES
from digitkit.errors import RunError
from digitkit.files import write_atomically

METADATA_NAME = "digit_classifier.json"  # our entry in the model.keras zip; Keras ignores it
# What the model takes: MNIST's own format, which --predict turns any photo into (ink.py).
INPUT_FORMAT = dict(shape=list(IMAGE_SHAPE), dtype="float32", scale="0-1 (pixel / 255)",
                    polarity="white ink on black", layout="MNIST: the digit fitted to 20x20, "
                    "centred by its centre of mass in 28x28")


def committee(members):
    """Several networks side by side on the same input, their outputs stacked to
    (batch, members, 10), so that each member is trained on its own loss (the labels repeated
    once per member); for_inference averages them. Each member distorts every batch in its
    own way."""
    inputs = keras.Input(shape=IMAGE_SHAPE)
    stacked = [layers.Reshape((1, NUM_CLASSES))(member(inputs)) for member in members]
    return keras.Model(inputs, layers.Concatenate(axis=1, name="members")(stacked),
                       name="committee")


def for_inference(model):
    """The trained network without its training-only distortion, a committee averaged.

    This is what model.keras holds: plain Keras layers that any Keras program can load.
    """
    def strip(network):
        """A new Sequential of the network's layers minus the distortion, sharing the weights
        (a new model even when nothing is stripped: compiling it leaves the trained one be)."""
        kept = [layer for layer in network.layers if not isinstance(layer, RandomDistortion)]
        return keras.Sequential([keras.Input(shape=IMAGE_SHAPE), *kept], name=network.name)

    if isinstance(model, keras.Sequential):
        return strip(model)
    return averaged([strip(layer) for layer in model.layers
                     if isinstance(layer, keras.Sequential)], model.name)


def averaged(members, name):
    """One model whose answer is the mean of the members' probabilities."""
    inputs = keras.Input(shape=IMAGE_SHAPE)
    average = layers.Average(name="average")([member(inputs) for member in members])
    return keras.Model(inputs, average, name=name)


def networks(model):
    """The dense networks of an inference model: itself, or a committee's members."""
    if isinstance(model, keras.Sequential):
        return [model]
    return [layer for layer in model.layers if isinstance(layer, keras.Sequential)]


def member_accuracies(model, images, labels):
    """Each committee member's own accuracy on images; None for a single network."""
    if isinstance(model, keras.Sequential):
        return None
    return [float((member.predict(images, batch_size=EVAL_BATCH_SIZE, verbose=0).argmax(axis=1)
                   == labels).mean()) for member in networks(model)]


def describe_model(model):
    """The model summary as text, as Keras prints it."""
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines)


def architecture(model):
    """The layers of a saved-style model in one line, e.g. Flatten -> Dense(512, relu) -> ..."""
    if not isinstance(model, keras.Sequential):
        members = networks(model)
        return f"average of {len(members)} x ({architecture(members[0])})"
    names = []
    for layer in model.layers:
        if isinstance(layer, layers.Dense) and layer.activation.__name__ == "linear":
            names.append(f"Dense({layer.units})")  # the logits, before a temperature
        elif isinstance(layer, layers.Dense):
            names.append(f"Dense({layer.units}, {layer.activation.__name__})")
        elif isinstance(layer, layers.Rescaling) and layer.name == "temperature":
            names.append(f"Temperature({1 / layer.scale:.4g})")
        elif isinstance(layer, layers.Dropout):
            names.append(f"Dropout({layer.rate:g})")
        elif isinstance(layer, keras.Model):  # the deskewing, a model of Keras ops
            names.append("Deskew")
        else:
            names.append(type(layer).__name__)
    return " -> ".join(names)


def save_model(model, path, dataset):
    """Write model.keras whole or not at all, with the facts it carries beside its weights.

    What is saved is an uncompiled copy, made from the model's config: the compile that
    model.evaluate needed had an optimizer that never trained, and a model saved with one
    warns about its missing state whenever it is loaded.
    """
    plain = type(model).from_config(model.get_config())
    plain.set_weights(model.get_weights())

    def write(tmp):
        """The Keras archive, then our entry in it."""
        plain.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(METADATA_NAME, json.dumps(dict(
                dataset=dataset, classes=list(DATASETS[dataset]["classes"]),
                architecture=architecture(model), input=INPUT_FORMAT)))

    return write_atomically(path, write)


def saved_dataset(path, model):
    """The dataset a saved model was trained on: from its metadata, or, for models saved
    before metadata existed, from the name they were given then ("fashion_mnist_dense")."""
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read(METADATA_NAME))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return "fashion-mnist" if model.name == "fashion_mnist_dense" else "mnist"
    dataset = metadata.get("dataset") if isinstance(metadata, dict) else None
    if not isinstance(dataset, str) or dataset not in DATASETS:  # forged or damaged
        raise RunError(f"{path}: its {METADATA_NAME} names the dataset {repr(dataset)[:60]}, not one of "
                       f"{', '.join(sorted(DATASETS))}; train the model again")
    return dataset
