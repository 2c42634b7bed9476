"""Messages: a run's progress, one plain line each on standard output, through logging.

Every module logs to the "digit_classifier" logger; `configure` (called once by the script)
sends its messages to standard output, all of them, or with --quiet warnings and errors
only, on streams that `usable_streams` made safe to write to. Errors that end a run are
printed by digitkit/exits.py. Imports nothing heavy.
"""

import logging
import os
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


def usable_streams():
    """stdout and stderr that cannot fail a run: closed (`>&-`), they write nowhere; ASCII-only,
    they escape what they cannot show."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
        elif hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def configure(quiet=False):
    """Send the logger's messages to standard output: every one, or with quiet warnings only."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(handler, ToStandardOutput) for handler in logger.handlers):
        handler = ToStandardOutput()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
