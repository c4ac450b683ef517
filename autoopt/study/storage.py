"""Opening the Optuna storage, and waiting for a database that went away.

``open_storage`` checks the URL first (``Backend.check``: bad input is a ``UsageError``, exit 2),
then opens it, serialising the creation of a new SQLite store and retrying PostgreSQL's race on
Optuna's tables between drivers started together. A database that goes away after the start is
waited for (``with_retry``: exponential backoff for ``AUTOOPT_STORAGE_RETRY_S`` seconds, then
``StorageDown``, exit 1).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable
from typing import TypeVar

from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

import autoopt.study.quiet  # noqa: F401  (Optuna quietened first)
from autoopt.base.redact import redact
from autoopt.base.retry import retried, tries
from autoopt.errors import StorageDown, UsageError
from autoopt.study.backends import FIX, Backend, backend_for, env_seconds

log = logging.getLogger("autoopt.study")
T = TypeVar("T")

HEARTBEAT_S = 3
# A RUNNING trial whose driver sent no heartbeat for this long is failed and re-queued by any
# driver, a resumed one included. Five missed beats: a busy driver is not taken for a dead
# one, and a study resumed after a crash waits at most this long for its orphans.
GRACE_S = 15
MAX_RETRY = 2
STORAGE_RETRY_S = 60.0  # default of AUTOOPT_STORAGE_RETRY_S


def check_storage(url: str, *, write: bool = True) -> Backend:
    """The preflight of a storage URL, before anything is created: its backend, or a
    ``UsageError`` naming the URL (password masked) and the fix."""
    backend = backend_for(url)
    backend.check(write=write)
    return backend


def open_storage(url: str, *, pool_size: int = 2, heartbeat: bool = True, retry: bool = False,
                 write: bool = True) -> RDBStorage:
    """Open (creating its tables if needed) the Optuna storage at ``url``; bad input (see
    ``check_storage``) or an unopenable URL is a ``UsageError`` that names the URL without its
    password. With ``retry`` (workers, whose driver already checked and reached it) an
    unreachable database is waited for (``with_retry``) and no preflight runs. ``write=False``
    (reading a study for a report) accepts a read-only SQLite file."""
    backend = backend_for(url) if retry else check_storage(url, write=write)

    def _open_once() -> RDBStorage:
        kwargs = backend.engine_kwargs(pool_size)
        with backend.creation_lock():
            if not heartbeat:
                return RDBStorage(backend.url, engine_kwargs=kwargs)
            return RDBStorage(backend.url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                              grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))

    def _open() -> RDBStorage:
        # Drivers started together on an empty PostgreSQL database all create Optuna's tables;
        # the losers fail on a duplicate type or row. The tables are there then: opening again
        # finds them.
        return retried(_open_once, tries(5, wait=lambda n: 0.2 * n, when=_schema_race))

    try:
        storage = with_retry(_open, what="open the storage") if retry else _open()
    except StorageDown:
        raise
    except ModuleNotFoundError as exc:
        hint = " (pip install 'autoopt[postgres]')" if "psycopg" in str(exc) else ""
        raise UsageError(f"cannot open storage {backend.masked}: missing driver {exc.name}{hint}") from None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = redact(reason.replace(backend.url, backend.masked).replace(url, backend.masked))
        raise UsageError(f"cannot open storage {backend.masked}: {reason}; {FIX}") from None
    backend.tune(storage.engine)
    return storage


def _schema_race(exc: BaseException) -> bool:
    """Whether ``exc`` comes from another process creating the same tables at the same time."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, IntegrityError) or type(seen).__name__ in (
                "UniqueViolation", "DuplicateTable", "DuplicateObject"):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return False


def storage_retry_s() -> float:
    """How long storage operations wait for an unreachable database: env
    ``AUTOOPT_STORAGE_RETRY_S`` (seconds), 60 by default."""
    return env_seconds("AUTOOPT_STORAGE_RETRY_S", STORAGE_RETRY_S, allow_zero=True)


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it wraps, says the database could not be reached (a refused
    or dropped connection, a timeout), as opposed to a bug or bad data. Optuna wraps failed
    commits in ``StorageInternalError``; the cause tells."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, (OperationalError, PoolTimeout)):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if type(seen).__name__ == "OperationalError" and type(seen).__module__.startswith("psycopg"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it wraps, says a SQLite database is busy: another process
    holds its write lock (``database is locked``). The database is there; it is waited for."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        text = str(seen).lower()
        if "database is locked" in text or "database is busy" in text or "database table is locked" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


BUSY_WAIT_S = 600.0  # a SQLite database busy this long is given up on (StorageDown): a stuck writer


def with_retry(fn: Callable[[], T], *, what: str, budget_s: float | None = None) -> T:
    """Run a storage operation, retrying with exponential backoff (0.5 s doubling to 8 s) while
    the database is unreachable; after ``budget_s`` (default ``storage_retry_s()``) raise
    ``StorageDown``. A busy SQLite database (``is_busy``: other drivers write it) is no outage:
    it is waited for, quietly, up to ``BUSY_WAIT_S``. Other errors pass through at once."""
    budget = storage_retry_s() if budget_s is None else budget_s
    delays = (min(0.5 * 2 ** k, 8.0) for k in itertools.count())  # an outage's waits; a busy one's are short

    def policy(exc: Exception, failures: int, waited: float) -> float | None:
        if not is_unreachable(exc):
            return None
        if is_busy(exc):
            if waited >= max(budget, BUSY_WAIT_S):
                raise StorageDown(f"storage busy for {waited:.0f}s while trying to {what}") from None
            log.info("storage busy (%s); retrying", what)
            return 0.05 + 0.2 * random.random()
        if waited >= budget:
            raise StorageDown(f"storage unreachable for {waited:.0f}s while trying to {what}") from None
        delay = next(delays)
        log.warning("storage unreachable (%s); retrying in %.1fs", what, delay)
        return min(delay, max(0.1, budget - waited))

    return retried(fn, policy)
