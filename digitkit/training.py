"""Training: Ctrl-C handled gracefully, a checkpoint per epoch, and the callbacks of model.fit.

The script calls model.fit itself; this module gives it what watches the training: the
monitor (stop requests, a diverging loss, history.csv, the checkpoint that --resume reads),
early stopping and TensorBoard. Imports Keras at its top: import this module only after
backend.start.
"""

import math
import os
import signal
import sys
import time

import keras
import numpy as np

from digitkit import augment  # noqa: F401  registers RandomDistortion, so checkpoints load
from digitkit.checkpoint import Checkpoint
from digitkit.config import format_hidden
from digitkit.errors import RunError
from digitkit.files import write_history_csv
from digitkit.report import tensorboard_logs


class StopSignals:
    """What SIGINT and SIGTERM do while installed; a second one always exits at once.

    While training (the default), the first asks training to stop after this batch, and the
    run then evaluates and reports the model as it stands; with at_once_until_trained, one
    that comes before the first batch has trained stops at once instead (there is nothing
    new to evaluate). Anywhere else (during="build", "reports"), the first stops the run at
    once (exit 130); no file is left half-written, as every file is written atomically. A KeyboardInterrupt can be lost on its way (one raised
    inside a garbage-collection callback, such as JAX's, is only printed as "ignored"), so
    leaving the block raises it again if a signal came and nothing was raised.
    """

    def __init__(self, during="training", at_once_until_trained=False):
        self.during = during
        self.received = None
        self.trained = not at_once_until_trained  # set by TrainingMonitor after a batch
        self._previous = {}

    def __enter__(self):
        """Install the handlers for SIGINT and SIGTERM."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type, exc, traceback):
        """Restore the previous handlers; stop now if a stop-at-once signal got lost."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if (self.during != "training" or not self.trained) and self.received and exc_type is None:
            raise KeyboardInterrupt

    def _handle(self, signum, frame):
        """First signal: stop as this phase allows; second: exit now."""
        if self.received is not None:
            # Every file is written atomically, so leaving now cannot leave half a file.
            os._exit(130)
        self.received = signal.Signals(signum).name
        if self.during == "training" and self.trained:
            print(f"\n{self.received} received: stopping after this batch "
                  f"(press Ctrl-C again to quit at once)", file=sys.stderr, flush=True)
            return
        kept = "; the files already written are kept" if self.during == "reports" else ""
        print(f"\n{self.received} received: stopping{kept} (press Ctrl-C again to quit at once)",
              file=sys.stderr, flush=True)
        raise KeyboardInterrupt


class TrainingMonitor(keras.callbacks.Callback):
    """Watches training: stop requests, non-finite loss, per-epoch history and checkpoints.

    Keras' TerminateOnNaN stops on a NaN loss too, but then ends the epoch as if it had
    finished, so the checkpoint would keep the diverged weights and the history the NaN row;
    this monitor skips that epoch and says where the loss diverged. history.csv is rewritten
    whole each epoch (CSVLogger appends), so an interrupted run never leaves half a row.
    """

    def __init__(self, config, signals, checkpoint_dir=None, history_csv=None, history=()):
        super().__init__()
        self.config, self.signals = config, signals
        self.checkpoint = Checkpoint(checkpoint_dir) if checkpoint_dir else None
        self.history_csv = history_csv
        self.history = list(history)
        self.epoch = len(self.history)
        self.stopped_mid_epoch = False
        self.nonfinite = None
        # Where training's seconds go: the first epoch (with the graph's tracing), the
        # later ones, and writing the checkpoints (the record's timing; docs/performance.md).
        self.epoch_started, self.epoch_seconds, self.checkpoint_seconds = None, [], 0.0

    def on_train_begin(self, logs=None):
        """A resumed run's history.csv starts whole, even if no epoch is left to train."""
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

    def outcome(self, callbacks, seconds, initial_epoch, train_count):
        """The training record: history, kept epoch, seconds, speed, whether interrupted.

        A diverged loss is a RunError, and its checkpoint is removed: resuming would diverge
        again, and no result is pretended.
        """
        if self.nonfinite:
            epoch, batch, loss = self.nonfinite
            if self.checkpoint:
                self.checkpoint.remove()
            raise RunError(f"training diverged: loss became {loss} at epoch {epoch}, batch "
                           f"{batch}; try a lower --learning-rate (now "
                           f"{self.config.learning_rate:g})")
        epochs_run = len(self.history) - initial_epoch
        kept_epoch = len(self.history)
        for callback in callbacks:
            if isinstance(callback, keras.callbacks.EarlyStopping) and callback.best_weights:
                # An interrupted epoch is not in the history, even if it scored best.
                kept_epoch = min(callback.best_epoch + 1, kept_epoch)
        return dict(
            history=self.history, seconds=seconds, kept_epoch=kept_epoch,
            epochs_completed=len(self.history), interrupted=self.signals.received is not None,
            timing=dict(first_epoch_seconds=round(self.epoch_seconds[0], 3)
                        if self.epoch_seconds else None,
                        later_epochs_seconds=round(sum(self.epoch_seconds[1:]), 3),
                        checkpoint_seconds=round(self.checkpoint_seconds, 3)),
            samples_per_second=(epochs_run * train_count / seconds) if epochs_run else None)


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
