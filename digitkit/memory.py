"""Memory: what training a network needs, what the machine has, and a refusal before
TensorFlow is even imported when the first exceeds the second. Imports nothing heavy.
"""

import math
from pathlib import Path

from digitkit.config import EVAL_BATCH_SIZE, IMAGE_SHAPE, NUM_CLASSES
from digitkit.errors import RunError


def parameter_count(hidden, committee=1):
    """Weights and biases of the recipe's network, counted without building it."""
    widths = [math.prod(IMAGE_SHAPE), *hidden, NUM_CLASSES]
    return committee * sum((a + 1) * b for a, b in zip(widths, widths[1:]))


# What training holds in memory, by this project's accounting (README, "Guard rails"): per
# weight its value, its gradient and Adam's two moments; per unit and image of a batch the
# pre-activation, the activation, the dropout mask and the gradient; the images as float32,
# twice (the arrays and Keras' copy); and the framework itself.
BYTES_PER_WEIGHT = 4 * 4
BYTES_PER_ACTIVATION = 4 * 4
FRAMEWORK_BYTES = 800 * 2 ** 20  # TensorFlow and Keras loaded, before any model: about 0.8 GB
TRAINING_IMAGES = 60000  # both data sets; an estimate made before the data is read


def training_memory(config, specs=None):
    """Estimated peak bytes of training config (each of specs' hidden layers, the largest)."""
    def estimate(hidden):
        """(bytes, weights) of training one set of hidden widths."""
        weights = parameter_count(hidden, config.committee)
        batch = max(config.batch_size, EVAL_BATCH_SIZE)
        units = config.committee * (math.prod(IMAGE_SHAPE) + sum(hidden) + NUM_CLASSES)
        images = 2 * 4 * math.prod(IMAGE_SHAPE) * (TRAINING_IMAGES + 10000)
        return (weights * BYTES_PER_WEIGHT + batch * units * BYTES_PER_ACTIVATION + images
                + FRAMEWORK_BYTES), weights
    return max(estimate(tuple(hidden)) for hidden in (specs or [config.hidden]))


def available_memory():
    """Bytes this process can still use: the system's available memory, or a container's
    (cgroup) limit less its usage, whichever is smaller; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes",
                                    "memory/memory.usage_in_bytes")):
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            usage = Path("/sys/fs/cgroup", usage_file).read_text().strip()
            if limit.isdigit() and int(limit) < 2 ** 60:
                found.append(int(limit) - int(usage))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def check_memory(config, specs=None):
    """Refuse, before TensorFlow is even imported, a model whose training cannot fit in memory."""
    needed, weights = training_memory(config, specs)
    available = available_memory()
    if available is not None and needed > available:
        what = ("--hidden " + " ".join(map(str, config.hidden)) if not specs
                else "the largest --compare SPEC")
        raise RunError(f"{what} needs about {needed / 2 ** 30:.1f} GiB of memory to train "
                       f"({weights:,} weights, with gradients and Adam's state), but only "
                       f"{available / 2 ** 30:.1f} GiB is available; use narrower or fewer "
                       f"layers, or a smaller --committee")
    return needed, weights
