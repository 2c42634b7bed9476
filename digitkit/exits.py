"""How a run ends: every failure as one line on stderr and an exit status, never a traceback.

A RunError exits 1 (2 for a UsageError), an output that cannot be written 1, a Ctrl-C 130.
However a run ends, this process's folder locks are released, and a run that failed before
writing any result takes back the folders it created. Imports nothing heavy.
"""

import contextlib
import sys

from digitkit.errors import RunError
from digitkit.folders import release_output_dirs


class Outcome:
    """The exit status a run ends with: set by the block, or by the failure it raised."""

    def __init__(self):
        self.status = 1


@contextlib.contextmanager
def reported():
    """Run the block, turning any failure into one line on stderr and outcome.status."""
    outcome = Outcome()
    failed = True
    try:
        yield outcome
        failed = False
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        outcome.status = err.status
    except OSError as err:  # output that cannot be written: full disk, permissions
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        outcome.status = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        outcome.status = 130
    finally:
        release_output_dirs(failed)
