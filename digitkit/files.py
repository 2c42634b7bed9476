"""Files written whole or not at all: text, JSON, CSV and anything a callback writes.

Each file is written under a temporary name beside its final one, flushed to disk, then
renamed into place, so an interrupted run never leaves half a file and an earlier file of
the same name stays as it was until the new one is complete. Imports nothing heavy.
"""

import csv
import io
import json
import os
import tempfile
from pathlib import Path

# The permissions a plain open() would give a new file (a temporary file is created 0600).
UMASK = os.umask(0o022)
os.umask(UMASK)


def write_atomically(path, write):
    """Call write(tmp) on a temporary file beside path, then rename it into place."""
    path = Path(path)
    tmp = None
    try:
        descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.",
                                            suffix=f".partial{path.suffix}")
        os.close(descriptor)
        tmp = Path(name)
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:  # named by the file the user will look for, not the temporary one
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path, text):
    """Write a text file atomically."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path, data):
    """Write JSON atomically, two-space indented."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path, columns, rows):
    """Write dict rows as CSV atomically; floats to 6 significant digits."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else f"{row[c]:.6g}" if isinstance(row[c], float)
                         else row[c] for c in columns])
    return write_text(path, buffer.getvalue())


def write_history_csv(path, rows):
    """One row per finished epoch with every metric recorded."""
    return write_csv(path, list(dict.fromkeys(key for row in rows for key in row)) or ["epoch"],
                     rows)
