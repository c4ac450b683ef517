"""The storage-backend seam: one object per URL scheme, chosen once from the URL.

``backend_for(url)`` parses the URL with SQLAlchemy's ``make_url`` and returns a
``SQLiteBackend`` or a ``PostgresBackend``. The backend owns what differs between them:

* the normalised URL (a relative SQLite path made absolute, so workers in other folders open
  the same file; query strings such as ``?timeout=30`` kept);
* the engine options (pool sizes, connect timeouts, SQLite's WAL pragmas);
* the ask lock, which serialises "count the budget, then ask" between drivers sharing a study
  (a file lock beside a SQLite file, an advisory lock on PostgreSQL), and the creation lock,
  which serialises creating a new SQLite store;
* whether the storage exists, and ``check()``: the preflight that refuses bad input (a
  read-only file, a file that is not an Optuna study database, an unreachable server) before
  anything is created.

Any other scheme is refused: without an ask lock, drivers sharing a study could run past
``--trials``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.pool import NullPool

from autoopt.base.redact import mask_url, redact
from autoopt.errors import UsageError

CONNECT_TIMEOUT_S = 10  # a host that does not answer fails one connection attempt, then we retry
PREFLIGHT_TIMEOUT_S = 15.0  # default of AUTOOPT_CONNECT_TIMEOUT_S: a driver's first contact
OPTUNA_TABLES = frozenset({"studies", "trials"})  # what makes a database Optuna's
# Every table Optuna's schema has (its Alembic migrations, 4.x): a database holding only some of
# them is Optuna's, half made by another driver creating it.
OPTUNA_SCHEMA = OPTUNA_TABLES | frozenset({
    "alembic_version", "version_info", "study_directions", "study_user_attributes", "study_system_attributes",
    "trial_user_attributes", "trial_system_attributes", "trial_params", "trial_values",
    "trial_intermediate_values", "trial_heartbeats"})
FIX = "check --storage or AUTOOPT_STORAGE"
SESSION_OPTIONS = "-c synchronous_commit=off"  # PostgreSQL's sessions (see PostgresBackend.engine_kwargs)


def env_seconds(name: str, default: float, *, allow_zero: bool = False) -> float:
    """A number of seconds from env ``name`` (``default`` when unset); anything else than a
    number > 0 (>= 0 with ``allow_zero``) is bad input naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise UsageError(f"{name} must be a number of seconds {bound}, got {raw!r}")
    return value


def connect_timeout_s() -> float:
    """How long a driver waits for the storage server at start: env ``AUTOOPT_CONNECT_TIMEOUT_S``
    (seconds), 15 by default."""
    return env_seconds("AUTOOPT_CONNECT_TIMEOUT_S", PREFLIGHT_TIMEOUT_S)


class Backend:
    """What a storage scheme decides; see the module docstring. ``url`` is normalised."""

    def __init__(self, url: URL) -> None:
        self.parsed = url
        self.url = url.render_as_string(hide_password=False)

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    def engine_kwargs(self, pool_size: int) -> dict[str, Any]:
        raise NotImplementedError

    def tune(self, engine: Engine) -> None:
        """Settings applied to every new connection of an engine on this storage."""

    def exists(self) -> bool:
        raise NotImplementedError

    def check(self, *, write: bool = True) -> None:
        """Refuse (``UsageError``) a storage autoopt cannot use, before anything is created."""

    def creation_lock(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def ask_lock(self, study_name: str) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError


class SQLiteBackend(Backend):
    """A SQLite file shared by the processes of one machine."""

    def __init__(self, url: URL) -> None:
        database = url.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            url = url.set(database=str(Path(database).expanduser().resolve()))
        super().__init__(url)
        db = url.database or ""
        self.path = Path(db) if db and db != ":memory:" and not db.startswith("file:") else None

    def engine_kwargs(self, pool_size: int) -> dict[str, Any]:
        # Several processes write one file: wait for its lock rather than fail at once.
        return {} if "timeout" in self.parsed.query else {"connect_args": {"timeout": 60}}

    def tune(self, engine: Engine) -> None:
        # WAL lets readers and one writer proceed together; NORMAL sync is safe under WAL and
        # saves an fsync per transaction (trials report every epoch).
        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        engine.dispose()

    def exists(self) -> bool:
        return self.path is not None and self.path.is_file() and self.path.stat().st_size > 0

    def check(self, *, write: bool = True) -> None:
        path = self.path
        if path is None:
            return
        where = f"storage {self.masked}"
        if path.is_dir():
            raise UsageError(f"{where}: {path} is a folder; name a database file, e.g. sqlite:///autoopt.db")
        if not path.parent.is_dir():
            raise UsageError(f"{where}: the folder {path.parent} does not exist; create it or {FIX}")
        if write:
            _check_writable(path, where)
        if not self.exists():
            return  # nothing to read, and nothing made here (not even the lock's file)
        # Under the creation lock where a driver made one: a driver started at the same moment may
        # be creating Optuna's tables in this file right now. (A file no driver created has no
        # lock's file, and none is made here; a half-made Optuna schema is Optuna's all the same.)
        lock = self.creation_lock() if Path(f"{path}.lock").exists() else contextlib.nullcontext()
        with lock:
            if not self.exists():
                return
            tables = _sqlite_tables(path, where, write=write)
        owner = _foreign(tables)
        if owner:
            raise UsageError(f"{where} is {owner}, not an Optuna study database; pick another file for --storage")

    def creation_lock(self) -> contextlib.AbstractContextManager[Any]:
        """Serialises creating the store: drivers started at once in an empty folder would all
        create Optuna's tables in the same new file (``table alembic_version already exists``)."""
        return FileLock(f"{self.path}.lock") if self.path is not None else contextlib.nullcontext()

    def ask_lock(self, study_name: str) -> contextlib.AbstractContextManager[Any]:
        """A file lock beside the database (drivers share the machine)."""
        return FileLock(f"{self.path}.lock") if self.path is not None else contextlib.nullcontext()


def _check_writable(path: Path, where: str) -> None:
    # SQLite writes the file and, under WAL, its -wal and -shm files beside it.
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{where}: {path} is read-only; make it writable (chmod u+w) or {FIX}")
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"{where}: the folder {path.parent} is read-only; make it writable or {FIX}")


def _foreign(tables: set[str]) -> str | None:
    """Whose a database is that holds tables but not Optuna's ("MLflow's database (tables
    ...)"), else None."""
    if not tables or tables >= OPTUNA_TABLES or tables <= OPTUNA_SCHEMA:
        return None
    shown = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
    whose = "MLflow's" if {"experiments", "runs"} <= tables else "another application's"
    return f"{whose} database (tables {shown})"


def _sqlite_tables(path: Path, where: str, *, write: bool = False) -> set[str]:
    """The tables of an existing SQLite file, read without changing it, through SQLite only: a
    plain ``open()`` and ``close()`` of the file would drop every lock this process holds on it
    (POSIX locks are per process), so a worker would take itself for the last user of a database
    the driver still has open, and delete its WAL under it (a second study in one process)."""
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode={'rw' if write else 'ro'}", uri=True, timeout=30)
        try:
            rows = conn.execute("select name from sqlite_master where type = 'table'").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise UsageError(f"{where}: {path} is not a SQLite database (not autoopt's); "
                             "pick another file for --storage") from None
        raise UsageError(f"{where}: {path} is not a usable SQLite database ({exc}); "
                         "pick another file for --storage") from None
    return {name for (name,) in rows if not name.startswith("sqlite_")}


class PostgresBackend(Backend):
    """A PostgreSQL database shared by drivers and workers on many machines."""

    def engine_kwargs(self, pool_size: int) -> dict[str, Any]:
        # Small pools: PostgreSQL's max_connections (100 by default) is shared by all drivers,
        # workers and the MLflow server. A worker uses at most two at once (its trial, its
        # background reports): 1 + 1 overflow; a driver 2 + 1, and one more for the ask lock.
        # So about 4 per driver and 2 per worker: past ~40 workers, put PgBouncer in front.
        # A connection idle a while is pinged before use (``tune``), not each one: a trial's few
        # transactions would pay a round trip each for it.
        kwargs: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 1, "pool_recycle": 300}
        args: dict[str, Any] = {}
        if "connect_timeout" not in self.parsed.query:
            args["connect_timeout"] = CONNECT_TIMEOUT_S
        if "options" not in self.parsed.query:
            # A commit returns before its WAL reaches the disk, as SQLite's WAL with NORMAL sync
            # does: a crash of the database server (not of a driver) may lose the last fraction
            # of a second of writes, never corrupt them; the trials they belonged to are found
            # stale and re-queued. It spares each of a trial's transactions an fsync. A URL that
            # sets ``options`` (``?options=-csynchronous_commit%3Don``) decides for itself.
            args["options"] = SESSION_OPTIONS
        if args:
            kwargs["connect_args"] = args
        return kwargs

    def tune(self, engine: Engine) -> None:
        _ping_when_idle(engine)

    def exists(self) -> bool:
        return True  # the server knows; opening tells

    def check(self, *, write: bool = True) -> None:
        """Reach the server within ``connect_timeout_s()`` and refuse another application's
        database; an unreachable server at start is bad input (exit 2), not an outage."""
        timeout = connect_timeout_s()
        args = {} if "connect_timeout" in self.parsed.query else {"connect_timeout": max(1, round(timeout))}
        try:
            engine = create_engine(self.url, poolclass=NullPool, connect_args=args)
        except ModuleNotFoundError as exc:
            hint = " (pip install 'autoopt[postgres]')" if "psycopg" in str(exc) else ""
            raise UsageError(f"cannot open storage {self.masked}: missing driver {exc.name}{hint}") from None
        try:
            with engine.connect() as conn:
                tables = set(inspect(conn).get_table_names())
        except Exception as exc:
            reason = _first_line(exc).replace(self.url, self.masked)
            raise UsageError(f"cannot open storage {self.masked}: not reachable within {timeout:g}s "
                             f"({redact(reason)}); start the database or {FIX}") from None
        finally:
            engine.dispose()
        owner = _foreign(tables)
        if owner:
            raise UsageError(f"storage {self.masked} is {owner}, not an Optuna study database; {FIX}")

    @contextlib.contextmanager
    def ask_lock(self, study_name: str) -> Iterator[None]:
        """An advisory lock of the database, keyed by the study name (not the URL: two drivers
        may spell the same database differently, with or without a password). A driver that
        dies holding it releases it with its connection."""
        key = int.from_bytes(hashlib.sha256(f"autoopt.ask:{study_name}".encode()).digest()[:7], "big")
        with _lock_engine(self.url).connect() as conn:  # autocommit: no transaction around the two
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


# The ask lock's engines, one per PostgreSQL URL, the most recently used first kept: a process
# that opens many storages holds at most LOCK_ENGINES_MAX of them. An evicted engine is
# disposed; a lock held on one of its connections stays held until that connection closes.
LOCK_ENGINES_MAX = 8
_LOCK_ENGINES: OrderedDict[str, Engine] = OrderedDict()
_LOCK_ENGINES_GUARD = threading.Lock()


def _lock_engine(url: str) -> Engine:
    with _LOCK_ENGINES_GUARD:
        engine = _LOCK_ENGINES.get(url)
        if engine is not None:
            _LOCK_ENGINES.move_to_end(url)
            return engine
        engine = _LOCK_ENGINES[url] = create_engine(url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT",
                                                    connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        _ping_when_idle(engine)
        evicted = [_LOCK_ENGINES.popitem(last=False)[1] for _ in range(len(_LOCK_ENGINES) - LOCK_ENGINES_MAX)]
    for old in evicted:
        old.dispose()
    return engine


PING_IDLE_S = 2.0  # a pooled connection idle this long is pinged before use


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection before use when it sat idle ``PING_IDLE_S`` or more (SQLAlchemy's
    custom pessimistic disconnect handling): one a database restart or a network cut left dead
    is replaced. A connection in use a moment ago is not: a trial's transactions come in quick
    succession, and a ping each would add a round trip to each (a restart in between fails the
    transaction, which the caller retries on a fresh connection: ``with_retry``)."""

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _idle(_dbapi: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", -math.inf) < PING_IDLE_S:
            return
        try:
            cursor = dbapi.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            if not getattr(dbapi, "autocommit", False):
                dbapi.rollback()
        except Exception as exc:
            raise DisconnectionError(str(exc)) from exc  # the pool replaces the connection


def _first_line(exc: BaseException) -> str:
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


_BACKENDS: dict[str, type[Backend]] = {"sqlite": SQLiteBackend, "postgresql": PostgresBackend}


def _parse(url: str) -> URL | None:
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        return None


def backend_for(url: str) -> Backend:
    """The backend of a storage URL; a URL that is not a database URL, or a scheme other than
    SQLite and PostgreSQL, is a ``UsageError``."""
    parsed = _parse(url)
    if parsed is None:
        raise UsageError(f"storage {mask_url(url)} is not a database URL; use sqlite:///autoopt.db or "
                         "postgresql+psycopg://user@host/db (--storage or AUTOOPT_STORAGE)")
    name = parsed.get_backend_name()
    if name not in _BACKENDS:
        raise UsageError(f"storage {mask_url(url)}: scheme {parsed.drivername!r} is not supported (drivers "
                         "sharing a study need its ask lock); use sqlite:/// or postgresql+psycopg://")
    return _BACKENDS[name](parsed)


def absolute_sqlite(url: str) -> str:
    """Make a relative SQLite path absolute, so workers in other folders open the same file. Any
    other URL (another scheme, an MLflow ``http://`` or ``file:`` URI) comes back unchanged."""
    parsed = _parse(url)
    if parsed is None or parsed.get_backend_name() != "sqlite":
        return url
    return SQLiteBackend(parsed).url


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (absolute), or None for another URL or an in-memory database."""
    parsed = _parse(url)
    if parsed is None or parsed.get_backend_name() != "sqlite":
        return None
    return SQLiteBackend(parsed).path


def creation_lock(url: str) -> contextlib.AbstractContextManager[Any]:
    """Serialise creating the store at ``url`` (a SQLite file: a file lock beside it; anything
    else: nothing). For any SQLite store created by several processes at once, MLflow's too."""
    path = sqlite_path(url)
    return FileLock(f"{path}.lock") if path is not None else contextlib.nullcontext()


def ask_lock(url: str, study_name: str = "") -> contextlib.AbstractContextManager[Any]:
    """Serialise "count the budget, then ask" between drivers sharing one study (see
    ``Backend.ask_lock``)."""
    return backend_for(url).ask_lock(study_name)
