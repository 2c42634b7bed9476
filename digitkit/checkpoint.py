"""Checkpoints: the last finished epoch of a run, kept in its output folder for --resume.

Reading whether a folder holds one needs nothing heavy, so a run refuses to train afresh
over an unfinished one before TensorFlow loads; loading the model itself imports Keras.
"""

import json
import logging
from pathlib import Path

from digitkit.config import Config, resume_fingerprint
from digitkit.errors import RunError, one_line
from digitkit.files import write_atomically, write_json
from digitkit.messages import LOGGER

CHECKPOINT_DIR = "checkpoint"  # in the output folder: an unfinished run's last epoch
log = logging.getLogger(LOGGER)


def checkpoint_state(output_dir):
    """The state.json of the checkpoint an unfinished run left in output_dir (its last
    finished epoch, for --resume), or None when there is none."""
    state = Path(output_dir) / CHECKPOINT_DIR / "state.json"
    if not state.is_file():
        return None
    try:
        return json.loads(state.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{state}: unreadable checkpoint ({err})") from None


def refuse_unfinished_run(output_dir, config):
    """Refuse to train afresh over a run that left a checkpoint, unless --resume continues it."""
    state = None if config.resume else checkpoint_state(output_dir)
    if state is not None:
        raise RunError(f"{Path(output_dir) / CHECKPOINT_DIR} holds an unfinished run "
                       f"({state.get('epochs_done', '?')} of its epochs done); pass --resume "
                       f"to continue it, or delete it to start over")


class Checkpoint:
    """The last finished epoch of a run (model with optimizer state, plus history), for --resume.

    Each file is written whole, an epoch a Ctrl-C cut short is skipped, a run with other
    settings is refused, and the checkpoints earlier versions wrote still load (why not
    Keras' BackupAndRestore: docs/development.md, "Design notes").
    """

    def __init__(self, output_dir):
        self.output_dir = Path(output_dir)
        self.directory = self.output_dir / CHECKPOINT_DIR
        self.state_path = self.directory / "state.json"

    @classmethod
    def for_run(cls, output_dir, config):
        """The checkpoint of a training run in output_dir, after refusing to train afresh
        over an unfinished run there (unless --resume continues it)."""
        refuse_unfinished_run(output_dir, config)
        return cls(output_dir)

    def start(self, config):
        """What --resume goes on from: (model, epochs done, history), or None to build anew."""
        if not config.resume:
            return None
        if not self.exists():
            log.info(f"no checkpoint in {self.directory}; starting from scratch")
            return None
        start = self.load(config)
        log.info(f"resuming from {self.directory}: {start[1]} of {config.epochs} epochs done")
        return start

    def exists(self):
        """Whether an unfinished run left a checkpoint here."""
        return self.state_path.is_file()

    def read_state(self):
        """The checkpoint's state.json as a dict."""
        return checkpoint_state(self.output_dir)

    def save(self, model, epochs_done, history, config):
        """Write the model first, then the state that points at it, each atomically."""
        self.directory.mkdir(exist_ok=True)
        model_name = f"epoch-{epochs_done:04d}.keras"
        write_atomically(self.directory / model_name, lambda tmp: model.save(tmp))
        write_json(self.state_path, dict(epochs_done=epochs_done, model=model_name,
                                         history=history, config=resume_fingerprint(config)))
        for old in self.directory.glob("epoch-*.keras"):
            if old.name != model_name:
                old.unlink(missing_ok=True)

    def load(self, config):
        """Return (model, epochs_done, history) after checking the run settings match."""
        state = self.read_state()
        saved, wanted = state.get("config", {}), resume_fingerprint(config)
        default = resume_fingerprint(Config())  # for a setting older checkpoints lack
        changed = ["--" + key.replace("_", "-") for key in wanted
                   if saved.get(key, default[key]) != wanted[key]]
        if changed:
            raise RunError(f"{self.directory}: checkpoint was made with different settings "
                           f"({', '.join(changed)}); "
                           f"rerun with the original flags, or delete it to start over")
        import keras  # only to load: the checks above answer before TensorFlow loads

        from digitkit import augment  # noqa: F401  registers RandomDistortion for loading

        path = self.directory / state["model"]
        try:
            model = keras.models.load_model(path)
        except Exception as err:  # Keras raises many types for files that are not its models
            raise RunError(f"{path}: cannot load checkpoint ({one_line(err)}); "
                           f"delete {self.directory} to start over") from None
        return model, state["epochs_done"], state["history"]

    def remove(self):
        """Delete the checkpoint once the run no longer needs it."""
        for item in self.directory.glob("*"):
            item.unlink(missing_ok=True)
        if self.directory.is_dir():
            self.directory.rmdir()
