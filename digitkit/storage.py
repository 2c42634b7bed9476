"""A shared Optuna study's database that may restart under a search: its calls are tried
again on a fresh connection for a while, then end the search in one line (exit 1).

Imports Optuna and the standard library; SQLAlchemy (Optuna's own) where it is used.
"""

import contextlib
import logging
import re
import time

import optuna

from digitkit.errors import LostError, one_line
from digitkit.messages import LOGGER

RECONNECT_SECONDS = 60  # a shared database out of reach is retried this long (a restart)


def shown_url(url):
    """A database URL as it may be printed: any password replaced by ***."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: hide what stands where one would
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


class PatientStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, for a shared database that may restart under a search: a call
    that loses its connection is tried again, with a fresh one, for RECONNECT_SECONDS; after
    that it raises LostError (one line, exit 1), and so does every later call at once.
    patience is 0 while the study is opened, so that a wrong URL fails at once. A heartbeat
    that cannot be sent is skipped: the search's own next call says what was lost."""

    def __init__(self, url, **kwargs):
        # A pooled connection the restart closed is noticed before use, not in a query.
        super().__init__(url, engine_kwargs=dict(pool_pre_ping=True), **kwargs)
        self.patience, self.lost = 0, None

    def opened(self):
        """The study is open: from now on, outlast a restart."""
        self.patience = RECONNECT_SECONDS

    def record_heartbeat(self, trial_id):
        """Say this worker is alive, if the database can be reached."""
        with contextlib.suppress(LostError):
            self.patiently(super().record_heartbeat, trial_id)

    def patiently(self, call, *args, **kwargs):
        """call(*args, **kwargs), tried again while its connection is lost, for patience."""
        import sqlalchemy

        started, pause = None, 0.5
        while True:
            if self.lost:
                raise LostError(self.lost)
            try:
                return call(*args, **kwargs)
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as err:
                cause = err.__cause__ if isinstance(err, optuna.exceptions.StorageInternalError) \
                    else err
                # A session whose connection died mid-transaction is left needing a rollback.
                if not (isinstance(cause, (sqlalchemy.exc.OperationalError,
                                           sqlalchemy.exc.InterfaceError,
                                           sqlalchemy.exc.PendingRollbackError))
                        or getattr(cause, "connection_invalidated", False)):
                    raise
                with contextlib.suppress(Exception):  # the next try gets a fresh session
                    self.remove_session()
                if not self.patience:
                    raise
                reason = one_line(getattr(cause, "orig", None) or cause)  # not the SQL
                if started is None:
                    started = time.monotonic()
                    logging.getLogger(LOGGER).info(f"the database does not answer ({reason}); "
                                                   f"trying again for {self.patience} s")
                elif time.monotonic() - started >= self.patience:
                    self.lost = (f"--tune-storage {shown_url(self.url)}: the database could "
                                 f"not be reached for {self.patience} s ({reason}); run the "
                                 f"same command again to continue the study")
                    raise LostError(self.lost) from None
            time.sleep(pause)
            pause = min(2 * pause, 5.0)


def patient(name):
    """RDBStorage's method `name`, through PatientStorage.patiently."""
    method = getattr(optuna.storages.RDBStorage, name)

    def call(self, *args, **kwargs):
        return self.patiently(method, self, *args, **kwargs)

    call.__name__, call.__doc__ = name, method.__doc__
    return call


# Every public storage method, and the private ones Optuna's _CachedStorage (which wraps this
# storage in a study) calls on it directly: a new trial, its settings, the trials a pruner
# reads, the best trial, the stale ones (tests/test_tuning.py checks the list against Optuna's).
CACHE_CALLS = {"_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id",
               "_get_stale_trial_ids"}
for _name in {*(name for name in dir(optuna.storages.BaseStorage) if not name.startswith("_")),
              *CACHE_CALLS} - {"record_heartbeat", "remove_session", "upgrade"}:
    if callable(getattr(optuna.storages.RDBStorage, _name, None)):
        setattr(PatientStorage, _name, patient(_name))
