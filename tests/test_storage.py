"""The storage seam and its bad input: one backend per scheme, query strings, drivers creating a
new SQLite store at once, a read-only file, another application's database, an unreachable
server, the trials snapshot, stale trials, the study's metric name."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import as_nobody, shared_folder
from filelock import FileLock
from optuna.trial import TrialState
from services import free_port, wait_for

from autoopt.errors import UsageError
from autoopt.study import (
    PostgresBackend,
    SQLiteBackend,
    absolute_sqlite,
    backend_for,
    check_storage,
    fail_stale,
    open_storage,
    open_study,
    record_heartbeat,
    sqlite_path,
    stale,
    trials_snapshot,
    with_retry,
)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the seam -------------------------------------------------------------------------------


def test_one_backend_per_scheme_and_others_are_refused(workdir: Path) -> None:
    assert isinstance(backend_for("sqlite:///autoopt.db"), SQLiteBackend)
    assert isinstance(backend_for("postgresql+psycopg://u:pw@db:5432/optuna"), PostgresBackend)
    # No ask lock for MySQL: drivers sharing a study could run past --trials.
    with pytest.raises(UsageError, match=r"scheme 'mysql\+pymysql' is not supported") as info:
        backend_for("mysql+pymysql://me:s3cret@db/optuna")
    assert "s3cret" not in str(info.value) and "me:***@db" in str(info.value)
    with pytest.raises(UsageError, match="is not a database URL"):
        backend_for("autoopt.db")


def test_sqlite_url_with_a_query_string_opens_the_file_it_names(workdir: Path) -> None:
    url = "sqlite:///autoopt.db?timeout=30"
    assert absolute_sqlite(url) == f"sqlite:///{workdir / 'autoopt.db'}?timeout=30"
    assert sqlite_path(url) == workdir / "autoopt.db"
    study = open_study(open_storage(url), "q", direction="maximize")
    study.tell(study.ask(), 1.0)
    assert (workdir / "autoopt.db").is_file() and not [p for p in workdir.iterdir() if "timeout" in p.name]
    assert backend_for(url).exists()
    assert len(optuna.load_study(study_name="q", storage=f"sqlite:///{workdir / 'autoopt.db'}").trials) == 1
    # MLflow URIs and other schemes pass through absolute_sqlite unchanged.
    assert absolute_sqlite("http://mlflow:5000") == "http://mlflow:5000"


OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from autoopt.study import open_storage, open_study
url, folder, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
(folder / f"ready-{me}").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
study = open_study(open_storage(url), "together", direction="maximize")
study.tell(study.ask(), 1.0)
print("opened")
"""


@pytest.mark.slow
def test_drivers_creating_a_new_sqlite_store_at_once_all_succeed(workdir: Path) -> None:
    """Without the creation lock one of them failed with ``table alembic_version already exists``."""
    n = 4
    url = "sqlite:///autoopt.db"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, url, str(workdir), str(i)], cwd=workdir,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    try:
        wait_for(lambda: len(list(workdir.glob("ready-*"))) == n, 120, "the openers to be ready", 0.05)
        (workdir / "go").touch()
        outcomes = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0] * n, [err[-800:] for _, err in outcomes]
    trials = optuna.load_study(study_name="together", storage=url).trials
    assert len(trials) == n and {t.state for t in trials} == {TrialState.COMPLETE}


# --- bad input: refused before anything is created, left unchanged --------------------------


def never_waiting(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` with every ``time.sleep`` refused: a retry (of the storage's backoff, of the
    creation race) fails it at its first wait, instead of costing a minute."""
    def run() -> None:
        def refuse(seconds: float) -> None:
            raise AssertionError(f"waited {seconds}s: a retry")

        real, time.sleep = time.sleep, refuse
        try:
            fn()
        finally:
            time.sleep = real

    return run


def test_read_only_sqlite_file_is_bad_input_not_an_outage() -> None:
    with shared_folder() as folder:
        db = folder / "autoopt.db"
        open_study(open_storage(f"sqlite:///{db}"), "ro", direction="maximize")
        for path in folder.iterdir():
            path.chmod(0o666)
        url = f"sqlite:///{db}"
        assert as_nobody(never_waiting(lambda: check_storage(url))) == (0, "")  # the control: writable, accepted
        db.chmod(0o444)
        before = digest(db)
        code, message = as_nobody(never_waiting(lambda: open_storage(url)))
        assert code == 2, message  # a UsageError, at its first attempt: no minute of retries
        assert f"{db} is read-only; make it writable (chmod u+w)" in message
        assert digest(db) == before
        # Reading it (a report) is fine.
        assert open_storage(url, heartbeat=False, write=False) is not None


def test_a_text_file_as_storage_is_refused_and_left_unchanged(workdir: Path) -> None:
    notes = workdir / "notes.db"
    notes.write_text("not a database\n")
    with pytest.raises(UsageError, match="is not a SQLite database"):
        open_storage(f"sqlite:///{notes}")
    assert notes.read_text() == "not a database\n"
    with pytest.raises(UsageError, match="is a folder"):
        open_storage(f"sqlite:///{workdir}")


def test_checking_a_storage_this_process_holds_open_keeps_its_locks(workdir: Path) -> None:
    """A second study in one process (a notebook, ``bench prior``) checks the storage the
    first one holds open. The check must not drop this process's locks on the file (a plain
    ``open()``/``close()`` does: POSIX locks are per process), or another process, closing its
    connection, takes itself for the last one and deletes the WAL this process still writes to."""
    url = f"sqlite:///{workdir / 'held.db'}"
    study = open_study(open_storage(url), "held", direction="maximize", metric="val_accuracy")
    study.enqueue_trial({})  # a write: the WAL exists, and this process's connection stays open
    wal = workdir / "held.db-wal"
    assert wal.exists()
    check_storage(url)
    # Another process opens and closes the database; it must see this process still using it.
    subprocess.run([sys.executable, "-c", f"import sqlite3; c = sqlite3.connect({str(workdir / 'held.db')!r}); "
                    "c.execute('select count(*) from studies').fetchall(); c.close()"], check=True, timeout=60)
    assert wal.exists(), "the other process deleted the WAL: this process's locks were dropped"
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.WAITING]


@pytest.mark.slow
def test_mlflows_database_as_storage_is_refused_and_left_unchanged(workdir: Path) -> None:
    import mlflow

    db = workdir / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    client.create_experiment("e")
    assert client.search_experiments()
    before = digest(db)
    files = sorted(p.name for p in workdir.iterdir())
    with pytest.raises(UsageError) as info:
        open_storage("sqlite:///mlflow.db")
    message = str(info.value)
    assert "mlflow.db is MLflow's database (tables alembic_version, " in message, message
    assert "pick another file for --storage" in message
    assert digest(db) == before and sorted(p.name for p in workdir.iterdir()) == files


def test_unreachable_postgres_at_start_is_bad_input_within_the_connect_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from autoopt.study import backends

    engines: list[dict[str, object]] = []  # the connect_args of every engine the check makes
    real_create_engine = backends.create_engine

    def create_engine(url: object, *args: object, **kwargs: object) -> object:
        engines.append(dict(kwargs.get("connect_args") or {}))  # type: ignore[call-overload]
        return real_create_engine(url, *args, **kwargs)

    monkeypatch.setattr(backends, "create_engine", create_engine)
    # A server that accepts the connection and never answers: only the timeout ends the wait.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql+psycopg://me:s3cret@127.0.0.1:{silent.getsockname()[1]}/optuna"
        monkeypatch.setenv("AUTOOPT_CONNECT_TIMEOUT_S", "2")
        with pytest.raises(UsageError) as info:
            open_storage(url)
        # Within the connect timeout: one engine, connecting with the 2 s asked for, and one
        # connection (the backlog holds every attempt): no retry.
        silent.setblocking(False)
        attempts = []
        with contextlib.suppress(BlockingIOError):
            while True:
                attempts.append(silent.accept()[0])
        for conn in attempts:
            conn.close()
    assert engines == [{"connect_timeout": 2}], engines
    assert len(attempts) == 1, attempts
    message = str(info.value)
    assert message.startswith("cannot open storage postgresql+psycopg://me:***@127.0.0.1:"), message
    assert "not reachable within 2s" in message and "start the database or check --storage" in message
    assert "s3cret" not in message
    # Refused at once: the same message, at once.
    with pytest.raises(UsageError, match="not reachable within"):
        open_storage(f"postgresql+psycopg://me@127.0.0.1:{free_port()}/optuna")
    monkeypatch.setenv("AUTOOPT_CONNECT_TIMEOUT_S", "soon")
    with pytest.raises(UsageError, match="AUTOOPT_CONNECT_TIMEOUT_S must be a number"):
        open_storage(url)


def test_another_applications_postgres_database_is_refused(optuna_db: str) -> None:
    from services import pg_execute, pg_url

    pg_execute("create table experiments (id int)", dbname=optuna_db)
    with pytest.raises(UsageError, match=r"is another application's database \(tables experiments\), not an Optuna"):
        open_storage(pg_url(optuna_db))
    assert {r[0] for r in pg_execute("select tablename from pg_tables where schemaname = 'public'",
                                     dbname=optuna_db)} == {"experiments"}


# --- the study -------------------------------------------------------------------------------


def test_the_study_carries_its_metric_name(workdir: Path) -> None:
    study = open_study(open_storage("sqlite:///autoopt.db"), "m", direction="maximize", metric="val_accuracy")
    assert optuna.load_study(study_name="m", storage="sqlite:///autoopt.db").metric_names == ["val_accuracy"]
    assert study.metric_names == ["val_accuracy"]


def test_the_snapshot_serves_one_read_and_writes_go_through(workdir: Path) -> None:
    url = "sqlite:///autoopt.db"
    study = open_study(open_storage(url), "s", direction="maximize")
    other = optuna.load_study(study_name="s", storage=url)  # another driver
    study.tell(study.ask(), 1.0)
    with trials_snapshot(study):
        assert len(study.get_trials()) == 1
        other.tell(other.ask(), 2.0)
        with trials_snapshot(study):  # nested: the same snapshot
            assert len(study.get_trials()) == 1
        trial = study.ask()  # writes go through
        assert len(study.get_trials()) == 1
    assert len(study.get_trials()) == 3
    assert [t.state for t in other.get_trials()][-1] == TrialState.RUNNING and trial.number == 2


def test_a_trial_whose_driver_died_before_its_first_heartbeat_is_failed_and_requeued(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads Optuna's schema (trials, trial_heartbeats) directly: fails loudly if it moves."""
    study = open_study(open_storage("sqlite:///autoopt.db"), "h", direction="maximize")
    beaten, orphan = study.ask(), study.ask()
    record_heartbeat(study, beaten.number)
    monkeypatch.setattr(stale, "GRACE_S", -5)  # "older than twice the grace period": both are
    assert stale._never_beaten(study) == [stale.trial_id_of(study, orphan.number)]
    fail_stale(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].system_attrs["failed_trial"] == orphan.number


# --- a SQLite file shared by drivers started together ---------------------------------------

def test_a_half_made_optuna_schema_is_optunas_not_another_applications(workdir: Path) -> None:
    """A driver checks the file while another one is creating Optuna's tables in it: what it sees
    (some of Optuna's tables, not all) is Optuna's, not a foreign database (exit 2 before)."""
    half = workdir / "half.db"
    with contextlib.closing(sqlite3.connect(half)) as conn:
        for table in ("alembic_version", "studies", "study_directions", "version_info"):
            conn.execute(f"create table {table} (id integer)")
        conn.commit()
    check_storage(f"sqlite:///{half}")
    other = workdir / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("create table studies (id integer)")
        conn.execute("create table invoices (id integer)")
        conn.commit()
    with pytest.raises(UsageError, match="another application's database"):
        check_storage(f"sqlite:///{other}")


def test_the_storage_check_waits_for_a_driver_creating_the_store(workdir: Path) -> None:
    """The check reads the file under the creation lock: while another driver holds it (creating
    Optuna's tables), the check waits, then sees the finished schema."""
    url = f"sqlite:///{workdir / 'new.db'}"
    lock = FileLock(f"{workdir / 'new.db'}.lock")
    checked = threading.Event()
    with lock:
        with contextlib.closing(sqlite3.connect(workdir / "new.db")) as conn:
            conn.execute("create table studies (id integer)")  # half made
            conn.execute("create table invoices (id integer)")  # a table it drops before it ends
            conn.commit()
        checker = threading.Thread(target=lambda: (check_storage(url), checked.set()), daemon=True)
        checker.start()
        checker.join(1.0)
        assert not checked.is_set()  # waits for the lock
        with contextlib.closing(sqlite3.connect(workdir / "new.db")) as conn:  # the creator ends its work
            conn.execute("drop table invoices")
            conn.execute("create table trials (id integer)")
            conn.commit()
    checker.join(30)
    assert checked.is_set()


def test_a_locked_sqlite_database_is_waited_for_not_an_outage(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds the write lock longer than the outage budget: the driver waits for
    it as for a busy database (it used to give up: 'storage unreachable', exit 1)."""
    monkeypatch.setenv("AUTOOPT_STORAGE_RETRY_S", "0.5")
    path = workdir / "busy.db"
    study = open_study(open_storage(f"sqlite:///{path}?timeout=0.1"), "busy", direction="maximize")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Event()

    def release() -> None:
        holder.execute("COMMIT")
        released.set()

    threading.Timer(2.0, release).start()
    trial = with_retry(study.ask, what="ask for a trial")
    assert released.is_set() and trial.number == 0
    holder.close()
