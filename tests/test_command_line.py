"""The command line: usage errors are one line, exit 2, and never import TensorFlow."""

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digitkit import cli
from digitkit.config import Config
from helpers import ROOT, run_main

BAD_FLAGS = [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-1"], "--epochs"),
    (["--epochs", "2.5"], "--epochs"),
    (["--hidden", "0"], "--hidden"),
    (["--hidden", "abc"], "--hidden"),
    (["--hidden", "100", "-5"], "--hidden"),
    (["--validation-split", "1.5"], "--validation-split"),
    (["--validation-split", "1"], "--validation-split"),
    (["--validation-split", "-0.1"], "--validation-split"),
    (["--learning-rate", "-1"], "--learning-rate"),
    (["--learning-rate", "0"], "--learning-rate"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--batch-size", "0"], "--batch-size"),
    (["--dropout", "1"], "--dropout"),
    (["--patience", "0"], "--patience"),
    (["--dataset", "cifar"], "--dataset"),
    (["--no-such-flag"], "unrecognized"),
    (["--compare", "100,abc"], "--compare"),
    (["--compare", "100,,5"], "--compare"),
    (["--predict", "a.png", "--evaluate"], "not allowed with"),
    (["--json"], "--json"),
    (["--predict", "a.png", "--no-plots"], "--no-plots"),
    (["--resume", "--evaluate"], "--resume"),
    (["--patience", "3", "--validation-split", "0"], "--patience"),
    (["--lr-schedule", "constant", "--warmup-epochs", "2"], "--warmup-epochs"),
    (["--lr-schedule", "cosine", "--warmup-epochs", "5", "--epochs", "5"], "--warmup-epochs"),
]

PROBE = """
import sys
sys.path.insert(0, {root!r})
import digit_classifier
try:
    digit_classifier.main({argv!r})
except SystemExit as exit:
    code = exit.code
heavy = [m for m in ("tensorflow", "keras", "matplotlib", "jax") if m in sys.modules]
print(code, ",".join(heavy) or "none")
"""


@pytest.mark.parametrize("argv, flag", BAD_FLAGS)
def test_bad_flag_is_one_line_exit_2(argv, flag):
    result = run_main(*argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert flag in lines[0] and "error" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("argv", [["--help"], ["--epochs", "0"], ["--hidden", "abc"]])
def test_help_and_usage_errors_import_no_heavy_library(argv):
    probe = PROBE.format(root=str(ROOT), argv=argv)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    code, heavy = result.stdout.strip().splitlines()[-1].split()
    assert code == ("0" if argv == ["--help"] else "2")
    assert heavy == "none"


def test_help_lists_flags_with_defaults():
    result = run_main("--help")
    assert result.returncode == 0
    for text in ("--epochs", "--hidden", "--batch-size", "--learning-rate", "--data-dir",
                 "--output-dir", "--validation-split", "--seed", "--quiet",
                 "(default: 30; fashion-mnist: 40)", "(default: 512 256)"):
        assert text in result.stdout


def test_each_dataset_brings_its_own_defaults_and_what_the_user_gives_wins():
    # docs/reference.md: Fashion-MNIST trains without distortion, at 1e-3 for 40 epochs.
    _, fashion, _ = cli.parse_command_line(["--dataset", "fashion-mnist"])
    assert (fashion.augment, fashion.learning_rate, fashion.epochs) == (None, 1e-3, 40)
    assert fashion.hidden == Config().hidden and fashion.dropout == Config().dropout
    _, mnist, _ = cli.parse_command_line(["--dataset", "mnist"])
    assert (mnist.augment, mnist.learning_rate, mnist.epochs) == ("affine", 6e-3, 30)
    _, given, _ = cli.parse_command_line(["--dataset", "fashion-mnist", "--augment", "flip",
                                          "--epochs", "5"])
    assert (given.augment, given.learning_rate, given.epochs) == ("flip", 1e-3, 5)
    _, preset, _ = cli.parse_command_line(["--dataset", "fashion-mnist", "--preset", "best"])
    assert (preset.augment, preset.epochs, preset.learning_rate) == ("elastic", 52, 1e-3)
    text = cli.build_parser().format_help()
    assert "(default: affine; fashion-mnist: none;" in " ".join(text.split())


def test_defaults_come_from_config():
    mode, config, options = cli.parse_command_line([])
    assert mode == "train" and config == Config()
    assert options["model"].endswith("model.keras")


def test_hidden_without_widths_is_softmax_regression():
    _, config, _ = cli.parse_command_line(["--hidden"])
    assert config.hidden == ()


def test_preset_values_apply_and_flags_override_them():
    # README: "the seeds' recipe: 3 x Dense(100), no dropout, no distortion, Adam 1e-3
    # constant, batch 32, 5 epochs".
    _, config, _ = cli.parse_command_line(["--preset", "seed"])
    assert (config.hidden, config.dropout, config.augment, config.learning_rate,
            config.lr_schedule, config.batch_size, config.epochs) == (
        (100, 100, 100), 0.0, None, 1e-3, "constant", 32, 5)
    _, config, _ = cli.parse_command_line(["--preset", "seed", "--epochs", "7",
                                          "--hidden", "64"])
    assert config.epochs == 7 and config.hidden == (64,)
    assert config.batch_size == 32


def test_preset_best_is_an_elastic_committee_that_flags_can_shrink():
    _, config, _ = cli.parse_command_line(["--preset", "best"])
    assert config.augment == "elastic" and config.committee > 1 and config.deskew
    assert config.validation_split == 0.05 and config.dropout == 0
    _, config, _ = cli.parse_command_line(["--preset", "best", "--committee", "2",
                                          "--epochs", "3", "--augment", "--no-deskew"])
    assert (config.committee, config.epochs, config.augment) == (2, 3, "affine")
    assert not config.deskew and not cli.parse_command_line([])[1].deskew
    assert config.hidden == (800, 800)  # README: a committee of five 800-800 networks


def test_augment_kinds_and_committee_size_are_checked():
    assert cli.parse_command_line(["--augment", "elastic"])[1].augment == "elastic"
    assert cli.parse_command_line([])[1].augment == "affine"
    assert cli.parse_command_line(["--augment", "none"])[1].augment is None
    for argv in (["--augment", "warp"], ["--committee", "0"],
                 ["--evaluate", "--committee", "2"], ["--predict", "x.png", "--augment"],
                 ["--predict", "x.png", "--deskew"], ["--deskew=yes"],
                 # --width-norm measured no gain and is gone (docs keep its measurement).
                 ["--preset", "best", "--width-norm"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.parse_command_line(argv)
        assert exit_info.value.code == 2


def test_compare_specs_parse_to_width_tuples():
    mode, _, options = cli.parse_command_line(["--compare", "100", "100,100", "none"])
    assert mode == "compare"
    assert options["specs"] == [(100,), (100, 100), ()]



FLAG_NAMES = ["--epochs", "--hidden", "--batch-size", "--learning-rate", "--validation-split",
              "--seed", "--dropout", "--patience", "--warmup-epochs", "--lr-schedule",
              "--repeats", "--preset", "--dataset", "--compare", "--predict", "--evaluate",
              "--resume", "--json", "--quiet", "--augment", "--committee", "--deskew",
              "--draw", "--port", "--min-confidence", "--tensorboard", "--deterministic",
              "--no-plots",
              "--backend", "--steps-per-execution", "--output-dir", "--data-dir", "--model", "--",
              "-h"]
VALUES = st.one_of(st.integers(-3, 300).map(str), st.floats(allow_nan=True).map(str),
                   st.sampled_from(["abc", "", "none", "1,2", "cosine", "seed", "mnist",
                                    "tensorflow", "1e-3", "0.5", "-", "1.5", "inf"]),
                   st.text(max_size=6))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@pytest.mark.slow
@given(st.lists(st.one_of(st.sampled_from(FLAG_NAMES), VALUES), max_size=8))
def test_any_argv_gives_a_config_or_one_line_exit_2(capsys, argv):
    try:
        mode, config, options = cli.parse_command_line(argv)
    except SystemExit as exit:
        out, err = capsys.readouterr()
        if exit.code == 0:  # --help
            assert "usage:" in out
            return
        assert exit.code == 2
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
        return
    assert mode in ("train", "predict", "draw", "evaluate", "compare")
    assert isinstance(config, Config)
    assert config.epochs >= 1 and config.batch_size >= 1 and config.learning_rate > 0
    assert 0 <= config.validation_split < 1 and 0 <= config.dropout < 1
    assert all(width >= 1 for width in config.hidden)


def test_resume_continues_with_the_checkpoints_settings_and_the_flags_given(tmp_path):
    # A run started under other defaults (Fashion-MNIST's were 6e-3 and 30 epochs) resumes
    # as it was started; a flag given now still wins, and a mismatch is then refused at load.
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps(dict(
        epochs_done=3, model="epoch-0003.keras", history=[],
        config=dict(dataset="fashion-mnist", hidden=[8], learning_rate=6e-3, epochs=30))))
    _, config, _ = cli.parse_command_line(["--output-dir", str(tmp_path), "--resume",
                                           "--dataset", "fashion-mnist", "--epochs", "12"])
    assert (config.hidden, config.learning_rate, config.epochs) == ((8,), 6e-3, 12)
    _, fresh, _ = cli.parse_command_line(["--output-dir", str(tmp_path), "--dataset",
                                          "fashion-mnist"])
    assert (fresh.hidden, fresh.learning_rate) == (Config().hidden, 1e-3)  # no --resume
