"""The shape of the code: the script tells the recipe in order, the package holds the rest.

What a reader is promised (README, Development): digit_classifier.py reads top to bottom as
the recipe in at most 400 lines, each package module reads alone in at most 600, imports flow
from the script to the package and never back, and the modules that --help and early
failures use load no TensorFlow, Keras or Matplotlib.
"""

import ast
import json
import subprocess
import sys

import pytest

from conftest import ROOT, SCRIPT

PACKAGE = ROOT / "digitkit"
# Imported before the flags chose Keras' backend: they must not load Keras or its friends.
LIGHT = ("config", "cli", "data", "guard", "backend", "metrics", "report", "images", "draw",
         "tuning")


def test_the_script_is_the_recipe_in_order_in_at_most_400_lines():
    text = SCRIPT.read_text()
    assert len(text.splitlines()) <= 400
    steps = ["data.load(",                                # load MNIST
             '.astype("float32") / 255',                  # scale to 0-1
             "keras.layers.Dense(",                       # build Dense layers ...
             "keras.Sequential(",                         # ... into a keras.Sequential
             "keras.optimizers.Adam(",                    # compile with Adam ...
             'loss="sparse_categorical_crossentropy"',    # ... and this loss
             "model.fit(",                                # fit
             "def evaluate(",                             # evaluate
             "plot_confusion_matrix("]                    # the Seaborn heatmap
    places = [text.find(step) for step in steps]
    assert -1 not in places, [s for s, p in zip(steps, places) if p == -1]
    assert places == sorted(places), sorted(zip(places, steps))


def test_each_module_of_the_package_reads_alone():
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_text()
        assert len(source.splitlines()) <= 600, path.name
        tree = ast.parse(source)
        if path.name != "__init__.py":
            assert ast.get_docstring(tree), f"{path.name} says what it is for"
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                assert ast.get_docstring(node) or node.name.startswith("__") or \
                    node.name in ("get_config", "call", "compute_output_shape") or \
                    node.name.startswith(("on_", "do_")), f"{path.name}: {node.name}"


def test_imports_flow_from_the_script_to_the_package_never_back():
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(name.split(".")[0] == "digit_classifier" for name in names), path


@pytest.mark.parametrize("module", LIGHT)
def test_the_modules_used_before_the_backend_is_chosen_load_no_framework(module):
    probe = subprocess.run(
        [sys.executable, "-c", f"import sys, json; import digitkit.{module}; print(json.dumps("
         "[m for m in ('tensorflow', 'keras', 'jax', 'matplotlib', 'seaborn') "
         "if m in sys.modules]))"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == []
