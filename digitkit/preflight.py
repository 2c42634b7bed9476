"""Checks before any slow import: the saved model a mode needs is there, and the package a
flag needs is installed; and what to run when a model is missing. Imports nothing heavy.
"""

import dataclasses
import importlib.util
from pathlib import Path

from digitkit.cli import suggested_command
from digitkit.errors import RunError


def train_first(config, model_path):
    """What to run to make the missing model, with the user's own data and output flags."""
    output_dir = str(Path(model_path).parent)
    return "train one first: " + suggested_command(
        dataclasses.replace(config, output_dir=output_dir))


def require_model_file(path, config):
    """Fail before any slow import when the saved model is not there."""
    if Path(path).exists() and not Path(path).is_file():  # a folder, a device, a pipe
        raise RunError(f"{path}: not a file; a saved model is the model.keras file a "
                       f"training run writes")
    if not Path(path).is_file():
        raise RunError(f"{path}: no saved model there; {train_first(config, path)}")


def check_installed(config):
    """Refuse, before any work, a flag whose package is missing (--tensorboard)."""
    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise RunError("--tensorboard needs the tensorboard package; install it with: "
                       "pip install -r requirements.txt")
