"""How a run ends: every failure as one line on stderr and an exit status, never a traceback.

A RunError exits 1 (2 for a UsageError), an output that cannot be written 1, a Ctrl-C 130.
However a run ends, this process's folder locks are released, and a run that failed before
writing any result takes back the folders it created. Imports nothing heavy.
"""

import contextlib
import os
import sys

from digitkit.errors import LostError, RunError
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
    except (RunError, LostError) as err:
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


def training_status(trained, repeats):
    """A training run's exit status: 130, saying what the reports hold, if it was interrupted."""
    if trained["interrupted"]:
        print(f"interrupted: reports describe the model after {trained['epochs_completed']} "
              f"epochs; rerun with --resume to finish training", file=sys.stderr)
        return 130
    if repeats and repeats["interrupted"]:
        print(f"interrupted: the repeats hold the {len(repeats['seeds'])} seeds finished",
              file=sys.stderr)
        return 130
    return 0


def leave(status):
    """End the process with status at once, once every file is written and every lock gone.

    The interpreter's teardown is skipped: in it TensorFlow only tidies up memory that the
    process gives back anyway (docs/performance.md).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
