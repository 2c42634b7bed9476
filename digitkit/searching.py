"""Running an Optuna study: the trials the script's objective runs, the search around its
study.optimize, and the best trial's settings, to train as a run.

The study itself is opened by digitkit/tuning.py, before TensorFlow loads; everything here
runs once Keras is up (the script's objective trains its own recipe inside Trial). Imports
Optuna at its top, Keras only inside Trial: import this module only when --tune is given.
"""

import dataclasses
import logging
import sys
import time

import optuna
from optuna.trial import TrialState

from digitkit.config import format_hidden
from digitkit.errors import RunError, one_line
from digitkit.messages import LOGGER
from digitkit.tuning import (SETTLE_SECONDS, WORKER, command_line, counted, quiet_experimental,
                             retry_unfinished, suggest)

log = logging.getLogger(LOGGER)


def described(config, space):
    """The searched settings of a trial's config, as a short phrase."""
    parts = []
    if "layers" in space:
        parts.append(f"hidden {format_hidden(config.hidden)}")
    for name, text in (("dropout", "dropout {:.2f}"), ("learning_rate", "rate {:.2g}"),
                       ("batch_size", "batch {}"), ("epochs", "{} epochs"),
                       ("augment_strength", "distortion x{:.2f}")):
        if name in space:
            parts.append(text.format(getattr(config, name)))
    return ", ".join(parts)


class Trial:
    """One trial, as a context manager around the script's recipe: on entering, the trial's
    settings (run.config, quiet) and a fresh, seeded Keras session; on leaving, the trial's
    line in the log, and its error recorded with it if the recipe failed (the search goes
    on). run.pruning is the callback that reports each epoch to the pruner."""

    def __init__(self, trial, config, search):
        self.trial, self.search, self.result, self.accuracy = trial, search, None, None
        self.config = dataclasses.replace(suggest(trial, config, search["space"]), quiet=True)
        self.pruning = None

    def __enter__(self):
        """Claim the trial for this worker and start it from its own seed."""
        import keras  # once Keras is up: the script enters a trial only after backend.start

        from digitkit.training import Pruning

        self.pruning = Pruning(self.trial, optuna.TrialPruned)

        self.search["current"] = [self.trial.number]
        # Once the settings are chosen, so that retry_unfinished can repeat them.
        self.trial.set_user_attr("folder", self.search["folder"])
        self.trial.set_user_attr("worker", WORKER)
        keras.backend.clear_session()
        keras.utils.set_random_seed(self.config.seed + self.trial.number)
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, traceback):
        """Say how the trial ended; its score is the last epoch's validation accuracy."""
        what = f"trial {self.trial.number}: {described(self.config, self.search['space'])}"
        seconds = time.perf_counter() - self.started
        if exc_type is optuna.TrialPruned:
            log.info(f"{what}: {exc} ({seconds:.0f} s)")
        elif exc_type is not None and issubclass(exc_type, Exception):
            error = one_line(exc)
            if exc.__cause__ is not None:  # Optuna's StorageInternalError: the driver's reason
                error += f" ({one_line(exc.__cause__)})"
            self.trial.set_user_attr("error", error)
            log.info(f"{what}: failed ({error})")
        if exc_type is not None:
            return False
        trained = self.result["training"]
        if trained["interrupted"]:
            raise KeyboardInterrupt
        self.accuracy = float(trained["history"][-1]["val_accuracy"])
        self.trial.set_user_attr("train_seconds", round(trained["seconds"], 1))
        log.info(f"{what}: validation accuracy {self.accuracy:.2%} ({trained['seconds']:.0f} s)")
        return False


class Searching:
    """The search around the script's study.optimize: stale trials queued again first, then a
    Ctrl-C that keeps the study, the wait for the other workers, and the summary."""

    def __init__(self, search, signals):
        self.search, self.signals = search, signals

    def __enter__(self):
        """Queue again what a killed search left running, and say where the study stands."""
        # Optuna's warnings about itself while it samples ("Some regimes for parameter width_3
        # have less than 2 trials", experimental features): nothing a user can act on.
        self.quiet = quiet_experimental()
        self.quiet.__enter__()
        search = self.search
        if search["embedded"]:
            retry_unfinished(search["study"])
        else:  # those this folder's last search left running (a lost database, a kill)
            retry_unfinished(search["study"], [
                trial.number for trial in search["study"].get_trials(
                    deepcopy=False, states=(TrialState.RUNNING,))
                if trial.user_attrs.get("folder") == search["folder"]])
        search["current"], self.started = [], time.perf_counter()
        done = counted(search["study"])
        # None: trials until Enough stops the study (queued ones included); 0 once it holds
        # as many as were asked for.
        self.trials = None if done < search["trials"] else 0
        log.info(f"study {search['name']!r} in {search['url']}: {done} of "
                 f"{search['trials']} trials done or under way; searching "
                 f"{', '.join(search['space'])}")
        return self

    def __exit__(self, exc_type, exc, traceback):
        """Keep a stopped search's study; wait for the other workers of a shared one."""
        search, study = self.search, self.search["study"]
        if exc_type is KeyboardInterrupt:
            retry_unfinished(study, search["current"])
            search["interrupted"] = True
        elif exc_type is not None:
            self.quiet.__exit__(None, None, None)
            return False
        if not search["embedded"] and not search.get("interrupted"):
            search["interrupted"] = not settle(study, self.signals)
        search["seconds"] = time.perf_counter() - self.started
        states = [t.state for t in study.get_trials(deepcopy=False)]
        log.info(f"search: {states.count(TrialState.COMPLETE)} complete, "
                 f"{states.count(TrialState.PRUNED)} pruned, {states.count(TrialState.FAIL)} "
                 f"failed or stopped, of {search['trials']} asked for, in "
                 f"{search['seconds']:.0f} s")
        self.quiet.__exit__(None, None, None)
        return True


class Enough:
    """An Optuna callback: stop once the study holds the trials asked for, this worker's and
    the others' (see counted: a trial a Ctrl-C stopped does not count, one that failed on
    its own does, which optuna.study.MaxTrialsCallback's states cannot tell apart)."""

    def __init__(self, wanted):
        self.wanted = wanted

    def __call__(self, study, trial):
        """After each trial: stop the study once it holds enough."""
        if counted(study) >= self.wanted:
            study.stop()


def best_config(search, config):
    """The best trial's Config, to train as a run; None (having said so) if a Ctrl-C stopped
    the search. A search in which no trial finished is a RunError."""
    study, wanted = search["study"], search["trials"]
    if search.get("interrupted"):
        finished = len(study.get_trials(deepcopy=False,
                                        states=(TrialState.COMPLETE, TrialState.PRUNED)))
        print(f"interrupted: the study keeps every finished trial; run the same command "
              f"again to continue ({finished} of {wanted} done)", file=sys.stderr)
        return None
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise RunError("--tune: no trial finished, so there is no best one to train; see "
                       "the errors above")
    best = study.best_trial
    chosen = suggest(optuna.trial.FixedTrial(best.params), config, search["space"])
    log.info(f"best: trial {best.number}, validation accuracy {best.value:.2%}; training "
             f"it as a run:\n  {command_line(chosen)}")
    return chosen


def settle(study, signals):
    """Wait until no other worker is running a trial of the shared study, so that every
    worker reports the same best; a worker gone silent is failed by Optuna's heartbeat.
    Returns False if a Ctrl-C ended the wait."""
    told = False
    while running := study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if signals.received:
            return False
        if not told:
            log.info(f"waiting for {len(running)} trials other workers are running")
            told = True
        with quiet_experimental():
            optuna.storages.fail_stale_trials(study)
        time.sleep(SETTLE_SECONDS)
    return True
