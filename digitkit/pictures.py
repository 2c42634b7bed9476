"""Pictures drawn on a second thread: every picture of an evaluated model but the heatmap
(the script draws it) and robustness.png (which needs the robustness check's figures),
drawn while the main thread runs that check. TensorFlow and NumPy compute without holding
Python's lock, so the two overlap; Matplotlib and Seaborn are imported on that thread too.
Imports nothing heavy itself.
"""

from concurrent.futures import ThreadPoolExecutor

from digitkit.clock import timed


class Drawing:
    """A context manager: the pictures are drawn while its block runs (none with --no-plots)."""

    def __init__(self, stage, data, config, result, timing):
        self.stage, self.data, self.config, self.result = stage, data, config, result
        self.timing, self.images, self.pool, self.future = timing, [], None, None

    def __enter__(self):
        """Start drawing on the second thread."""
        if self.config.plots:
            self.pool = ThreadPoolExecutor(max_workers=1)
            self.future = self.pool.submit(self.draw)
        return self

    def draw(self):
        """The pictures, in the order report.html shows them; their paths."""
        from digitkit import plots  # Matplotlib and Seaborn, imported on this thread

        with timed(self.timing, "report_seconds"):
            return plots.draw_pictures(self.stage, self.data, self.result["scores"], self.config,
                                       self.result["training"], self.result["calibration"])

    def __exit__(self, exc_type, exc, traceback):
        """Wait for the pictures; a failure in drawing them is raised here."""
        if self.pool is None:
            return
        try:
            if exc_type is None:
                self.images = self.future.result()
        finally:
            self.pool.shutdown(wait=True)

    def with_robustness(self, robust):
        """The pictures with robustness.png, drawn now from the check's figures, in its place."""
        from digitkit import plots

        images = list(self.images)
        with timed(self.timing, "report_seconds"):
            plots.add_robustness_picture(images, robust, self.config)
        return images
