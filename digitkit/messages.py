"""Messages: a run's progress, one plain line each on standard output, through logging.

Every module logs to the "digit_classifier" logger; `configure` (called once by the script)
sends its messages to standard output, all of them, or with --quiet warnings and errors
only. Errors that end a run are printed by digitkit/exits.py. Imports nothing heavy.
"""

import logging
import sys

LOGGER = "digit_classifier"


class ToStandardOutput(logging.Handler):
    """Each message as one line on sys.stdout as it is when logged (a test may redirect it)."""

    def emit(self, record):
        """Print the message and flush, so it shows before a slow step begins."""
        try:
            print(self.format(record), file=sys.stdout, flush=True)
        except Exception:  # noqa: BLE001  logging's own rule: a message never ends the run
            self.handleError(record)


def configure(quiet=False):
    """Send the logger's messages to standard output: every one, or with quiet warnings only."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(handler, ToStandardOutput) for handler in logger.handlers):
        handler = ToStandardOutput()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
