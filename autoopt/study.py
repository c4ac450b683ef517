"""Storage URLs, the Optuna study (create, load, resume), its sampler and pruner.

Heartbeats (recorded by the driver for every trial in flight) let any driver fail the
trials of a dead one (``fail_stale``) and ``RetryHeartbeatStaleTrialCallback`` re-queues them, so a
study survives crashes. ``budget_used`` counts trials against ``--trials`` so that several
drivers, or a resumed one, stop at exactly the requested total.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from autoopt.errors import UsageError

log = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT_S = 5
GRACE_S = 30
MAX_RETRY = 2
STORAGE_RETRY_S = 60.0

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats, groups and stale-trial failing are "experimental" in Optuna but are what a
# distributed ask/tell loop needs; their warnings would only clutter the user's terminal.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used with Study.optimize.*")


class StorageDown(RuntimeError):
    """The storage stayed unreachable after retries (exit code 1)."""


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs, params and messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def absolute_sqlite(url: str) -> str:
    """Make a relative SQLite path absolute, so workers in other folders open the same file."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


def sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) and ":memory:" not in url else None


def _engine_kwargs(url: str, pool_size: int) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Several processes write one file: wait for the lock rather than fail at once.
        return {"connect_args": {"timeout": 60}}
    # Small pools: every worker holds its own, and PostgreSQL's max_connections is shared.
    return {"pool_size": pool_size, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 300}


def open_storage(url: str, *, pool_size: int = 2, heartbeat: bool = True) -> RDBStorage:
    """Open (creating its tables if needed) the Optuna storage at ``url``; a bad or unreachable
    URL is a ``UsageError`` that names the URL without its password."""
    try:
        storage = RDBStorage(
            url, engine_kwargs=_engine_kwargs(url, pool_size),
            heartbeat_interval=HEARTBEAT_S if heartbeat else None,
            grace_period=GRACE_S if heartbeat else None,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY) if heartbeat else None,
        )
    except ModuleNotFoundError as exc:
        hint = " (pip install 'autoopt[postgres]')" if "psycopg" in str(exc) else ""
        raise UsageError(f"cannot open storage {mask_url(url)}: missing driver {exc.name}{hint}") from None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.replace(url, mask_url(url))
        raise UsageError(f"cannot open storage {mask_url(url)}: {reason}; check --storage or "
                         "AUTOOPT_STORAGE") from None
    if url.startswith("sqlite"):
        _tune_sqlite(storage)
    return storage


def _tune_sqlite(storage: RDBStorage) -> None:
    # WAL lets readers and one writer proceed together; NORMAL sync is safe under WAL and
    # saves an fsync per transaction (trials report every epoch).
    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    storage.engine.dispose()


def with_retry(fn: Callable[[], T], *, what: str, budget_s: float = STORAGE_RETRY_S) -> T:
    """Run a storage operation, retrying with exponential backoff while the database is
    unreachable; after ``budget_s`` raise ``StorageDown``."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    delay, start = 0.5, time.monotonic()
    while True:
        try:
            return fn()
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and not exc.connection_invalidated and \
                    not isinstance(exc, OperationalError):
                raise
            waited = time.monotonic() - start
            if waited >= budget_s:
                raise StorageDown(f"storage unreachable for {waited:.0f}s while trying to {what}") from None
            log.warning("storage unreachable (%s); retrying in %.1fs", what, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def build_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler for a conditional space: TPE multivariate with groups (each optimizer
    family's subspace is modelled jointly) and the constant liar (trials run in parallel)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed)


def build_pruner(name: str, *, epochs: int, warmup: float) -> optuna.pruners.BasePruner:
    """Median or Hyperband, with no pruning in the first ``warmup`` fraction of the epochs."""
    from autoopt.pruning import build_pruner as _build

    return _build(name, epochs=epochs, warmup=warmup)


def open_study(storage: RDBStorage, name: str, *, direction: str, sampler: str = "tpe", seed: int = 0,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create the study, or load it when it exists (resume). The sampler's seed is offset by
    the trials already there, so a resumed study does not replay its first proposals."""
    def _open() -> optuna.Study:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                    load_if_exists=True, pruner=pruner)
        if study.direction.name.lower() != direction:
            raise UsageError(f"study '{name}' exists with direction {study.direction.name.lower()}, "
                             f"but this task {direction}s its metric; pick another --study name")
        return study

    study = with_retry(_open, what="open the study")
    offset = len(study.get_trials(deepcopy=False))
    study.sampler = build_sampler(sampler, seed + offset)
    return study


def load_existing_study(storage: RDBStorage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def budget_used(trials: list[FrozenTrial]) -> int:
    """Trials that count against ``--trials``: all of them except failed ones that were
    re-queued (their retry counts instead)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return len(trials) - len(retried & {t.number for t in trials})


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """Trials by state name (complete, pruned, fail, running, waiting)."""
    out = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        out[t.state.name.lower()] += 1
    return out


def fail_stale(study: optuna.Study) -> None:
    """Fail (and re-queue) the RUNNING trials whose driver stopped sending heartbeats."""
    optuna.storages.fail_stale_trials(study)


def retry_trial(study: optuna.Study, trial_number: int) -> None:
    """Re-queue a failed trial, as the heartbeat path does for a dead driver."""
    frozen = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(
        study._study_id, trial_number))
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, frozen)


@contextlib.contextmanager
def ask_lock(url: str) -> Iterator[None]:
    """Serialise "count the budget, then ask" between drivers sharing one study.

    SQLite: a file lock beside the database (drivers share the machine); PostgreSQL: an
    advisory lock; other storages: none.
    """
    path = sqlite_path(url)
    if path is not None:
        with open(f"{path}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    if url.startswith("postgresql"):
        from sqlalchemy import create_engine, text

        key = int.from_bytes(hashlib.sha256(url.encode()).digest()[:7], "big")
        engine = _lock_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    yield


_LOCK_ENGINES: dict[str, Any] = {}


def _lock_engine(url: str) -> Any:
    from sqlalchemy import create_engine

    if url not in _LOCK_ENGINES:
        _LOCK_ENGINES[url] = create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)
    return _LOCK_ENGINES[url]
