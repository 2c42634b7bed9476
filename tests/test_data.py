"""Loading data: every format the CLI accepts, and a one-line error for every bad file."""

import gzip
import json
import shutil

import numpy as np
import pytest

import digit_classifier as dc
from digitkit import data
from helpers import FAST, ROOT, run_cli, run_main, synthetic_digits, write_dataset, write_idx


def corrupt(directory, name, how):
    """Damage one file of a synthetic dataset in a named way."""
    path = directory / name
    if how == "truncated gzip":
        path.write_bytes(path.read_bytes()[:-200])
    elif how == "wrong magic":
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[:4] = (0x0801).to_bytes(4, "big")
        path.write_bytes(gzip.compress(bytes(raw)))
    elif how == "wrong image size":
        images, _ = synthetic_digits(600, seed=1)
        write_idx(path, np.zeros((600, 27, 28), np.uint8) + images[:, :27])
    elif how == "label out of range":
        _, labels = synthetic_digits(600, seed=1)
        labels[5] = 12
        write_idx(path, labels)
    elif how == "count mismatch":
        _, labels = synthetic_digits(599, seed=1)
        write_idx(path, labels)
    elif how == "empty file":
        path.write_bytes(b"")
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "missing":
        path.unlink()
    elif how == "truncated data":
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[:-784]))


BAD_FILES = [
    ("train-images-idx3-ubyte.gz", "truncated gzip", "gzip"),
    ("train-images-idx3-ubyte.gz", "wrong magic", "magic number"),
    ("train-images-idx3-ubyte.gz", "wrong image size", "27x28"),
    ("train-images-idx3-ubyte.gz", "truncated data", "truncated"),
    ("train-labels-idx1-ubyte.gz", "label out of range", "label 12 at index 5"),
    ("train-labels-idx1-ubyte.gz", "count mismatch", "599 labels"),
    ("t10k-labels-idx1-ubyte.gz", "empty file", "empty"),
    ("t10k-images-idx3-ubyte.gz", "directory", "is a directory"),
    ("t10k-images-idx3-ubyte.gz", "missing", "missing t10k-images-idx3-ubyte"),
]


@pytest.mark.parametrize("name, how, message", BAD_FILES)
def test_bad_data_file_is_named_in_one_line_exit_1(tmp_path, name, how, message):
    data = write_dataset(tmp_path / "data")
    corrupt(data, name, how)
    out = tmp_path / "out"
    result = run_main("--data-dir", data, "--output-dir", out)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    if how != "missing":
        assert name in lines[0]
    assert "Traceback" not in result.stderr


def test_npz_missing_an_array_is_named(tmp_path):
    x, y = synthetic_digits(100, seed=1)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x)
    result = run_main("--data-dir", tmp_path, "--output-dir", tmp_path / "out")
    assert result.returncode == 1
    assert "mnist.npz" in result.stderr and "y_test" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_data_dir_that_does_not_exist(tmp_path):
    result = run_main("--data-dir", tmp_path / "nowhere", "--output-dir", tmp_path / "out")
    assert result.returncode == 1
    assert "no such directory" in result.stderr


def test_empty_data_dir_names_the_expected_files(tmp_path):
    result = run_main("--data-dir", tmp_path, "--output-dir", tmp_path / "out")
    assert result.returncode == 1
    assert "train-images-idx3-ubyte" in result.stderr and "npz" in result.stderr


def test_plain_gzip_dotted_and_npz_layouts_load_the_same_arrays(tmp_path):
    gz = write_dataset(tmp_path / "gz")
    plain = write_dataset(tmp_path / "plain", gz=False)
    dotted = tmp_path / "dotted"
    dotted.mkdir()
    for path in gz.iterdir():
        shutil.copy(path, dotted / path.name.replace("s-idx", "s.idx"))
    reference, _ = data.read_data_dir(gz, "mnist")
    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "mnist.npz", **reference)
    for directory in (plain, dotted, npz, npz / "mnist.npz"):
        arrays, _ = data.read_data_dir(directory, "mnist")
        for key in reference:
            np.testing.assert_array_equal(arrays[key], reference[key])


def test_split_is_seeded_disjoint_and_scaled():
    x, y = synthetic_digits(1000, seed=3)
    arrays = dict(x_train=x, y_train=y.astype(np.int32), x_test=x[:10], y_test=y[:10])
    first = dc.split_and_scale(arrays, 0.1, seed=7)
    again = dc.split_and_scale(arrays, 0.1, seed=7)
    other = dc.split_and_scale(arrays, 0.1, seed=8)
    assert len(first["x_val"]) == 100 and len(first["x_train"]) == 900
    np.testing.assert_array_equal(first["x_val"], again["x_val"])
    assert not np.array_equal(first["x_val"], other["x_val"])
    assert first["x_train"].dtype == np.float32
    assert first["x_train"].max() == 1.0  # 255 scaled to exactly 1
    np.testing.assert_allclose(first["x_test"], x[:10] / 255, rtol=1e-6)


@pytest.mark.slow
def test_offline_without_cache_names_the_cause_and_data_dir_and_leaves_no_folder(tmp_path):
    # KERAS_HOME (read when Keras is imported: a process of its own) points Keras' cache at an
    # empty folder; the proxies lead nowhere, so the loader fails as it would for a user
    # offline.
    result = run_cli("--output-dir", tmp_path / "new" / "out", "--epochs", "1",
                     env={"KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": "http://127.0.0.1:9",
                          "HTTP_PROXY": "http://127.0.0.1:9"}, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "could not download MNIST: no network connection" in lines[0]
    # It names a place that says where the files are, and the variable that saves the flag.
    assert "--data-dir" in lines[0]
    assert "docs/data.md, Offline use" in lines[0] and "DIGIT_CLASSIFIER_DATA_DIR" in lines[0]
    assert "## Offline use" in (ROOT / "docs" / "data.md").read_text()
    assert not (tmp_path / "new").exists()  # the folder it made is taken back


@pytest.mark.slow
def test_the_data_dir_variable_is_the_flags_default_and_the_flag_wins(tmp_path, synthetic_dir,
                                                                      monkeypatch):
    monkeypatch.setenv("DIGIT_CLASSIFIER_DATA_DIR", str(synthetic_dir))
    result = run_main("--output-dir", tmp_path / "a", *FAST, "--no-plots", "--quiet")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert record["config"]["data_dir"] == str(synthetic_dir)
    monkeypatch.setenv("DIGIT_CLASSIFIER_DATA_DIR", str(tmp_path / "nowhere"))
    result = run_main("--data-dir", synthetic_dir, "--output-dir", tmp_path / "b", *FAST,
                      "--no-plots", "--quiet")
    assert result.returncode == 0, result.stderr


def test_mnist_dir_holds_the_complete_official_mnist(mnist_dir):
    """Every published figure is a full-MNIST figure: check that is what the tests read."""
    arrays, _ = data.load_dataset("mnist", str(mnist_dir))
    assert arrays["x_train"].shape == (60000, 28, 28) and arrays["x_test"].shape == (10000, 28, 28)
    assert np.bincount(arrays["y_train"]).tolist() == [5923, 6742, 5958, 6131, 5842, 5421,
                                                        5918, 6265, 5851, 5949]
    scaled = dc.split_and_scale(arrays, 0.0, seed=0)["x_train"]
    assert round(float(scaled.mean()), 4) == 0.1307 and round(float(scaled.std()), 4) == 0.3081
