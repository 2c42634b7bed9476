"""The elastic distortion's bilinear sampler against Keras' own keras.ops.image.map_coordinates.

    python benchmarks/samplers.py [--rounds 7] [--calls 200]

Both sample a batch of 128 images (--preset best's batch) at random positions in and around
the image, on the TensorFlow backend; prints the largest difference between their outputs
and the median milliseconds per batch of each, alternated round by round.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    """Measure both samplers and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np
    import tensorflow as tf
    from keras import ops

    from digitkit.augment import RandomDistortion

    rng = np.random.default_rng(0)
    images = rng.random((128, 28, 28)).astype("float32")
    src_y = rng.uniform(-3, 30, images.shape).astype("float32")
    src_x = rng.uniform(-3, 30, images.shape).astype("float32")

    @tf.function
    def ours(images, src_y, src_x):
        """The layer's own sampler: four gathers from a zero-padded copy."""
        return RandomDistortion.bilinear(images, src_y, src_x)

    @tf.function
    def stock(images, src_y, src_x):
        """Keras' map_coordinates, the batch index as the first coordinate."""
        batch = tf.broadcast_to(tf.range(tf.shape(images)[0], dtype=tf.float32)[:, None, None],
                                tf.shape(src_y))
        return ops.image.map_coordinates(images, [batch, src_y, src_x], order=1,
                                         fill_mode="constant", fill_value=0)

    difference = np.abs(np.asarray(ours(images, src_y, src_x))
                        - np.asarray(stock(images, src_y, src_x))).max()
    print(f"largest difference between the two: {difference:.2g}")
    times = {"ours": [], "map_coordinates": []}
    for _ in range(args.rounds):
        for name, sample in (("ours", ours), ("map_coordinates", stock)):
            start = time.perf_counter()
            for _ in range(args.calls):
                sample(images, src_y, src_x)
            times[name].append((time.perf_counter() - start) / args.calls * 1e3)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.2f} ms per batch of 128")
    print(f"map_coordinates / ours: {statistics.median(times['map_coordinates']) / statistics.median(times['ours']):.1f}x")


if __name__ == "__main__":
    main()
