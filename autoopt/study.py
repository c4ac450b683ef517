"""Storage URLs, the Optuna study (create, load, resume), its sampler and pruner.

Heartbeats (recorded by the driver for every trial in flight) let any driver fail the
trials of a dead one (``fail_stale``) and ``RetryHeartbeatStaleTrialCallback`` re-queues them, so a
study survives crashes. ``budget_used`` counts trials against ``--trials`` so that several
drivers, or a resumed one, stop at exactly the requested total.

A database that goes away for a while is waited for (``with_retry``: exponential backoff for
``AUTOOPT_STORAGE_RETRY_S`` seconds, then ``StorageDown``). Passwords in URLs never reach a
message or a log line (``mask_url``, ``redact``, ``redact_logs``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from autoopt.errors import UsageError

log = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT_S = 3
# A RUNNING trial whose driver sent no heartbeat for this long is failed and re-queued by any
# driver, a resumed one included. Five missed beats: a busy driver is not taken for a dead
# one, and a study resumed after a crash waits at most this long for its orphans.
GRACE_S = 15
MAX_RETRY = 2
STORAGE_RETRY_S = 60.0  # default of AUTOOPT_STORAGE_RETRY_S
CONNECT_TIMEOUT_S = 10  # a host that does not answer fails a connection attempt, then we retry

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats, groups and stale-trial failing are "experimental" in Optuna but are what a
# distributed ask/tell loop needs; their warnings would only clutter the user's terminal.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore",
                        message=".*Heartbeat of storage is supposed to be used with Study.optimize.*")


class StorageDown(RuntimeError):
    """The storage stayed unreachable after retries (exit code 1)."""


# scheme://user:password@ (up to the last "@" of the token, for passwords with a raw "@": better
# hide too much) and libpq's password=... settings.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<pw>\S+)@")
_KEY_PASSWORD = re.compile(r"(?i)(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|\S+)")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs, params and messages).

    >>> mask_url("postgresql+psycopg://autoopt:s3cret@db:5432/optuna")
    'postgresql+psycopg://autoopt:***@db:5432/optuna'
    """
    return redact(url)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it, and of every ``password=`` setting,
    replaced by ``***``.

    >>> redact("cannot reach http://me:pa55@mlflow:5000/api; dsn host=db password=pa55 user=me")
    'cannot reach http://me:***@mlflow:5000/api; dsn host=db password=*** user=me'
    """
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", text)
    return _KEY_PASSWORD.sub(lambda m: f"{m['head']}***", text)


def redact_logs() -> None:
    """Make every log record of this process pass through ``redact`` (its message, arguments
    and traceback), whatever logger or handler it goes to: a library's error message may
    quote a URL with its password (MLflow's REST errors do). Idempotent."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_autoopt_redacts", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: leave it to the handler to report
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    make_record._autoopt_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


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
    # Small pools: PostgreSQL's max_connections (100 by default) is shared by all drivers,
    # workers and the MLflow server. A worker uses at most two at once (its trial, its
    # background reports): 1 + 1 overflow; a driver 2 + 1, and one more for the ask lock. So
    # about 4 per driver and 2 per worker: past ~40 workers, put PgBouncer in front. Pre-ping
    # replaces connections a database restart or a network cut left dead.
    kwargs: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 1, "pool_pre_ping": True,
                              "pool_recycle": 300}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return kwargs


def open_storage(url: str, *, pool_size: int = 2, heartbeat: bool = True, retry: bool = False) -> RDBStorage:
    """Open (creating its tables if needed) the Optuna storage at ``url``; a bad or unreachable
    URL is a ``UsageError`` that names the URL without its password. With ``retry`` (workers,
    whose driver already reached it) an unreachable database is waited for (``with_retry``)."""
    def _open_once() -> RDBStorage:
        if not heartbeat:
            return RDBStorage(url, engine_kwargs=_engine_kwargs(url, pool_size))
        return RDBStorage(url, engine_kwargs=_engine_kwargs(url, pool_size), heartbeat_interval=HEARTBEAT_S,
                          grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))

    def _open() -> RDBStorage:
        # Drivers started together on an empty database all create Optuna's tables; on
        # PostgreSQL the losers fail on a duplicate type or row. The tables are there then:
        # opening again finds them.
        for attempt in range(5):
            try:
                return _open_once()
            except Exception as exc:
                if attempt == 4 or not _schema_race(exc):
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    try:
        storage = with_retry(_open, what="open the storage") if retry else _open()
    except StorageDown:
        raise
    except ModuleNotFoundError as exc:
        hint = " (pip install 'autoopt[postgres]')" if "psycopg" in str(exc) else ""
        raise UsageError(f"cannot open storage {mask_url(url)}: missing driver {exc.name}{hint}") from None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = redact(reason.replace(url, mask_url(url)))
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


def _schema_race(exc: BaseException) -> bool:
    """Whether ``exc`` comes from another process creating the same tables at the same time."""
    from sqlalchemy.exc import IntegrityError

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
    raw = os.environ.get("AUTOOPT_STORAGE_RETRY_S", "").strip()
    if not raw:
        return STORAGE_RETRY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise UsageError(f"AUTOOPT_STORAGE_RETRY_S must be a number of seconds >= 0, got {raw!r}")
    return value


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it wraps, says the database could not be reached (a refused
    or dropped connection, a timeout), as opposed to a bug or bad data. Optuna wraps failed
    commits in ``StorageInternalError``; the cause tells."""
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

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


def with_retry(fn: Callable[[], T], *, what: str, budget_s: float | None = None) -> T:
    """Run a storage operation, retrying with exponential backoff (0.5 s doubling to 8 s) while
    the database is unreachable; after ``budget_s`` (default ``storage_retry_s()``) raise
    ``StorageDown``. Other errors pass through at once."""
    budget = storage_retry_s() if budget_s is None else budget_s
    delay, start = 0.5, time.monotonic()
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            waited = time.monotonic() - start
            if waited >= budget:
                raise StorageDown(f"storage unreachable for {waited:.0f}s while trying to {what}") from None
            log.warning("storage unreachable (%s); retrying in %.1fs", what, delay)
            time.sleep(min(delay, max(0.1, budget - waited)))
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
    return GroupTPESampler(multivariate=True, group=True, constant_liar=True, seed=seed)


class GroupTPESampler(optuna.samplers.TPESampler):
    """TPE multivariate with groups that samples a group only when the trial asks for one of
    its parameters.

    Optuna samples every group of the decomposed space for every trial; in autoopt's
    conditional space a trial uses three or four of the fifteen or so groups (its family's,
    its schedule's, clipping), so most of that work was thrown away. The values are not copied
    into system attributes for the constant liar either: the driver stores each parameter as
    soon as it is sampled, which is what other trials' liar reads. Same model, same proposals
    for the groups a trial uses; about a quarter of the sampling time.
    """

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, Any]) -> Any:
        groups = getattr(self, "_search_space_group", None)
        if not search_space or not self._group or groups is None or not hasattr(self, "_sample_relative"):
            return super().sample_relative(study, trial, search_space)
        subspaces = [{n: d for n, d in sorted(sub.items()) if not d.single() and n in search_space}
                     for sub in groups.search_spaces]
        return _LazyGroups(lambda space: self._sample_relative(study, trial, space), subspaces)


class _LazyGroups(Mapping):
    """The relative parameters of one trial, each group sampled on first use."""

    def __init__(self, sample: Callable[[dict[str, Any]], dict[str, Any]],
                 groups: list[dict[str, Any]]) -> None:
        self._sample, self._groups = sample, groups
        self._group_of = {name: i for i, group in enumerate(groups) for name in group}
        self._values: dict[int, dict[str, Any]] = {}

    def _group(self, i: int) -> dict[str, Any]:
        if i not in self._values:
            self._values[i] = self._sample(self._groups[i]) if self._groups[i] else {}
        return self._values[i]

    def __getitem__(self, name: str) -> Any:
        i = self._group_of.get(name)
        if i is None:
            raise KeyError(name)
        return self._group(i)[name]

    def __contains__(self, name: object) -> bool:
        i = self._group_of.get(name)  # type: ignore[call-overload]
        return i is not None and name in self._group(i)

    def __iter__(self) -> Iterator[str]:
        return (name for i in range(len(self._groups)) for name in self._group(i))

    def __len__(self) -> int:
        return sum(len(self._group(i)) for i in range(len(self._groups)))


@contextlib.contextmanager
def trials_snapshot(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> Iterator[None]:
    """Within the block, the study's trials are read from the storage once, then served from
    that snapshot (or ``trials``, a read made just before).

    One decision reads them many times: TPE with groups once per parameter group of the trial
    it samples, the pruner's guard and the median pruner once each. Each read is a round trip
    (six queries) to the database; the snapshot makes it one. Writes go through as usual.
    """
    import copy

    storage = study._storage
    if "get_all_trials" in vars(storage):  # inside another snapshot already
        yield
        return
    read = storage.get_all_trials
    cache: dict[int, list[FrozenTrial]] = {} if trials is None else {study._study_id: trials}

    def get_all_trials(study_id: int, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        if study_id not in cache:
            cache[study_id] = read(study_id, deepcopy=False)
        trials = cache[study_id] if states is None else [t for t in cache[study_id] if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    storage.get_all_trials = get_all_trials  # shadows the method on this storage object only
    try:
        yield
    finally:
        del storage.get_all_trials


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
    """Fail (and re-queue) the RUNNING trials whose driver stopped sending heartbeats, and
    those that never got one (their driver died between asking and the first beat)."""
    optuna.storages.fail_stale_trials(study)
    storage = study._storage
    callback = storage.get_heartbeat_stale_trial_callback()
    for trial_id in _never_beaten(study):
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another driver got there first
        if callback is not None:
            callback(study, storage.get_trial(trial_id))


def _never_beaten(study: optuna.Study) -> list[int]:
    """RUNNING trials older than twice the grace period without any heartbeat row. Optuna's
    own check skips them, so a driver killed right after ``ask`` would leave them RUNNING."""
    from optuna.storages._rdb import models
    from sqlalchemy import select

    backend = getattr(study._storage, "_backend", study._storage)
    if not isinstance(backend, RDBStorage):
        return []
    trials, beats = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    # datetime_start is the asking driver's local time: compare with ours, with a wide margin.
    cutoff = datetime.now() - timedelta(seconds=2 * GRACE_S)
    query = (select(trials.c.trial_id)
             .select_from(trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id))
             .where(trials.c.study_id == study._study_id, trials.c.state == TrialState.RUNNING,
                    beats.c.trial_id.is_(None), trials.c.datetime_start < cutoff))
    with backend.engine.connect() as conn:
        return [row[0] for row in conn.execute(query)]


def retry_trial(study: optuna.Study, trial_number: int) -> None:
    """Re-queue a failed trial, as the heartbeat path does for a dead driver."""
    frozen = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(
        study._study_id, trial_number))
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, frozen)


@contextlib.contextmanager
def ask_lock(url: str, study_name: str = "") -> Iterator[None]:
    """Serialise "count the budget, then ask" between drivers sharing one study.

    SQLite: a file lock beside the database (drivers share the machine); PostgreSQL: an
    advisory lock of the database, keyed by the study name (not the URL: two drivers may spell
    the same database differently, with or without a password); other storages: none. A
    driver that dies holding it releases it with its connection.
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
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(f"autoopt.ask:{study_name}".encode()).digest()[:7], "big")
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
        _LOCK_ENGINES[url] = create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True,
                                           connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    return _LOCK_ENGINES[url]
