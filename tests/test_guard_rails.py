"""Guard rails: runs that collide, sizes that cannot fit, settings that make no sense."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error

import numpy as np
import pytest

from digitkit import data, memory
from digitkit.config import Config
from digitkit.errors import RunError
from helpers import FAST, ROOT, SCRIPT, run_main


def snapshot(directory):
    """Every file under directory with its content hash."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# --- one run per output directory -----------------------------------------------------------

@pytest.mark.slow
def test_a_directory_locked_by_another_process_is_refused_and_left_untouched(
        trained_synthetic, synthetic_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained_synthetic[0], out)
    holder = subprocess.Popen(  # another process that holds the lock, as a running training does
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
         "from digitkit import folders; folders.lock_output_dir(sys.argv[2], 'training'); "
         "print('locked', flush=True); time.sleep(60)", str(ROOT), str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        for argv in (["--data-dir", synthetic_dir, *FAST],
                     ["--compare", "8", "--data-dir", synthetic_dir, *FAST[:2]],
                     ["--evaluate", "--data-dir", synthetic_dir]):
            result = run_main(*argv, "--output-dir", out)
            assert result.returncode == 1, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and f"process {holder.pid} (training started" in lines[0]
            assert "--output-dir" in lines[0]
            assert snapshot(out) == before
        # --predict takes no lock: it only adds its own two files.
        image = tmp_path / "digit.png"
        from PIL import Image

        Image.fromarray(np.uint8(np.pad(np.full((16, 4), 255), 6))).save(image)
        result = run_main("--predict", image, "--output-dir", out, "--quiet")
        assert result.returncode == 0, result.stderr
        assert set(snapshot(out)) - set(before) == {"predictions.csv", "predictions.png"}
    finally:
        holder.kill()
        holder.wait()
    # The lock went with the process that held it: a run now gets past the lock and stops at
    # the next check, a batch larger than the data, before any training.
    result = run_main("--data-dir", synthetic_dir, "--output-dir", out, "--batch-size", "100000")
    assert result.returncode == 2 and "is larger than the 540 training images" in result.stderr


@pytest.mark.slow
def test_two_trainings_racing_for_one_directory(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, str(SCRIPT), "--data-dir", str(synthetic_dir),
                              "--output-dir", str(out), *FAST[2:], "--epochs", "20"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in first.stdout:  # the first run is training once an epoch line appears
            if line.startswith("Epoch"):
                break
        second = run_main("--data-dir", synthetic_dir, "--output-dir", out, *FAST, "--seed", "7")
        assert second.returncode == 1
        assert f"is in use by process {first.pid}" in second.stderr
        first.send_signal(signal.SIGKILL)  # killed: the OS drops its lock
        first.wait(timeout=60)
    finally:
        first.kill()
    resumed = run_main("--data-dir", synthetic_dir, "--output-dir", out, *FAST[2:],
                       "--epochs", "20", "--resume", "--quiet", "--no-plots")
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["seed"] == Config.seed and metrics["epochs_completed"] == 20


# --- sizes that cannot fit -------------------------------------------------------------------

def test_a_model_too_large_for_memory_is_refused_at_once_with_both_figures(tmp_path,
                                                                          synthetic_dir):
    available = memory.available_memory()
    if available is None:
        pytest.skip("this system does not report its available memory")
    # Measure the CLI's peak memory from a fresh parent, whose only child it is.
    probe = subprocess.run(
        [sys.executable, "-c", "import resource, subprocess, sys; "
         "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "sys.stdout.write(r.stderr + '@@' + str(r.returncode) + '@@' + "
         "str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))",
         sys.executable, str(SCRIPT), "--hidden", "50000", "50000", "--data-dir",
         str(synthetic_dir), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120)
    stderr, status, peak_kib = probe.stdout.split("@@")
    assert status == "1"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "--hidden 50000 50000 needs about" in lines[0]
    assert "2,539,800,010 weights" in lines[0] and "GiB is available" in lines[0]
    assert int(peak_kib) < 300 * 1024  # refused before TensorFlow was imported
    assert not (tmp_path / "out").exists()


def test_memory_estimate_counts_the_weights_adam_and_the_data():
    config = Config()
    needed, weights = memory.training_memory(config)
    assert weights == 535818 == memory.parameter_count(config.hidden)
    assert 0.8 * 2 ** 30 < needed < 2 * 2 ** 30
    bigger, _ = memory.training_memory(config, specs=[(100,), (4096, 4096)])
    assert bigger == memory.training_memory(Config(hidden=(4096, 4096)))[0]
    assert memory.training_memory(Config(committee=5))[1] == 5 * weights


@pytest.mark.slow
# While the model is built, and after it is built but before its first batch has trained
# (the summary printed, the training step being traced): on a loaded machine a Ctrl-C meant for
# the build lands in either, so both stop at once. The process starts with SIGINT ignored, as
# a shell's background job does (one such run lost the signal: "building the model" was then
# said before the handler was in place, and the run trained on for minutes): only the
# script's own handler can stop it.
@pytest.mark.parametrize("signal_after", ["building the model", "Model: "])
def test_ctrl_c_while_a_large_model_is_built_stops_at_once(tmp_path, synthetic_dir, signal_after):
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--data-dir", str(synthetic_dir),
                                "--output-dir", str(tmp_path / "out"), "--hidden", "8192",
                                "8192", "8192", "--epochs", "50", "--augment", "none",
                                "--batch-size", "64", "--steps-per-execution", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    for line in process.stdout:
        if line.startswith(signal_after):
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    # At once: not the graceful stop after a batch, which would go on to evaluate and report
    # ("interrupted: reports describe the model after 0 epochs ...").
    assert stderr.strip().splitlines()[-1] == "interrupted", stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out" / "model.keras").exists()
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("batch, message", [
    ("100000", "--batch-size 100000 is larger than the 540 training images (of 600, "
               "--validation-split 0.1 held out); choose at most 540"),
    ("560", "--validation-split 0.1 leaves 540 of 600 training images, fewer than one batch "
            "of 560; lower --validation-split or --batch-size")])
def test_a_batch_larger_than_the_training_set_is_a_usage_error(tmp_path, synthetic_dir, batch,
                                                              message):
    (tmp_path / "earlier.txt").write_text("an earlier result")
    result = run_main("--data-dir", synthetic_dir, "--output-dir", tmp_path, "--epochs", "1",
                      "--batch-size", batch)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
    assert snapshot(tmp_path) == {"earlier.txt": hashlib.sha256(b"an earlier result").hexdigest()}


# --- the right data set ----------------------------------------------------------------------

@pytest.mark.parametrize("official, other, title", [("mnist", "fashion-mnist", "MNIST"),
                                                    ("fashion-mnist", "mnist", "Fashion-MNIST")])
def test_the_official_files_are_recognised_and_the_other_dataset_refused_for_them(
        official, other, title, request, tmp_path):
    folder = request.getfixturevalue("mnist_dir" if official == "mnist" else "fashion_dir")
    arrays, _ = data.read_data_dir(folder, official)
    assert data.recognise_dataset(arrays) == official
    result = run_main("--dataset", other, "--data-dir", folder, "--output-dir",
                      tmp_path / "out", "--epochs", "1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --dataset {other}: {folder} holds the official {title} data; "
        f"pass --dataset {official}"]
    assert not (tmp_path / "out").exists()


def test_other_data_is_not_taken_for_either_dataset(mnist_dir):
    arrays, _ = data.read_data_dir(mnist_dir, "mnist")
    arrays["y_test"] = arrays["y_test"].copy()
    arrays["y_test"][0] = (arrays["y_test"][0] + 1) % 10  # one label changed
    assert data.recognise_dataset(arrays) is None
    from helpers import synthetic_digits
    x, y = synthetic_digits(600, seed=1)
    assert data.recognise_dataset(dict(x_train=x, y_train=y, x_test=x, y_test=y)) is None


# --- remembering the run's data, and messages that name the user's own flags -----------------

@pytest.mark.slow
def test_evaluate_defaults_to_the_data_the_model_was_trained_on(trained_synthetic, tmp_path,
                                                               monkeypatch):
    out, _ = trained_synthetic
    for proxy in ("HTTPS_PROXY", "HTTP_PROXY"):  # a download would fail, not wait
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    result = run_main("--evaluate", "--model", out / "model.keras", "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "as recorded by the run that saved" in result.stdout
    evaluated = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    trained = json.loads((out / "metrics.json").read_text())
    assert evaluated["dataset"]["source"] == trained["dataset"]["source"]
    assert evaluated["test_accuracy"] == trained["test_accuracy"]


def test_download_failures_name_their_cause():
    def raised(cause):
        try:
            try:
                raise cause
            except Exception as err:
                raise Exception(f"URL fetch failure: {err}")
        except Exception as wrapped:
            return wrapped

    not_found = urllib.error.HTTPError("https://x/mnist.npz", 404, "Not Found", {}, None)
    assert data.download_failure(raised(not_found)) == "the server answered HTTP 404 Not Found"
    offline = urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))
    assert data.download_failure(raised(offline)) == (
        "no network connection (Temporary failure in name resolution)")
    corrupted = ValueError("Incomplete or corrupted file detected. The sha256 file hash does "
                           "not match the provided value of abc.")
    assert "failed its checksum" in data.download_failure(corrupted)


def test_a_download_turns_only_download_failures_into_one_line(monkeypatch):
    import keras

    def failing(error):
        def load_data():
            raise error
        return load_data

    monkeypatch.setattr(keras.datasets.mnist, "load_data",
                        failing(Exception("URL fetch failure on https://x: None -- refused")))
    with pytest.raises(RunError, match="could not download MNIST: Exception: URL fetch"):
        data.download_dataset("mnist")
    monkeypatch.setattr(keras.datasets.mnist, "load_data", failing(OSError(28, "No space")))
    with pytest.raises(RunError, match="could not download MNIST"):
        data.download_dataset("mnist")
    # A bug is not the network: it shows as itself.
    monkeypatch.setattr(keras.datasets.mnist, "load_data", failing(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        data.download_dataset("mnist")


def test_suggested_commands_repeat_the_users_output_and_data_dirs(tmp_path, synthetic_dir):
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    result = run_main("--predict", image, "--output-dir", tmp_path / "my runs")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"train one first: python digit_classifier.py --output-dir '{tmp_path / 'my runs'}'")
    result = run_main("--evaluate", "--data-dir", synthetic_dir, "--dataset", "fashion-mnist",
                      "--model", tmp_path / "elsewhere" / "model.keras")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"train one first: python digit_classifier.py --dataset fashion-mnist --data-dir "
        f"{synthetic_dir} --output-dir {tmp_path / 'elsewhere'}")
