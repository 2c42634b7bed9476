"""Time: the seconds each stage of a run takes, for the record. Imports nothing heavy."""

import contextlib
import time


@contextlib.contextmanager
def timed(timing, key):
    """Add the seconds the block takes to timing[key] (rounded to milliseconds)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[key] = round(timing.get(key, 0.0) + time.perf_counter() - start, 3)
