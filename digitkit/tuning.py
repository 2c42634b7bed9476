"""--tune: an Optuna search for the network's settings; its best trial then trains as a run.

Each trial trains on the training split and is scored by its validation accuracy, never
by the test set. Optuna's TPE sampler proposes the settings; after every epoch the
trial's validation loss goes to a median pruner, which stops a trial that lags behind
the others at the same epoch. The study lives in OUTPUT_DIR/tuning.db (SQLite), so the
same command run again continues a search that was interrupted or killed; with
--tune-storage (any database URL Optuna accepts) and --study-name, the same command on
several machines joins one study: Optuna's own distributed mode, no scheduler of ours.

Opens the study (digitkit/searching.py runs it) and writes its reports. Imports Optuna at
its top, nothing of Keras: import this module only when a tuning flag is given.
"""

import contextlib
import dataclasses
import importlib.util
import json
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from digitkit.cli import batch_powers, suggested_command
from digitkit.config import TUNE_SPACE, defaults_for, resume_fingerprint
from digitkit.errors import RunError, UsageError, one_line
from digitkit.files import write_text
from digitkit.storage import PatientStorage, shown_url

STUDY_FILE = "tuning.db"  # in the output folder, unless --tune-storage names a database
STUDY_NAME = "digit_classifier"
PRUNE_AFTER_TRIALS = 5  # the pruner compares a trial with at least this many others
PRUNE_AFTER_EPOCHS = 1  # ... and never before its second epoch
HEARTBEAT_SECONDS = 60  # a worker on a shared database reports it is alive this often;
STALE_SECONDS = 300  # a trial silent this long is taken as its worker's death, and rerun
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # which process ran a trial, in tuning.csv
SETTLE_SECONDS = 2  # how often a worker that is done looks whether the others are
# The settings a trial's command line repeats when they differ from the defaults.
COMMAND_FIELDS = ("hidden", "dropout", "augment", "augment_strength", "deskew", "committee",
                  "epochs", "batch_size", "learning_rate", "lr_schedule", "warmup_epochs",
                  "validation_split", "patience", "steps_per_execution", "seed", "backend")
# Which flag fixes each searched setting: a setting the user gives is not searched.
PINNED_BY = {"layers": "hidden", "width": "hidden", "dropout": "dropout",
             "learning_rate": "learning_rate", "batch_size": "batch_size", "epochs": "epochs",
             "augment_strength": "augment_strength"}

# This program says how each trial ended (searching.Trial); Optuna's own warnings repeat it,
# with a traceback for a trial a Ctrl-C stopped. Its errors still show.
optuna.logging.set_verbosity(optuna.logging.ERROR)


@contextlib.contextmanager
def quiet_experimental():
    """Optuna's 'experimental feature' warnings silenced: what is used here (grouped TPE,
    heartbeats, the matplotlib plots) is documented, and tested here. So are the warnings
    its own code raises about itself (its history plot's legend() with nothing to label,
    when every trial was pruned): nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"optuna\.")
        yield


def search_space(config, given, ranges):
    """name -> [low, high] of what --tune searches: TUNE_SPACE narrowed by --tune-range,
    less each setting a flag or preset gave (given: the Config fields the user set)."""
    space = {}
    for name, (low, high, _) in TUNE_SPACE.items():
        if PINNED_BY[name] in given or (name == "augment_strength" and not config.augment):
            if name in ranges:
                why = "--augment none" if PINNED_BY[name] not in given else "a flag"
                raise UsageError(f"--tune-range {name}: not searched, {why} sets it")
            continue
        space[name] = list(ranges.get(name, (low, high)))
    return space


def suggest(trial, config, space):
    """The Config of one trial: config with each searched setting drawn for the trial (or
    read back from a finished trial, through optuna.trial.FixedTrial)."""
    values = {}
    if "layers" in space:
        layers = trial.suggest_int("layers", *space["layers"])
        values["hidden"] = tuple(trial.suggest_int(f"width_{i}", *space["width"], log=True)
                                 for i in range(1, layers + 1))
    for name in ("dropout", "augment_strength"):
        if name in space:
            values[name] = trial.suggest_float(name, *space[name])
    if "learning_rate" in space:
        values["learning_rate"] = trial.suggest_float("learning_rate", *space["learning_rate"],
                                                      log=True)
    if "batch_size" in space:
        values["batch_size"] = trial.suggest_categorical("batch_size",
                                                         batch_powers(*space["batch_size"]))
    if "epochs" in space:
        values["epochs"] = trial.suggest_int("epochs", *space["epochs"])
    return dataclasses.replace(config, **values)


def search_settings(config, space):
    """What a study's trials must share to be compared: the search space and every fixed
    setting that changes what a trial learns (not where its data or files are)."""
    fixed = {key: value for key, value in resume_fingerprint(config).items()
             if key != "data_dir"}
    return json.loads(json.dumps(dict(space=space, fixed=fixed)))


def driver_url(url):
    """url, with the PostgreSQL driver that is installed named in it: SQLAlchemy reads a
    plain postgresql:// as psycopg2, the older of the two drivers."""
    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + rest
        if importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + rest
        raise RunError(f"--tune-storage {shown_url(url)}: PostgreSQL needs a driver; "
                       f"install it with: pip install 'psycopg[binary]'")
    return url


def open_study(config, options, output_dir):
    """The study --tune works on, created or joined; refuses one made with other settings.

    Runs before TensorFlow is imported, so a wrong or unreachable database fails at once.
    """
    import sqlalchemy

    space = search_space(config, options["given"], options["tune_ranges"])
    if not space:
        raise UsageError("--tune: every searched setting is fixed by a flag; drop one of "
                         "--hidden, --dropout, --learning-rate, --batch-size, --epochs")
    embedded = options["tune_storage"] is None
    url = (f"sqlite:///{output_dir / STUDY_FILE}" if embedded
           else driver_url(options["tune_storage"]))
    name, shown = options["study_name"] or STUDY_NAME, shown_url(url)
    try:
        sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # their text would show a password
        raise UsageError(f"--tune-storage {shown}: not a database URL SQLAlchemy can read "
                         f"(dialect://user:password@host:port/database)") from None
    try:
        study = create_or_join(url, name, embedded)
    except ImportError as err:
        raise RunError(f"--tune-storage {shown}: no driver for this database "
                       f"({one_line(err)})") from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as err:
        raise UsageError(f"--tune-storage {shown}: not a database URL ({one_line(err)})") from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError, ValueError) as err:
        cause = getattr(err, "orig", None) or err
        raise RunError(f"--tune-storage {shown}: cannot open the study "
                       f"({one_line(cause)})") from None
    wanted, stored = search_settings(config, space), study.user_attrs.get("search")
    if stored is None or (stored != wanted and not study.get_trials(deepcopy=False)):
        # A study without a trial (a search that failed before its first) holds nothing to
        # protect: it searches what this command asks for.
        study.set_user_attr("search", wanted)
    elif stored != wanted:
        differ = sorted({*(key for key in {*stored["space"], *wanted["space"]}
                           if stored["space"].get(key) != wanted["space"].get(key)),
                         *(key for key in wanted["fixed"]
                           if stored["fixed"].get(key) != wanted["fixed"][key])})
        raise UsageError(f"study {name!r} in {shown} searches other settings "
                         f"({', '.join(differ)}); repeat its flags, or pass another "
                         f"--study-name")
    # A shared study gets unseeded proposals, so that workers do not all propose the same
    # first trials; an embedded one is reproducible, and continues with fresh proposals.
    with quiet_experimental():  # grouped multivariate TPE
        study.sampler = optuna.samplers.TPESampler(
            seed=config.seed + len(study.trials) if embedded else None, multivariate=True,
            group=True, constant_liar=not embedded)
    # The trials this output folder's search runs are marked with it: the folder is locked,
    # so its trials left running are a killed search's, to fail and queue again at once.
    folder = f"{socket.gethostname()}:{output_dir.resolve()}"
    return dict(study=study, embedded=embedded, url=shown, name=name, space=space, folder=folder,
                trials=options["tune"], minutes=options["tune_minutes"],
                timeout=options["tune_minutes"] * 60 if options["tune_minutes"] else None)


def create_or_join(url, name, embedded, attempts=5):
    """The study `name` in the database at url, created with its tables if they are missing.

    Workers started together on a new database race to create Optuna's tables, and all but
    one fail on a table, type or version row that already exists (optuna/optuna#1092): on
    PostgreSQL those try again, and find the tables made; on an SQLite file they take turns
    (a lock beside the file), so none fails.
    """
    import sqlalchemy

    for attempt in range(attempts):
        try:
            # An embedded study is its output folder's, which this process has locked.
            alone = contextlib.nullcontext() if embedded else one_at_a_time(url)
            with quiet_experimental(), alone:  # heartbeats
                storage = (optuna.storages.RDBStorage if embedded else PatientStorage)(
                    url, heartbeat_interval=None if embedded else HEARTBEAT_SECONDS,
                    grace_period=None if embedded else STALE_SECONDS,
                    heartbeat_stale_trial_callback=None if embedded else
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
            study = optuna.create_study(
                storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS,
                                                   n_warmup_steps=PRUNE_AFTER_EPOCHS))
            if not embedded:
                storage.opened()
            return study
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                sqlalchemy.exc.OperationalError) as err:
            racing = any(word in str(err).lower()
                         for word in ("exist", "duplicate", "unique constraint", "locked"))
            if attempt == attempts - 1 or not racing:
                raise
            time.sleep(0.5 + attempt)


@contextlib.contextmanager
def one_at_a_time(url):
    """For an SQLite file: hold an exclusive lock on FILE.lock while the block runs, so that
    processes on one machine create and open the study in turn. Other databases: nothing."""
    import fcntl

    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        yield
        return
    database = Path(parsed.database)
    # Not the database file itself: closing any handle on it would drop SQLite's own locks.
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def counted(study):
    """How many trials count towards --tune N: finished, running, queued, and failed ones
    that failed on their own (not by a Ctrl-C or a killed worker: those run again)."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.FAIL or "error" in t.user_attrs)


def retry_unfinished(study, numbers=None):
    """Queue again, once each, the settings of the trials a Ctrl-C stopped or a killed search
    left running; numbers=None: all of them, which only the process holding the output
    folder's lock over an embedded study can tell apart from trials still under way."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for trial in trials:
        if numbers is not None and trial.number not in numbers:
            continue
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
        elif trial.state != TrialState.FAIL:
            continue
        # A trial names its worker once it has chosen all its settings; one stopped before
        # that leaves nothing to retry.
        if ("worker" in trial.user_attrs and "error" not in trial.user_attrs
                and trial.number not in retried):
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def command_line(config):
    """The command that trains config as a normal run: the user's data and output flags, and
    every setting that differs from the dataset's defaults."""
    default, flags = defaults_for(config.dataset), []
    for name in COMMAND_FIELDS:
        value = getattr(config, name)
        if value == getattr(default, name):
            continue
        flag = "--" + name.replace("_", "-")
        if name == "hidden":
            flags += [flag, *map(str, value)] if value else [flag]
        elif isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, "none" if value is None
                      else f"{value:.4g}" if isinstance(value, float) else str(value)]
    return suggested_command(config, *flags)


def laid_out(figure):
    """An Optuna figure made large enough that its labels and legend fit."""
    figure.set_size_inches(10, 5.5)
    figure.tight_layout()
    return figure


def draw_search(stage, study, complete, space):
    """tuning_history.png and, once two trials completed, tuning_importance.png; their paths."""
    import matplotlib
    from optuna.visualization import matplotlib as optuna_plots

    from digitkit.plots import save_figure

    images = []
    # Optuna's plots switch Matplotlib to its ggplot style: only for these two pictures.
    with quiet_experimental(), matplotlib.rc_context():
        history = optuna_plots.plot_optimization_history(study,
                                                         target_name="validation accuracy")
        images.append(save_figure(laid_out(history.figure), stage / "tuning_history.png"))
        if len(complete) >= 2 and len(space) >= 2:
            try:
                importance = optuna_plots.plot_param_importances(
                    study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
            except (ValueError, RuntimeError):  # too few distinct trials to tell
                importance = None
            if importance is not None:
                images.append(save_figure(laid_out(importance.figure),
                                          stage / "tuning_importance.png"))
    return images


def write_reports(stage, search_run, pictures=True):
    """tuning.csv (one row per trial), the search's pictures in stage (pictures=False:
    --no-plots); returns the pictures' paths and the search's record for metrics.json."""
    study = search_run["study"]
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs",
                                          "datetime_start", "duration"))
    frame = frame.rename(columns={"value": "val_accuracy"})
    frame["state"] = frame["state"].map({"COMPLETE": "complete", "PRUNED": "pruned",
                                         "FAIL": "failed", "RUNNING": "running",
                                         "WAITING": "waiting"})
    write_text(stage / "tuning.csv", frame.to_csv(index=False))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    images = draw_search(stage, study, complete, search_run["space"]) if pictures else []
    best = sorted(complete, key=lambda t: t.value, reverse=True)[:5]
    states = [t.state for t in study.get_trials(deepcopy=False)]
    record = dict(
        study=search_run["name"], storage=search_run["url"], asked=search_run["trials"],
        minutes=search_run["minutes"], seconds=round(search_run["seconds"], 1),
        complete=states.count(TrialState.COMPLETE), pruned=states.count(TrialState.PRUNED),
        failed=states.count(TrialState.FAIL), space=search_run["space"],
        best=[dict(number=t.number, val_accuracy=t.value, params=t.params) for t in best])
    return images, record
