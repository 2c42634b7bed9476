"""Training: what model.fit is given besides the data, the callbacks and the learning rate.

The script calls model.fit itself; this module gives it what watches the training (the
monitor: stop requests, a diverging loss, history.csv, the checkpoint --resume reads; early
stopping and TensorBoard) and the learning-rate schedule for Adam. Imports Keras at its top:
import this module only after backend.start.
"""

import logging
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np

from digitkit.checkpoint import Checkpoint
from digitkit.config import format_hidden
from digitkit.errors import RunError
from digitkit.files import write_history_csv
from digitkit.messages import LOGGER
from digitkit.report import tensorboard_logs

log = logging.getLogger(LOGGER)


def learning_rate(config, steps_per_epoch):
    """Adam's learning rate: --learning-rate, constant, or (--lr-schedule cosine) decaying to 0
    by the last step, after --warmup-epochs of linear warm-up."""
    if config.lr_schedule != "cosine":
        return config.learning_rate
    warmup_steps = config.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else config.learning_rate,
        decay_steps=max(1, config.epochs * steps_per_epoch - warmup_steps),
        warmup_target=config.learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps)


class TrainingMonitor(keras.callbacks.Callback):
    """Watches training: stop requests, non-finite loss, per-epoch history and checkpoints.

    Keras' TerminateOnNaN stops on a NaN loss too, but then ends the epoch as if it had
    finished, so the checkpoint would keep the diverged weights and the history the NaN row;
    this monitor skips that epoch and says where the loss diverged. history.csv is rewritten
    whole each epoch (CSVLogger appends), so an interrupted run never leaves half a row.
    """

    def __init__(self, config, signals, folder=None, history=(), train_count=None):
        """folder: (output folder, staging folder), for the checkpoints and history.csv;
        history: the epochs a resumed run already has; train_count: images per epoch."""
        super().__init__()
        self.config, self.signals, self.train_count = config, signals, train_count
        output_dir, stage = folder or (None, None)
        self.checkpoint = Checkpoint(output_dir) if output_dir else None
        self.history_csv = Path(stage) / "history.csv" if stage else None
        self.history = list(history)
        self.initial_epoch = len(self.history)
        self.epoch = len(self.history)
        self.stopped_mid_epoch = False
        self.nonfinite = None
        # Where training's seconds go: the first epoch (with the graph's tracing), the
        # later ones, and writing the checkpoints (the record's timing; docs/performance.md).
        self.epoch_started, self.epoch_seconds, self.checkpoint_seconds = None, [], 0.0

    def on_train_begin(self, logs=None):
        """A resumed run's history.csv starts whole, even if no epoch is left to train."""
        self.started = time.perf_counter()
        if self.history and self.history_csv:
            write_history_csv(self.history_csv, self.history)

    def on_epoch_begin(self, epoch, logs=None):
        """Remember which epoch is running, and since when."""
        self.epoch = epoch
        self.epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        """Stop on a non-finite loss or a stop request."""
        self.signals.trained = True
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nonfinite = (self.epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True
        elif self.signals.received:
            self.stopped_mid_epoch = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        """Record a finished epoch in the history, history.csv and the checkpoint."""
        # Keras ends an interrupted epoch like a finished one; it is not one, so skip it.
        if self.stopped_mid_epoch or self.nonfinite:
            return
        self.epoch_seconds.append(time.perf_counter() - self.epoch_started)
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        # Keras evaluates a schedule at the current step when asked for the rate.
        row["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
        self.history.append(row)
        if self.history_csv:
            write_history_csv(self.history_csv, self.history)
        if self.checkpoint:
            started = time.perf_counter()
            self.checkpoint.save(self.model, epoch + 1, self.history, self.config)
            self.checkpoint_seconds += time.perf_counter() - started
        if self.signals.received:  # arrived during validation: the epoch itself finished
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        """How long model.fit trained, its set-up before the first epoch included."""
        self.seconds = time.perf_counter() - self.started

    def outcome(self, callbacks):
        """The training record: history, kept epoch, seconds, speed, whether interrupted.

        callbacks: all that model.fit was given (early stopping chooses the epoch kept). A
        diverged loss is a RunError, and its checkpoint is removed: resuming would diverge
        again, and no result is pretended.
        """
        if self.nonfinite:
            epoch, batch, loss = self.nonfinite
            if self.checkpoint:
                self.checkpoint.remove()
            raise RunError(f"training diverged: loss became {loss} at epoch {epoch}, batch "
                           f"{batch}; try a lower --learning-rate (now "
                           f"{self.config.learning_rate:g})")
        epochs_run = len(self.history) - self.initial_epoch
        kept_epoch = len(self.history)
        for callback in callbacks:
            if isinstance(callback, keras.callbacks.EarlyStopping) and callback.best_weights:
                # An interrupted epoch is not in the history, even if it scored best.
                kept_epoch = min(callback.best_epoch + 1, kept_epoch)
        seconds = self.seconds
        speed = epochs_run * self.train_count / seconds if epochs_run and self.train_count else None
        interrupted = self.signals.received is not None
        if interrupted and not self.config.quiet:
            log.info(f"interrupted by {self.signals.received} during epoch {len(self.history) + 1} "
                     f"of {self.config.epochs} ({len(self.history)} finished); evaluating the "
                     f"model as it stands")
        return dict(
            history=self.history, seconds=seconds, kept_epoch=kept_epoch,
            epochs_completed=len(self.history), interrupted=interrupted,
            samples_per_second=speed,
            timing=dict(train_seconds=round(seconds, 3),
                        samples_per_second=round(speed, 1) if speed else None,
                        first_epoch_seconds=round(self.epoch_seconds[0], 3)
                        if self.epoch_seconds else None,
                        later_epochs_seconds=round(sum(self.epoch_seconds[1:]), 3),
                        checkpoint_seconds=round(self.checkpoint_seconds, 3)))


class Pruning(keras.callbacks.Callback):
    """Tell an Optuna trial each epoch's validation loss (negated: the study maximises), and
    stop the trial, raising pruned, when its pruner says so."""

    def __init__(self, trial, pruned):
        super().__init__()
        self.trial, self.pruned = trial, pruned

    def on_epoch_end(self, epoch, logs=None):
        """Report the epoch; stop here if the trial lags behind the others."""
        self.trial.report(-float(logs["val_loss"]), epoch)
        if self.trial.should_prune():
            raise self.pruned(f"pruned after epoch {epoch + 1}")


def standard_callbacks(config, validated):
    """Keras' own callbacks the flags ask for: early stopping (--patience, with a validation
    split), TensorBoard (--tensorboard)."""
    found = []
    if config.patience is not None and validated:
        found.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                   restore_best_weights=True, verbose=0))
    if config.tensorboard:
        found.append(keras.callbacks.TensorBoard(tensorboard_dir(config)))
    return found


def tensorboard_dir(config):
    """Where --tensorboard logs one training run: a folder per architecture and seed."""
    return tensorboard_logs(config.output_dir) / f"{format_hidden(config.hidden)}_seed{config.seed}"


def verbosity(config):
    """Keras' progress bar on a terminal, one line per epoch otherwise, nothing when quiet."""
    if config.quiet:
        return 0
    return 1 if sys.stdout.isatty() else 2
