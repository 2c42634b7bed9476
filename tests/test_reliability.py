"""Interrupted, killed, diverging, unwritable or repeated runs: nothing is lost or faked."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import digit_classifier as dc
from digitkit import files
from digitkit.config import Config
from digitkit.interrupts import StopSignals
from helpers import SCRIPT, built, run_cli, run_main

LONG = ["--epochs", "60", "--hidden", "32", "--batch-size", "64"]


def start_cli(*args):
    """Start the real CLI in the background."""
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(out, count, process, timeout=120):
    """Block until the run has checkpointed `count` finished epochs."""
    state = out / "checkpoint" / "state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"run ended early: {process.communicate()}")
        try:
            if json.loads(state.read_text())["epochs_done"] >= count:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    pytest.fail("training never reached the expected epoch")


@pytest.mark.slow
def test_sigint_stops_gracefully_and_writes_reports(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    process = start_cli("--data-dir", synthetic_dir, "--output-dir", out, *LONG)
    wait_for_epochs(out, 2, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interrupted"] is True
    assert 2 <= metrics["epochs_completed"] < 60
    assert len(metrics["history"]["loss"]) == metrics["epochs_completed"]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert len(rows) == metrics["epochs_completed"]
    for name in ("model.keras", "report.html", "confusion_matrix.png", "training_curves.png"):
        assert (out / name).is_file()
    page = (out / "report.html").read_text()
    assert "dense classifier (interrupted)</h1>" in page
    assert f"interrupted after {metrics['epochs_completed']} finished epochs" in page
    assert (out / "checkpoint" / "state.json").is_file()  # kept, so --resume can finish
    assert f"during epoch {metrics['epochs_completed'] + 1}" in stdout


@pytest.mark.slow
def test_sigterm_is_handled_like_sigint(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    process = start_cli("--data-dir", synthetic_dir, "--output-dir", out, "--quiet", *LONG,
                        "--no-plots")  # the reports' pictures: the SIGINT test's
    wait_for_epochs(out, 1, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert json.loads((out / "metrics.json").read_text())["interrupted"] is True


@pytest.mark.slow
def test_sigkill_then_resume_finishes_the_same_number_of_epochs(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    args = ["--data-dir", synthetic_dir, "--output-dir", out, "--epochs", "25",
            "--hidden", "32", "--batch-size", "64"]
    process = start_cli(*args, "--quiet")
    wait_for_epochs(out, 3, process)
    process.kill()
    process.wait()
    before = json.loads((out / "checkpoint" / "state.json").read_text())
    assert before["epochs_done"] < 25
    assert not (out / "metrics.json").exists()
    for partial in out.rglob("*"):  # only complete files, never a truncated one
        if partial.suffix == ".json":
            json.loads(partial.read_text())

    refused = run_main(*args, "--quiet")
    assert refused.returncode == 1 and "--resume" in refused.stderr

    changed = run_main(*args[:-1], "128", "--resume", "--quiet")
    assert changed.returncode == 1 and "--batch-size" in changed.stderr

    resumed = run_main(*args, "--resume", "--no-plots")  # not quiet: says where it resumes
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 25 and len(metrics["history"]["loss"]) == 25
    assert metrics["history"]["loss"][:before["epochs_done"]] == \
        [row["loss"] for row in before["history"]]
    assert len(list(csv.DictReader((out / "history.csv").open()))) == 25
    assert not (out / "checkpoint").exists()


@pytest.mark.slow
def test_resume_without_checkpoint_starts_fresh(tmp_path, synthetic_dir):
    result = run_main("--data-dir", synthetic_dir, "--output-dir", tmp_path, "--resume",
                      "--epochs", "1", "--hidden", "8", "--no-plots")
    assert result.returncode == 0, result.stderr
    assert "starting from scratch" in result.stdout


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_error_and_no_result(tmp_path, synthetic_dir):
    result = run_main("--data-dir", synthetic_dir, "--output-dir", tmp_path, "--quiet",
                      "--learning-rate", "1e8", "--epochs", "3")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert re.search(r"at epoch \d+, batch \d+;", lines[0]) and "--learning-rate" in lines[0]
    for name in ("model.keras", "metrics.json", "report.html", "confusion_matrix.png"):
        assert not (tmp_path / name).exists()
    assert not (tmp_path / "checkpoint").exists()


def read_only_command(directory, argv):
    """A command that runs argv where `directory` cannot be written, even by root."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return argv
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare, so no way to make a directory read-only: "
                    "install util-linux, or run the tests as a normal user")
    quoted = " ".join(f"'{a}'" for a in argv)
    script = (f"mount --bind '{directory}' '{directory}' && "
              f"mount -o remount,bind,ro '{directory}' && exec {quoted}")
    return ["unshare", "--mount", "sh", "-c", script]


def test_read_only_output_dir_fails_before_training_and_keeps_files(tmp_path, synthetic_dir):
    out = tmp_path / "readonly"
    out.mkdir()
    (out / "metrics.json").write_text('{"keep": true}')
    argv = [sys.executable, str(SCRIPT), "--data-dir", str(synthetic_dir), "--output-dir",
            str(out), "--epochs", "1"]
    probe = subprocess.run(read_only_command(out, ["touch", str(out / "probe")]),
                           capture_output=True)
    if probe.returncode == 0:
        pytest.skip("could not make a read-only directory on this machine")
    result = subprocess.run(read_only_command(out, argv), capture_output=True, text=True)
    out.chmod(0o755)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0] and "Traceback" not in result.stderr
    assert (out / "metrics.json").read_text() == '{"keep": true}'
    assert "Epoch" not in result.stdout  # refused before training started


def test_failed_write_keeps_the_previous_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("previous")

    def write_then_fail(tmp):
        tmp.write_text("half a fi")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        files.write_atomically(target, write_then_fail)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.slow
def test_full_disk_is_one_line_exit_1_and_keeps_earlier_files(tmp_path, synthetic_dir):
    # A 200 KB tmpfs in a private mount namespace fills up while the run saves its files.
    # Root mounts it directly; anyone else through an unprivileged user namespace.
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs: install util-linux")
    namespace = ["unshare", "--mount"] if os.geteuid() == 0 else [
        "unshare", "--user", "--map-root-user", "--mount"]
    out = tmp_path / "small"
    out.mkdir()
    run = " ".join(f"'{a}'" for a in [sys.executable, str(SCRIPT), "--data-dir",
                                      str(synthetic_dir), "--output-dir", str(out), "--quiet",
                                      "--epochs", "2", "--hidden", "64"])
    earlier = ("metrics.json", "model.keras", "report.html", "history.csv")
    script = (f"mount -t tmpfs -o size=200k tmpfs '{out}' || exit 99; "
              + "".join(f"echo earlier {name} > '{out}/{name}'; " for name in earlier)
              + f"{run}; rc=$?; "
              + "".join(f"echo \"KEPT=$(cat '{out}/{name}')\"; " for name in earlier)
              + f"echo \"LEFT=$(ls -a '{out}' | grep -c -e partial -e .run-)\"; exit $rc")
    result = subprocess.run([*namespace, "sh", "-c", script], capture_output=True,
                            text=True, timeout=300)
    if result.returncode == 99 or (result.returncode == 1 and "unshare:" in result.stderr):
        pytest.skip("could not mount a tmpfs here: run the tests as root, or enable "
                    "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], result.stderr
    assert lines[0].startswith(f"error: {out}/")  # names the file it could not write
    for name in earlier:  # the earlier set, whole: no new file beside an old one
        assert f"KEPT=earlier {name}" in result.stdout, result.stdout
    assert "LEFT=0" in result.stdout


@pytest.mark.slow
def test_deterministic_runs_are_identical_and_a_quiet_one_prints_nothing(tmp_path, synthetic_dir):
    """Two real runs with --deterministic (which a process cannot switch off again), one of
    them --quiet and drawing its pictures: the same record, history and weights, and the
    quiet one printed nothing at all, neither a line of ours nor TensorFlow's or
    Matplotlib's noise."""
    import keras

    outs = [tmp_path / "quiet", tmp_path / "loud"]
    flags = ["--data-dir", synthetic_dir, "--deterministic", "--epochs", "2",
             "--hidden", "32", "16", "--dropout", "0.1"]
    quiet = run_cli(*flags, "--output-dir", outs[0], "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "" and quiet.stderr == ""
    assert (outs[0] / "confusion_matrix.png").exists()  # it drew: Matplotlib had its chance
    loud = run_cli(*flags, "--output-dir", outs[1], "--no-plots")
    assert loud.returncode == 0, loud.stderr
    assert "test accuracy" in loud.stdout
    metrics = [json.loads((out / "metrics.json").read_text()) for out in outs]
    for m in metrics:
        m.pop("timing")
        m.pop("run")  # when, and the command with its own --output-dir
        for flag in ("output_dir", "quiet", "plots"):
            m["config"].pop(flag)
    assert metrics[0] == metrics[1]
    assert (outs[0] / "history.csv").read_bytes() == (outs[1] / "history.csv").read_bytes()
    weights = [keras.models.load_model(out / "model.keras").get_weights() for out in outs]
    for first, second in zip(*weights):
        assert first.tobytes() == second.tobytes()


def test_same_seed_gives_same_split_and_initial_weights():
    import keras

    x = np.arange(1000 * 28 * 28, dtype=np.uint32).reshape(1000, 28, 28) % 251
    arrays = dict(x_train=x.astype(np.uint8), y_train=np.arange(1000, dtype=np.int32) % 10,
                  x_test=x[:5].astype(np.uint8), y_test=np.zeros(5, np.int32))
    splits = [dc.split_and_scale(arrays, 0.2, seed=3)["y_val"] for _ in range(2)]
    np.testing.assert_array_equal(*splits)
    initial = []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        initial.append(built(Config(hidden=(16,))).get_weights())
    for first, second in zip(*initial):
        np.testing.assert_array_equal(first, second)


def assert_only_complete_files(out):
    """Every file under a final name in out is whole: JSON parses, PNGs verify, zips test."""
    import zipfile

    from PIL import Image

    for path in out.rglob("*"):
        if path.name.startswith(".") or path.is_dir():
            continue  # a temporary file the exit cut short is never under a final name
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
        elif path.suffix == ".keras":
            assert zipfile.ZipFile(path).testzip() is None


@pytest.mark.slow
def test_second_sigint_exits_at_once_leaving_only_complete_files(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    process = start_cli("--data-dir", synthetic_dir, "--output-dir", out, *LONG)
    wait_for_epochs(out, 2, process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert_only_complete_files(out)
    # What only quitting at once gives: the graceful stop would have gone on to evaluate,
    # write the reports (metrics.json last) and keep the checkpoint for --resume.
    assert not (out / "metrics.json").exists()
    assert (out / "checkpoint" / "state.json").is_file()


def json_history_of(out):
    """history.csv's losses, to hold against the record's."""
    return [float(row["loss"]) for row in csv.DictReader((out / "history.csv").open())]


def wait_for_file(pattern, folder, process, timeout=120):
    """Block until a file matching pattern exists in folder (the run reached the step that
    writes it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(folder.glob(pattern)):
            return
        if process.poll() is not None:
            pytest.fail(f"run ended before writing {pattern}: {process.communicate()}")
        time.sleep(0.01)
    pytest.fail(f"{pattern} never appeared")


@pytest.mark.slow
def test_sigint_while_writing_reports_stops_keeping_complete_files(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    process = start_cli("--data-dir", synthetic_dir, "--output-dir", out, "--epochs", "2",
                        "--hidden", "32", "--batch-size", "64", "--augment", "none",
                        "--repeats", "3")
    wait_for_file(".run-*/model.keras", out, process)  # saved first, once training finished
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted"
    assert "seed 43" not in stdout  # the repeats never started
    # The unfinished set of files is dropped whole; the finished training is kept in the
    # checkpoint, so --resume writes the reports without training again.
    assert [path.name for path in out.iterdir()] == ["checkpoint"]  # lock file taken back
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epochs_done"] == 2
    resumed = run_main("--data-dir", synthetic_dir, "--output-dir", out, "--epochs", "2",
                       "--hidden", "32", "--batch-size", "64", "--augment", "none",
                       "--resume", "--quiet", "--no-plots")  # --resume takes no --repeats
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((out / "metrics.json").read_text())
    assert record["epochs_completed"] == 2 and not record["interrupted"]
    assert json_history_of(out) == pytest.approx(record["history"]["loss"], rel=1e-5)



def test_a_stop_at_once_is_not_lost_when_its_interrupt_is_swallowed():
    with pytest.raises(KeyboardInterrupt):
        with StopSignals(during="build"):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # the handler raises in here
            except KeyboardInterrupt:
                pass  # dropped, as Python drops one raised in a gc callback (JAX has one)


def test_a_stop_at_once_whose_interrupt_comes_out_as_another_error_still_stops():
    # A KeyboardInterrupt raised while TensorFlow's C++ code calls back into Python comes out
    # of it as a SystemError, then a TypeError (seen on Python 3.13: a Ctrl-C while fit()
    # began on a large model ended in a traceback and exit 1 instead of "interrupted", 130).
    with pytest.raises(KeyboardInterrupt):
        with StopSignals(at_once_until_trained=True):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # the handler raises in here
            except KeyboardInterrupt:
                raise TypeError("as TensorFlow's _pywrap_utils.Flatten passes it on") \
                    from SystemError("<built-in function __import__> returned a result "
                                     "with an exception set")
