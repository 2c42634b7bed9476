"""The ecosystem's habits: TensorBoard logs, and the inline script metadata `uv run` reads."""

import re
import sys

import numpy as np
import pytest

from helpers import FAST, ROOT, SCRIPT, run_main


def read_events(directory):
    """Every tag TensorBoard's own reader finds in directory, with its values per step."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    accumulator = event_accumulator.EventAccumulator(str(directory))
    accumulator.Reload()
    return {tag: [(event.step, tensor_util.make_ndarray(event.tensor_proto))
                  for event in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"]}, accumulator


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_tensorboard_logs_open_in_tensorboards_reader(synthetic_dir, tmp_path, backend,
                                                      request):
    pytest.importorskip("tensorboard")
    if backend == "jax":  # the shared JAX run (a process of its own) logged for TensorBoard
        out, stdout = request.getfixturevalue("jax_run")
    else:
        out = tmp_path
        result = run_main("--data-dir", synthetic_dir, "--output-dir", out, *FAST,
                          "--tensorboard")
        assert result.returncode == 0, result.stderr
        stdout = result.stdout
    logs = out / "tensorboard"
    assert f"tensorboard --logdir {logs}" in stdout
    run = logs / "32_seed42"
    train, accumulator = read_events(run / "train")
    validation, _ = read_events(run / "validation")
    for tags in (train, validation):
        assert [step for step, _ in tags["epoch_loss"]] == [0, 1]
        assert [step for step, _ in tags["epoch_accuracy"]] == [0, 1]
    # The logged losses are the ones history.csv holds.
    history = np.genfromtxt(out / "history.csv", delimiter=",", names=True)
    np.testing.assert_allclose([float(v) for _, v in train["epoch_loss"]], history["loss"],
                               rtol=1e-4)
    np.testing.assert_allclose([float(v) for _, v in validation["epoch_loss"]],
                               history["val_loss"], rtol=1e-4)
    # The graph: Keras' model description, which TensorBoard's Graphs tab draws.
    metadata = accumulator.SummaryMetadata("keras")
    assert metadata.plugin_data.plugin_name == "graph_keras_model"
    assert b"hidden_1" in train["keras"][0][1].item()


@pytest.mark.slow
def test_tensorboard_keeps_one_folder_per_seed_and_architecture(synthetic_dir, tmp_path):
    pytest.importorskip("tensorboard")
    result = run_main("--data-dir", synthetic_dir, "--output-dir", tmp_path, "--epochs", "1",
                      "--hidden", "8", "--batch-size", "64", "--augment", "none",
                      "--tensorboard", "--repeats", "2", "--quiet", "--no-plots")
    assert result.returncode == 0, result.stderr
    runs = sorted(path.name for path in (tmp_path / "tensorboard").iterdir())
    assert runs == ["8_seed42", "8_seed43"]  # --repeats: each seed's curves apart
    for run in runs:
        assert (tmp_path / "tensorboard" / run / "train").is_dir()


def test_tensorboard_is_refused_where_nothing_trains():
    for mode in (["--predict", "x.png"], ["--evaluate"]):
        result = run_main(*mode, "--tensorboard")
        assert result.returncode == 2
        assert "--tensorboard: only when training or comparing" in result.stderr


# PEP 723's reference regular expression for an inline metadata block.
PEP_723_BLOCK = r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$"


def inline_metadata():
    """The script's PEP 723 `script` block, parsed as TOML."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    blocks = [m for m in re.finditer(PEP_723_BLOCK, SCRIPT.read_text())
              if m.group("type") == "script"]
    assert len(blocks) == 1
    content = "".join(line[2:] if line.startswith("# ") else line[1:]
                      for line in blocks[0].group("content").splitlines(keepends=True))
    return tomllib.loads(content)


def test_inline_script_metadata_matches_requirements():
    metadata = inline_metadata()
    requirements = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert metadata["dependencies"] == requirements
    low, high = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", metadata["requires-python"]).groups()
    assert int(low) <= sys.version_info.minor < int(high)
