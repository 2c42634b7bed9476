"""Interrupts: what Ctrl-C (SIGINT) and SIGTERM do while a block of a run is under way.

A context manager the script enters around each phase: while training, the first signal
stops after the batch under way, and the run reports the model as it stands; anywhere else
it stops at once. A second signal always exits at once. Imports nothing heavy.
"""

import os
import signal
import sys


class StopSignals:
    """What SIGINT and SIGTERM do while installed; a second one always exits at once.

    While training (the default), the first asks training to stop after this batch, and the
    run then evaluates and reports the model as it stands; with at_once_until_trained, one
    that comes before the first batch has trained stops at once instead (there is nothing
    new to evaluate). Anywhere else (during="build", "reports"), the first stops the run at
    once (exit 130); no file is left half-written, as every file is written atomically.
    A KeyboardInterrupt can be lost on its way (one raised inside a garbage-collection
    callback, such as JAX's, is only printed as "ignored") or come out as another error (one
    raised while TensorFlow's C++ code calls back into Python becomes a SystemError, then a
    TypeError), so once such a signal came, leaving the block raises KeyboardInterrupt
    whatever else was raised.
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
        at_once = self.during != "training" or not self.trained
        if at_once and self.received and not (exc_type and issubclass(exc_type, KeyboardInterrupt)):
            raise KeyboardInterrupt from exc  # the stop asked for, not what became of it

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
