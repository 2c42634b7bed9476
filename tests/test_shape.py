"""The shape of the code: the script tells the recipe in order, the package holds the rest.

What a reader is promised (README, Development): digit_classifier.py reads top to bottom as
the recipe in at most 300 lines, its Keras calls written out in one function; each package
module reads alone in at most 400; imports flow from the script to the package and never
back, and the script hands none of its functions down; the modules that --help and early
failures use load no TensorFlow, Keras or Matplotlib.
"""

import ast
import json
import subprocess
import sys

import pytest

from helpers import ROOT, SCRIPT, cli_environment

PACKAGE = ROOT / "digitkit"
# Imported before the flags chose Keras' backend: they must not load Keras or its friends.
LIGHT = ("config", "cli", "data", "errors", "files", "folders", "memory", "preflight", "exits",
         "checkpoint", "clock", "messages", "interrupts", "pictures", "backend", "metrics",
         "report", "images", "draw", "tuning", "searching")


def test_the_script_is_the_recipe_in_order_in_at_most_300_lines_without_packing():
    text = SCRIPT.read_text()
    assert len(text.splitlines()) <= 300
    assert max(len(line) for line in text.splitlines()) <= 100
    tree = ast.parse(text)
    statements = [node for node in ast.walk(tree) if isinstance(node, ast.stmt)
                  and not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.If, ast.For,
                                            ast.While, ast.With, ast.Try))]
    lines = [node.lineno for node in statements]
    assert len(lines) == len(set(lines)), "one statement per line"
    steps = ["data.load(",                                # load MNIST
             'np.divide(images, 255, dtype="float32")',   # scale to 0-1
             "keras.layers.Dense(",                       # build Dense layers ...
             "keras.Sequential(",                         # ... into a keras.Sequential
             "keras.optimizers.Adam(",                    # compile with Adam ...
             'loss="sparse_categorical_crossentropy"',    # ... and this loss
             "model.fit(",                                # fit
             ".evaluate(",                                # evaluate
             "plot_confusion_matrix("]                    # the Seaborn heatmap
    places = [text.find(step) for step in steps]
    assert -1 not in places, [s for s, p in zip(steps, places) if p == -1]
    assert places == sorted(places), sorted(zip(places, steps))


def test_one_function_of_at_most_80_lines_holds_the_keras_calls_in_order():
    tree = ast.parse(SCRIPT.read_text())
    calls = ["keras.Sequential(", "compile(optimizer=keras.optimizers.Adam(",
             'loss="sparse_categorical_crossentropy"', ".fit(", ".evaluate("]
    holders = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            source = ast.get_source_segment(SCRIPT.read_text(), node)
            places = [source.find(call) for call in calls]
            if -1 not in places:
                holders.append((node.name, node.end_lineno - node.lineno + 1, places))
    assert len(holders) == 1, holders
    name, length, places = holders[0]
    assert length <= 80, (name, length)
    assert places == sorted(places), (name, places)


def test_the_script_hands_none_of_its_own_functions_to_the_package():
    tree = ast.parse(SCRIPT.read_text())
    own = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            arguments = [*node.args, *(keyword.value for keyword in node.keywords)]
            passed = [arg.id for arg in arguments if isinstance(arg, ast.Name) and arg.id in own]
            # study.optimize(objective) is Optuna's own API, given the objective defined here.
            assert not passed or node.func.attr == "optimize", (node.lineno, passed)


def test_each_module_of_the_package_reads_alone():
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_text()
        assert len(source.splitlines()) <= 400, path.name
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


@pytest.mark.slow
def test_a_tensorflow_run_loads_only_what_it_uses_yet_the_rest_stays_importable(fresh_run):
    # TensorFlow imports JAX at start-up when it is installed, Keras scikit-learn, pandas,
    # OpenCV and Matplotlib, Seaborn SciPy's statistics; a run on TensorFlow needs none of
    # them, and draws its pictures without JAX or SciPy's statistics (about 2 s of every
    # run: docs/performance.md). The run is conftest.FRESH_RUN's, in a process of its own.
    pytest.importorskip("jax", reason="only a machine with JAX installed shows the difference")
    assert fresh_run["status"] == 0
    assert fresh_run["collecting"]  # the collector, paused while Keras imported, runs again
    assert fresh_run["trained"] == []
    assert fresh_run["drawing"] == [] and fresh_run["seaborn"] == "seaborn"
    assert fresh_run["importable"]


JAX_START = """
import json, sys
from digitkit import backend
from digitkit.config import Config
keras = backend.start(Config(backend="jax"))
x = keras.random.uniform((2,), seed=keras.random.SeedGenerator(1))
print(json.dumps(dict(backend=keras.backend.backend(), tensorflow="tensorflow" in sys.modules)))
"""


@pytest.mark.slow
def test_a_jax_start_imports_no_tensorflow_and_prints_nothing():
    """Keras seeds TensorFlow too whenever it is installed, importing it: about 3 s of a JAX
    run's start, and TensorFlow's C++ notices on its stderr. start() keeps it out (with
    --tensorboard, which needs it, it imports it quietly itself)."""
    pytest.importorskip("jax", reason="the JAX backend needs jax (requirements-dev.txt)")
    probe = subprocess.run([sys.executable, "-c", JAX_START], capture_output=True, text=True,
                           timeout=120, cwd=ROOT, env=cli_environment())
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == dict(backend="jax", tensorflow=False)
    assert probe.stderr == ""


def test_import_without_lets_a_library_take_its_fallback_and_needs_no_fallback_of_its_own(
        tmp_path, monkeypatch):
    from digitkit.backend import import_without

    (tmp_path / "shape_optional_dep.py").write_text("VALUE = 1\n")
    (tmp_path / "shape_lib_optional.py").write_text(
        "try:\n    import shape_optional_dep\nexcept ImportError:\n    shape_optional_dep = None\n")
    (tmp_path / "shape_lib_required.py").write_text("import shape_optional_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    optional = import_without("shape_lib_optional", ["shape_optional_dep"])
    assert optional.shape_optional_dep is None  # the library took its fallback
    assert "shape_optional_dep" not in sys.modules  # and the name is importable again
    required = import_without("shape_lib_required", ["shape_optional_dep"])
    assert required.shape_optional_dep.VALUE == 1  # a library that needs it still gets it
    for name in ("shape_optional_dep", "shape_lib_optional", "shape_lib_required"):
        sys.modules.pop(name, None)


def test_the_collector_is_paused_while_keras_imports_and_what_it_made_is_frozen():
    import gc

    from digitkit.backend import collection_paused

    made = []
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        frozen = gc.get_freeze_count()
        try:
            with pytest.raises(ImportError), collection_paused():
                assert not gc.isenabled()
                made.append([[] for _ in range(100)])  # tracked objects, to be frozen
                raise ImportError("a failed import restores the collector too")
            assert gc.isenabled() is enabled
            assert gc.get_freeze_count() >= frozen + 100
        finally:
            gc.enable()
