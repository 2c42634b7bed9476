"""--tune: an Optuna search whose best trial trains as a normal run; resumable, shareable.

Synthetic data and tiny trials (two epochs of a 32-unit network, only the dropout and the
learning rate searched), so each search takes seconds. The PostgreSQL test starts a real
server (Debian's postgresql, which .ci/run installs) and runs two real worker processes.
"""

import contextlib
import csv
import glob
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import FAST, PICTURED, SCRIPT, cli_environment, run_main

# Pins the epochs, hidden layers, batch size and distortion (and draws no picture): two
# settings left to search.
TINY = [*FAST]


def trials(output_dir):
    """tuning.csv's rows."""
    with open(output_dir / "tuning.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_search_trains_its_best_trial_as_a_run_and_the_same_command_continues_it(
        synthetic_dir, tmp_path):
    out = tmp_path / "out"
    args = ["--data-dir", synthetic_dir, "--output-dir", out, "--tune", "2", *PICTURED]
    result = run_main(*args)
    assert result.returncode == 0, result.stderr
    rows = trials(out)
    assert [row["number"] for row in rows] == ["0", "1"]
    assert {row["state"] for row in rows} == {"complete"}
    assert {"params_dropout", "params_learning_rate"} <= set(rows[0])
    assert "params_batch_size" not in rows[0]  # given by a flag: not searched
    record = json.loads((out / "metrics.json").read_text())
    best = max(rows, key=lambda row: float(row["val_accuracy"]))
    assert record["tuning"]["best"][0]["number"] == int(best["number"])
    # The run that follows trains the best trial's settings, the pinned ones as given.
    assert record["config"]["learning_rate"] == pytest.approx(float(best["params_learning_rate"]))
    assert record["config"]["dropout"] == pytest.approx(float(best["params_dropout"]))
    assert record["config"]["hidden"] == [32] and record["config"]["epochs"] == 2
    assert "Search (--tune)" in (out / "report.html").read_text()
    assert (out / "tuning_history.png").stat().st_size > 10_000  # the search's own picture
    assert "--learning-rate" in result.stdout and "best: trial" in result.stdout

    again = run_main(*args[:-len(PICTURED) - 1], "3", *TINY)  # one more trial, --no-plots
    assert again.returncode == 0, again.stderr
    assert not list(out.glob("*.png"))  # --no-plots: neither the run's nor the search's
    assert "2 of 3 trials done" in again.stdout
    assert [row["number"] for row in trials(out)] == ["0", "1", "2"]
    assert len(list((out / "previous").iterdir())) == 1  # the first run's files, kept


@pytest.mark.slow
def test_a_pruned_trial_stops_after_its_epoch_and_is_recorded_as_pruned(synthetic_dir, tmp_path,
                                                                        monkeypatch):
    import optuna

    from digitkit import tuning

    opened = []

    def with_a_pruner_that_prunes_all(*args):
        """The study the command opens, with a pruner that stops every trial (-loss < 0)."""
        search = open_study(*args)
        search["study"].pruner = optuna.pruners.ThresholdPruner(lower=0.0)
        opened.append(search)
        return search

    open_study = tuning.open_study
    monkeypatch.setattr(tuning, "open_study", with_a_pruner_that_prunes_all)
    result = run_main("--data-dir", synthetic_dir, "--output-dir", tmp_path, "--tune", "2",
                      *TINY[:1], "3", *TINY[2:])  # three epochs each
    assert result.returncode == 1, result.stderr
    assert "no trial finished" in result.stderr
    search = opened[0]
    study = search["study"]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in study.trials)  # after epoch 1
    tuning.write_reports(tmp_path, search)
    assert [row["state"] for row in trials(tmp_path)] == ["pruned", "pruned"]


@pytest.mark.slow
def test_a_study_made_with_other_settings_is_refused_and_kept(synthetic_dir, tmp_path,
                                                              monkeypatch):
    import digit_classifier

    out = tmp_path / "out"
    with monkeypatch.context() as patched:  # the two trials of `--tune 2 TINY`, no run after
        patched.setattr(digit_classifier, "run_training", lambda best, search: 0)
        searched = run_main("--data-dir", synthetic_dir, "--output-dir", out, "--tune", "2",
                            *TINY)
    assert searched.returncode == 0, searched.stderr
    other = run_main("--data-dir", synthetic_dir, "--output-dir", out, "--tune", "2", *TINY,
                     "--dropout", "0.1")
    assert other.returncode == 2
    assert "searches other settings (dropout)" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    narrowed = run_main("--data-dir", synthetic_dir, "--output-dir", out, "--tune", "2", *TINY,
                        "--tune-range", "learning_rate=0.001:0.005")
    assert narrowed.returncode == 2 and "(learning_rate)" in narrowed.stderr
    with sqlite3.connect(out / "tuning.db") as db:
        assert db.execute("select count(*) from trials").fetchone() == (2,)


@pytest.mark.parametrize("flags, status, message", [
    (["--tune", "0"], 2, "expected an integer of at least 1"),
    (["--tune-minutes", "5"], 2, "only with --tune"),
    (["--tune", "2", "--tune-range", "width=0:64"], 2,
     "width=LOW:HIGH: expected an integer of at least 1, got '0'"),
    (["--tune", "2", "--tune-range", "dropout=0.2:1"], 2,
     "dropout=LOW:HIGH: expected a number in [0, 1), got '1'"),
    (["--tune", "2", "--tune-range", "epochs=3:2"], 2, "with LOW <= HIGH, got 'epochs=3:2'"),
    (["--tune", "2", "--tune-range", "epochs=1"], 2, "with LOW <= HIGH, got 'epochs=1'"),
    (["--tune", "2", "--tune-range", "batch_size=33:60"], 2, "no power of two"),
    (["--tune", "2", "--hidden", "32", "--tune-range", "width=32:64"], 2, "not searched"),
    (["--tune", "2", "--validation-split", "0"], 2, "scored on the validation split"),
    (["--tune", "2", "--tune-storage", "not a url"], 2, "not a database URL"),
    (["--tune", "2", "--tune-storage", "postgresql://tuner:secret@dbhost:port/db"], 2,
     "postgresql+psycopg://tuner:***@dbhost:port/db: not a database URL"),
    (["--tune", "2", "--tune-storage", "postgresql://u:secret@[::1/x"], 2, "not a database URL"),
    (["--tune", "2", "--tune-storage", "postgresql://user:secret@127.0.0.1:1/db"], 1,
     "cannot open the study"),
])
def test_bad_tuning_input_is_one_line_and_an_exit_status(flags, status, message, synthetic_dir,
                                                        tmp_path):
    result = run_main("--data-dir", synthetic_dir, "--output-dir", tmp_path / "out", *flags)
    assert result.returncode == status, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "secret" not in result.stderr  # a password is never printed
    assert not (tmp_path / "out").exists()  # nothing left behind: no folder, no study


def study_states(database):
    """(number, state) of each trial in an Optuna SQLite study."""
    with sqlite3.connect(database) as db:
        try:
            return db.execute("select number, state from trials order by number").fetchall()
        except sqlite3.OperationalError:  # Optuna has not made its tables yet
            return []


def trials_training(database):
    """Numbers of the running trials that have chosen their settings (and named their worker)."""
    with sqlite3.connect(database) as db:
        try:
            return {number for (number,) in db.execute(
                "select number from trials join trial_user_attributes using (trial_id)"
                " where state = 'RUNNING' and key = 'worker'")}
        except sqlite3.OperationalError:  # Optuna has not made its tables yet
            return set()


@pytest.mark.slow
def test_a_search_killed_mid_trial_finishes_the_remaining_trials_when_run_again(
        synthetic_dir, tmp_path):
    out = tmp_path / "out"
    args = ["--data-dir", synthetic_dir, "--output-dir", out, "--tune", "3",
            *TINY[:1], "4", *TINY[2:]]
    process = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=cli_environment())
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # until the second trial has its settings
            if (out / "tuning.db").exists() and 1 in trials_training(out / "tuning.db"):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the second trial never started")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (out / "metrics.json").exists()

    result = run_main(*args, "--no-plots")  # the killed process's lock went with it
    assert result.returncode == 0, result.stderr
    rows = trials(out)
    killed = next(row for row in rows if row["number"] == "1")
    assert killed["state"] == "failed"
    retry = [row for row in rows if row.get("user_attrs_retry_of") == "1.0"
             or row.get("user_attrs_retry_of") == "1"]
    assert len(retry) == 1 and retry[0]["state"] == "complete"
    assert retry[0]["params_learning_rate"] == killed["params_learning_rate"]
    assert sum(row["state"] == "complete" for row in rows) == 3  # the three asked for
    assert json.loads((out / "metrics.json").read_text())["tuning"]["complete"] == 3


def test_only_a_stopped_trial_that_had_chosen_its_settings_is_queued_again():
    import optuna

    from digitkit import tuning

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    chosen = study.ask()
    chosen.suggest_float("dropout", 0.0, 0.5)
    chosen.set_user_attr("worker", "host:1")  # as the search does once the settings are chosen
    study.ask().suggest_float("dropout", 0.0, 0.5)  # stopped while choosing: nothing to retry
    tuning.retry_unfinished(study)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "WAITING"]
    assert trials[2].user_attrs == {"retry_of": 0}
    assert trials[2].system_attrs["fixed_params"] == chosen.params


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_the_search_and_queues_the_stopped_trial_to_run_again(
        synthetic_dir, tmp_path, stop):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--data-dir", str(synthetic_dir), "--output-dir", str(out),
         "--tune", "3", *TINY[:1], "50", *TINY[2:]], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=cli_environment())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the first trial has its settings
        if (out / "tuning.db").exists() and 0 in trials_training(out / "tuning.db"):
            break
        time.sleep(0.05)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "run the same command again to continue (0 of 3 done)" in stderr
    # What the user is told, and nothing of Optuna's own logging ("[W ...] Trial 0 failed").
    assert "Traceback" not in stderr and "Trial 0 failed" not in stderr, stderr
    assert study_states(out / "tuning.db") == [(0, "FAIL"), (1, "WAITING")]
    assert not (out / "metrics.json").exists()


def postgres_binary(name):
    """A PostgreSQL server program: on PATH, or where Debian's packages put it."""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


class PostgreSQL:
    """A throwaway PostgreSQL server on a unix socket, which a test can stop and start."""

    def __init__(self, initdb, pg_ctl):
        self.pg_ctl, self.base = pg_ctl, Path(tempfile.mkdtemp(prefix="pg-"))
        self.as_user = []
        if os.geteuid() == 0:  # the server refuses to run as root: run it as Debian's postgres
            shutil.chown(self.base, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.base / "data"
        self.run(initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync")
        self.url = f"postgresql://postgres@/postgres?host={self.base}"

    def run(self, *command):
        subprocess.run([*self.as_user, *command], check=True, capture_output=True, timeout=60)

    def start(self):
        """Start the server and wait until it accepts connections."""
        self.run(self.pg_ctl, "-D", self.data, "-w", "-l", self.base / "log", "-o",
                 f"-k {self.base} -c listen_addresses='' -c fsync=off", "start")

    def stop(self, mode="immediate"):
        """Stop the server (immediate: as a crash does; fast: as an administrator does)."""
        self.run(self.pg_ctl, "-D", self.data, "-m", mode, "-w", "stop")


@pytest.fixture
def postgres():
    """A running PostgreSQL server for the test's life (see PostgreSQL)."""
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    if not initdb or not pg_ctl:
        if os.environ.get("REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is not installed (apt-get install -y postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    server = PostgreSQL(initdb, pg_ctl)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # a test may have stopped it
            server.stop()
        shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres):
    """The URL of a running PostgreSQL server's database."""
    return postgres.url


def two_workers(args, tmp_path, prefix):
    """Run the CLI with args as two worker processes at once, each with its own output folder
    (PREFIX1, PREFIX2); returns each one's (exit status, stdout, stderr)."""
    workers = [subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args),
                                 "--output-dir", tmp_path / f"{prefix}{i}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=cli_environment()) for i in (1, 2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    return [(worker.returncode, *output) for worker, output in zip(workers, outputs)]


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(postgres_url, synthetic_dir, tmp_path):
    args = ["--data-dir", synthetic_dir, "--tune", "6", "--tune-storage", postgres_url,
            "--study-name", "shared", *TINY[:1], "4", *TINY[2:], "--no-plots"]
    for status, _, stderr in two_workers(args, tmp_path, "worker"):
        assert status == 0, stderr

    import optuna

    study = optuna.load_study(study_name="shared",
                              storage=postgres_url.replace("postgresql://",
                                                           "postgresql+psycopg://"))
    done = [t for t in study.trials if t.state.is_finished()]
    # Optuna's stop is checked as each trial ends: two workers finishing at the same instant
    # may each start one more, so six trials, or seven.
    assert 6 <= len(done) <= 7, [t.state for t in study.trials]
    by_worker = {}
    for trial in done:
        by_worker.setdefault(trial.user_attrs["worker"], []).append(trial.number)
    assert len(by_worker) == 2, by_worker  # both took trials, and no trial ran twice
    assert sorted(sum(by_worker.values(), [])) == sorted(t.number for t in done)
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == len(params)  # no settings proposed twice
    bests = [json.loads((tmp_path / f"worker{i}" / "metrics.json").read_text())["tuning"]
             ["best"][0]["number"] for i in (1, 2)]
    assert bests[0] == bests[1] == study.best_trial.number


def shared_study(url, name):
    """The study `name` on a PostgreSQL server, once a worker has made it."""
    import optuna

    import sqlalchemy

    storage = url.replace("postgresql://", "postgresql+psycopg://")
    deadline = time.monotonic() + 120
    while True:
        try:
            return optuna.load_study(study_name=name, storage=storage)
        # Not made yet; or this process and the worker both made Optuna's tables at once,
        # and this one lost (optuna/optuna#1092).
        except (KeyError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            assert time.monotonic() < deadline, f"no study {name!r} after 120 s"
            time.sleep(0.05)


def stop_mid_trial(postgres, name, worker_alive, restart_after=None):
    """Stop the server once a trial of the study has reported an epoch (the worker is then
    inside a trial, with the database in use); start it again after restart_after seconds."""
    from optuna.trial import TrialState

    study = shared_study(postgres.url, name)
    deadline = time.monotonic() + 240
    while not any(trial.intermediate_values for trial in study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING,))):
        assert worker_alive() and time.monotonic() < deadline, "no trial reported an epoch"
        time.sleep(0.02)
    study._storage._backend.engine.dispose()  # this test's own connections
    postgres.stop()
    if restart_after is not None:
        time.sleep(restart_after)  # the outage the worker must outlast, not a wait
        postgres.start()


# Six epochs a trial: a trial runs long enough for the test to stop the server inside it.
OUTAGE_FLAGS = ["--epochs", "6", "--hidden", "32", "--batch-size", "64", "--augment", "none",
                "--no-plots"]


@pytest.mark.slow
def test_a_database_restart_during_a_search_is_waited_out(postgres, synthetic_dir, tmp_path):
    from optuna.trial import TrialState

    worker = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--data-dir", str(synthetic_dir), "--tune", "2",
         "--tune-storage", postgres.url, "--study-name", "restart", *OUTAGE_FLAGS,
         "--output-dir", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_environment())
    try:
        stop_mid_trial(postgres, "restart", lambda: worker.poll() is None, restart_after=3)
        stdout, stderr = worker.communicate(timeout=300)
    finally:
        worker.kill()
    assert worker.returncode == 0, stderr
    assert "the database does not answer" in stdout, stdout
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    trials = shared_study(postgres.url, "restart").trials
    states = [trial.state for trial in trials]
    assert len(states) == 2 and all(state in (TrialState.COMPLETE, TrialState.PRUNED)
                                    for state in states), (
        states, [trial.user_attrs.get("error") for trial in trials], stdout)


@pytest.mark.slow
def test_a_database_gone_for_good_is_one_line_and_the_rerun_retries_its_trial(
        postgres, synthetic_dir, tmp_path, monkeypatch):
    import threading

    from optuna.trial import TrialState

    from digitkit import storage

    args = ["--data-dir", synthetic_dir, "--tune", "2", "--tune-storage", postgres.url,
            "--study-name", "gone", *OUTAGE_FLAGS, "--output-dir", tmp_path / "out"]
    monkeypatch.setattr(storage, "RECONNECT_SECONDS", 2)
    failures = []

    def stop():
        try:
            stop_mid_trial(postgres, "gone", lambda: True)
        except BaseException as err:  # noqa: B036  (reported on the test's own thread)
            failures.append(err)
            postgres.stop()  # so that the search below ends, and the test with it

    stopper = threading.Thread(target=stop)
    stopper.start()  # main() runs on this thread: it installs signal handlers
    try:
        result = run_main(*args)
    finally:
        stopper.join(timeout=300)
    assert not failures, failures
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --tune-storage postgresql+psycopg://postgres@/postgres"), last
    assert "could not be reached for 2 s" in last and "run the same command again" in last

    postgres.start()
    [stale] = [trial.number for trial in shared_study(postgres.url, "gone").trials
               if trial.state == TrialState.RUNNING]
    monkeypatch.undo()
    again = run_main(*args)  # at once: not after Optuna's 300 s of silence
    assert again.returncode == 0, again.stderr
    assert "waiting for" not in again.stderr
    trials = shared_study(postgres.url, "gone").trials
    assert trials[stale].state == TrialState.FAIL
    retried = [trial for trial in trials if trial.user_attrs.get("retry_of") == stale]
    assert len(retried) == 1 and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retried[0].params == trials[stale].params


def test_every_database_call_optunas_cache_makes_waits_out_a_restart():
    """A study wraps our storage in Optuna's _CachedStorage, which calls some of RDBStorage's
    private methods itself (a new trial, its settings, the trials a pruner reads): each one
    must go through PatientStorage.patiently too, or a restart inside it fails the trial
    (seen in CI: a trial FAILed with Optuna's StorageInternalError)."""
    import inspect
    import re

    import optuna

    from digitkit.storage import PatientStorage

    called = set(re.findall(r"self\._backend\.(\w+)\(",
                            inspect.getsource(optuna.storages._CachedStorage)))
    assert {"_create_new_trial", "_get_trials", "create_new_study"} <= called
    no_query = {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback"}  # attributes
    impatient = {name for name in called - no_query
                 if getattr(PatientStorage, name) is getattr(optuna.storages.RDBStorage, name)}
    assert not impatient


# A worker of the race below: Optuna imported once, then for each round: ready, wait for the
# signal, open that round's new study at once with the others.
OPEN_WHEN_TOLD = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from digitkit import tuning
folder, worker, rounds = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
for round_ in range(rounds):
    go = folder / f"go{round_}"
    (folder / f"ready{round_}-{worker}").touch()
    while not go.exists():  # all start together
        time.sleep(0.002)
    tuning.create_or_join(f"sqlite:///{folder / f'shared{round_}.db'}", "together",
                          embedded=False)
    print("opened", round_, flush=True)
"""


@pytest.mark.slow
def test_workers_opening_a_new_sqlite_study_at_once_all_get_it(tmp_path):
    """Four processes open a new study in a new SQLite file at the same instant, four times
    (four files): every one of them gets the study, every time."""
    from helpers import ROOT

    rounds, count = 4, 4
    workers = [subprocess.Popen([sys.executable, "-c", OPEN_WHEN_TOLD, str(ROOT), str(tmp_path),
                                 str(i), str(rounds)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(count)]
    try:
        for round_ in range(rounds):
            ready = [tmp_path / f"ready{round_}-{i}" for i in range(count)]
            deadline = time.monotonic() + 120  # bounds a hang
            while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
                if any(worker.poll() is not None for worker in workers):
                    break  # one failed: its output below says why
                time.sleep(0.01)
            (tmp_path / f"go{round_}").touch()
        outputs = [worker.communicate(timeout=120) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    opened = "".join(f"opened {round_}\n" for round_ in range(rounds))
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert (worker.returncode, stdout, stderr) == (0, opened, "")


@pytest.mark.slow
def test_two_workers_started_together_on_one_sqlite_file_share_its_study(synthetic_dir,
                                                                          tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    args = ["--data-dir", synthetic_dir, "--tune", "4", "--tune-storage", url,
            "--study-name", "s", *TINY[:1], "1", *TINY[2:], "--no-plots", "--quiet"]
    for status, _, stderr in two_workers(args, tmp_path, "w"):
        assert status == 0, stderr
        assert stderr == ""  # no Optuna warning, no traceback

    import optuna

    study = optuna.load_study(study_name="s", storage=url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 4 <= len(done) <= 5, [t.state for t in study.trials]
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == len(params)


def test_a_tune_range_may_widen_the_default_search_within_what_the_flags_accept(tmp_path):
    from digitkit import cli, tuning

    mode, config, options = cli.parse_command_line(
        ["--output-dir", str(tmp_path), "--tune", "3", "--tune-range", "epochs=1:2",
         "--tune-range", "width=16:2048", "--tune-range", "layers=0:5"])
    assert mode == "tune"
    space = tuning.search_space(config, options["given"], options["tune_ranges"])
    assert space["epochs"] == [1, 2] and space["width"] == [16, 2048]  # wider than 5-40, 32-1024
    assert space["layers"] == [0, 5] and space["dropout"] == [0.0, 0.5]  # the rest as before


@pytest.mark.slow
def test_a_search_that_failed_before_its_first_trial_does_not_block_the_corrected_command(
        synthetic_dir, tmp_path, monkeypatch):
    import digit_classifier

    out = tmp_path / "out"
    failed = run_main("--data-dir", tmp_path / "no-such-folder", "--output-dir", out,
                      "--tune", "2", *TINY)
    assert failed.returncode == 1 and (out / "tuning.db").exists()  # the study, still empty
    with monkeypatch.context() as patched:  # the search alone, not the run after it
        patched.setattr(digit_classifier, "run_training", lambda best, search: 0)
        corrected = run_main("--data-dir", synthetic_dir, "--output-dir", out, "--tune", "2",
                             *TINY, "--dropout", "0.1")
    assert corrected.returncode == 0, corrected.stderr
    assert "searches other settings" not in corrected.stderr
    assert study_states(out / "tuning.db") == [(0, "COMPLETE"), (1, "COMPLETE")]
