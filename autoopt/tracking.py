"""MLflow: one experiment per task, one parent run per ``tune``, one nested run per trial.

The only module that imports mlflow. The driver owns the parent run (``StudyRun``); each
worker records its trials' nested runs (``TrialRecorder``) on a background thread, so
a trial never waits for the tracking server.
"""

from __future__ import annotations

import base64
import itertools
import logging
import math
import os
import sqlite3
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout
from sqlalchemy import create_engine, text

from autoopt.base.background import give_way
from autoopt.base.redact import mask_url, redact
from autoopt.base.retry import retried, tries
from autoopt.base.states import JobState
from autoopt.errors import UsageError
from autoopt.study import absolute_sqlite, connect_timeout_s, sqlite_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
STUDY_TAG = "autoopt.study"
TRIAL_TAG = "autoopt.trial_number"
STATE_TAG = "autoopt.state"
FAMILY_TAG = "autoopt.optimizer"
CANDIDATE_TAG = "autoopt.candidate"
SEED_TAG = "autoopt.seed"
SOURCE_TRIAL_TAG = "autoopt.source_trial"
LR_TAG = "autoopt.lr"
REASON_TAG = "autoopt.reason"
TRACEBACK_TAG = "autoopt.traceback"
GPUS_TAG = "autoopt.gpus_per_trial"
KIND_TAG = "autoopt.kind"
PRUNED_TAG = "autoopt.pruned"
VERDICT_TAG = "autoopt.verdict"
RECOMMENDED_TAG = "autoopt.recommended"
WRITE_TRIES = 5  # a failed write is tried again after 0.5, 1, 2 and 4 s
WRITE_EVERY_S = 2.0  # a running trial's params and metrics reach MLflow at most this late
CREATE_LOCK_S = 600.0  # how long a driver waits for another one creating the same SQLite tracking store
RUNNING = "RUNNING"  # the tag autoopt.state of a trial's run until it ends with its JobState


class RunStatus(StrEnum):
    """An MLflow run's status, as MLflow names it."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class RunKind(StrEnum):
    """The tag ``autoopt.kind`` of the runs that are no study's trials (a trial's run carries its
    ``TrialKind``)."""

    STUDY = "study"  # a tune's parent run
    COMPARE = "compare"  # autoopt compare's parent run and its runs
    CONFIRM = "confirm"  # a tuned config's run in the confirmation's race
    BASELINE = "baseline"  # a baseline's run in that race


def experiment_name(task: str) -> str:
    return f"autoopt/{task}"


def _client(uri: str) -> Any:
    """An MLflow client on ``uri``. Opening a SQLite store creates (migrates) its tables: that
    is done under a file lock beside the database, so drivers started at once in an empty
    folder do not race on creating it (MLflow's migrations are not safe to run twice at once)."""
    import mlflow

    # Quiet the per-run "View run at ..." lines and the table-creation chatter. MLflow prints
    # those links to stdout with the tracking URI as given, password included.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        with creating_store(uri), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # alembic's notes on migrating MLflow's tables
            return mlflow.MlflowClient(tracking_uri=uri)  # opens the store, creating its tables
    except UsageError:
        raise
    except Exception as exc:
        if _migration_error(exc):
            raise UsageError(_half_migrated(uri, _first_line(exc))) from None
        raise


@contextmanager
def creating_store(uri: str) -> Iterator[None]:
    """Hold the creation lock of a SQLite tracking store (``<db>.lock``); other stores need none."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    lock = FileLock(f"{path}.lock", timeout=CREATE_LOCK_S)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"MLflow database {path}: another process held {path}.lock for {CREATE_LOCK_S:g} s; "
                         "if none is running, delete the lock file") from None
    except OSError:  # a read-only folder: nothing can be created there, so there is nothing to serialise
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0][:300]) if text else type(exc).__name__


def _migration_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the database's schema is not the one this MLflow expects."""
    text = str(exc).lower()
    return any(k in text for k in ("alembic", "can't locate revision", "out-of-date database schema",
                                   "db upgrade", "migration"))


def _half_migrated(uri: str, reason: str) -> str:
    path = sqlite_path(uri)
    where = f"MLflow database {path}" if path is not None else f"MLflow database {mask_url(uri)}"
    return (f"{where} is half-migrated or from another MLflow version ({reason}); delete it (its runs are "
            f"lost) or run `mlflow db upgrade {mask_url(uri)}`")


def local_tracking_uri(uri: str) -> str:
    """Make a relative SQLite tracking URI absolute (workers may run in other folders)."""
    return absolute_sqlite(uri)


def check_tracking(uri: str) -> None:
    """Check the tracking URI before anything is created: a server answers within
    ``connect_timeout_s()``, a SQLite store can be written and is MLflow's (not another
    program's file, not half-migrated). Creates nothing; any problem is a ``UsageError``."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        _probe_server(uri)
    elif scheme == "sqlite":
        _check_sqlite_store(uri)
    elif scheme.startswith("postgresql"):
        _probe_database(uri)


def _probe_server(uri: str) -> None:
    """One GET of the experiments search API, with a timeout (MLflow's own client retries
    an unreachable server for minutes)."""
    parts = urllib.parse.urlsplit(uri)
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    user = urllib.parse.unquote(parts.username or "") or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = urllib.parse.unquote(parts.password or "") or os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    timeout = connect_timeout_s()
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise UsageError(f"MLflow at {mask_url(uri)} refused the credentials (HTTP {exc.code}); set "
                             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or fix --mlflow-uri") from None
        return  # something answered: MLflow's own client says what is wrong, if anything
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return  # TLS settings are MLflow's (MLFLOW_TRACKING_SERVER_CERT_PATH, ...): let it decide
        raise UsageError(f"cannot reach MLflow at {mask_url(uri)} within {timeout:g} s ({redact(str(reason))}); "
                         "start the tracking server or fix --mlflow-uri / MLFLOW_TRACKING_URI "
                         "(AUTOOPT_CONNECT_TIMEOUT_S sets the wait)") from None


def _probe_database(uri: str) -> None:
    """Connect once to a PostgreSQL tracking store, with a timeout (its driver waits forever on a
    host that drops packets)."""
    timeout = connect_timeout_s()
    try:
        engine = create_engine(uri, connect_args={"connect_timeout": max(1, math.ceil(timeout))})
    except ModuleNotFoundError:
        return  # a driver MLflow names itself when it opens the store
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise UsageError(f"cannot reach MLflow's database at {mask_url(uri)} within {timeout:g} s "
                         f"({_first_line(exc)}); start it or fix --mlflow-uri / MLFLOW_TRACKING_URI") from None
    finally:
        engine.dispose()


def _check_sqlite_store(uri: str) -> None:
    path = sqlite_path(uri)
    if path is None:
        return
    where = f"MLflow database {path}"
    if not path.exists():
        folder = path.resolve().parent
        if not folder.is_dir():
            raise UsageError(f"{where}: folder {folder} does not exist; create it or fix --mlflow-uri")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{where}: folder {folder} is read-only; choose another --mlflow-uri")
        return
    if path.is_dir():
        raise UsageError(f"{where} is a folder; pass a database file (--mlflow-uri sqlite:///mlflow.db)")
    if not os.access(path, os.R_OK | os.W_OK):
        raise UsageError(f"{where} is read-only; make it writable (chmod u+w) or choose another --mlflow-uri")
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"{where} is not an SQLite database ({exc}); pass another --mlflow-uri") from None
    leftover = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if leftover:
        raise UsageError(_half_migrated(uri, f"a migration stopped half-way: table {leftover[0]} is left"))
    if tables and "experiments" not in tables:
        raise UsageError(f"{where} is not MLflow's: it holds other tables ({', '.join(sorted(tables)[:3])}, ...); "
                         "pass another --mlflow-uri, e.g. sqlite:///mlflow.db")


def ensure_experiment(client: MlflowClient, task: str, uri: str) -> str:
    name = experiment_name(task)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        # Beside the database, as `mlflow ui` in the same folder expects.
        location = (Path.cwd() / "mlruns").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another driver created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


class StudyRun:
    """The parent run of one ``tune`` invocation."""

    def __init__(self, uri: str, task: str, study_name: str, params: dict[str, Any], *,
                 kind: RunKind = RunKind.STUDY, run_name: str | None = None) -> None:
        from mlflow.entities import Param

        self.uri = local_tracking_uri(uri)
        self.client = _client(self.uri)
        self.experiment_id = ensure_experiment(self.client, task, self.uri)
        run = self.client.create_run(self.experiment_id, run_name=run_name or f"tune-{study_name}",
                                     tags={STUDY_TAG: study_name, KIND_TAG: kind})
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])

    @property
    def ref(self) -> RunRef:
        """Where the jobs' nested runs go: under this run."""
        return RunRef(self.uri, self.experiment_id, self.run_id)

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def log_figure(self, figure: Figure, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, _param_value(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                                    if v is not None and math.isfinite(v)])

    def finish(self, status: RunStatus = RunStatus.FINISHED) -> None:
        self.client.set_terminated(self.run_id, status=status)

    def close_orphans(self, study_name: str, states: Mapping[int, str]) -> int:
        """End the nested runs of this study left RUNNING, given its trials' ``states`` (by number),
        once this driver's workers are gone: a failed trial's run (a killed worker, a dead driver's
        trial failed as stale) as FAILED, and the parent runs of those drivers (still RUNNING, not
        this one) as KILLED; a finished trial's run under this parent run as FINISHED, with its
        trial's state (its worker was stopped before it wrote the end: a Ctrl-C). Another
        driver's finished trials are left alone: their runs may still be on their way. Returns
        how many nested runs were closed."""
        closed = 0
        dead_parents: set[str] = set()
        runs = search_all(self.client, self.experiment_id,
                          f"tags.`{STUDY_TAG}` = '{study_name}' and attributes.status = '{RunStatus.RUNNING}'")
        for run in runs:
            number = run.data.tags.get(TRIAL_TAG)
            if run.info.run_id == self.run_id or number is None:
                continue
            state = states.get(int(number))
            if state is not None and state != JobState.FAILED:
                if run.data.tags.get(PARENT_TAG) == self.run_id and state in (JobState.COMPLETE, JobState.PRUNED):
                    self.client.set_tag(run.info.run_id, STATE_TAG, state)
                    self.client.set_terminated(run.info.run_id, status=RunStatus.FINISHED)
                    closed += 1
                continue
            self.client.set_tag(run.info.run_id, STATE_TAG, JobState.FAILED)
            self.client.set_terminated(run.info.run_id, status=RunStatus.FAILED)
            closed += 1
            dead_parents.add(run.data.tags.get(PARENT_TAG, self.run_id))
        for run_id in dead_parents - {self.run_id}:
            # Its trial went stale: the driver that owned this parent run is gone.
            if self.client.get_run(run_id).info.status == RunStatus.RUNNING:
                self.client.set_terminated(run_id, status=RunStatus.KILLED)
        return closed


PAGE = 1000  # runs per page of a search (MLflow pages its results; every page is read)


def search_all(client: Any, experiment_id: str, where: str) -> list[Any]:
    """Every run of ``experiment_id`` that ``where`` selects (a filter on run tags, so the
    store selects them, not this process), page after page: never cut at a page's size."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=where, max_results=PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def latest_study_run(uri: str, task: str, study_name: str) -> str | None:
    """The id of the newest parent run (``tune``) of ``study_name`` in experiment ``autoopt/<task>``."""
    client = _client(local_tracking_uri(uri))
    exp = client.get_experiment_by_name(experiment_name(task))
    if exp is None:
        return None
    where = f"tags.`{STUDY_TAG}` = '{study_name}' and tags.`{KIND_TAG}` = '{RunKind.STUDY}'"
    runs = client.search_runs([exp.experiment_id], filter_string=where,
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def log_folder(uri: str, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
    """Log every file of ``folder`` as artifacts of run ``run_id`` (a report, say)."""
    _client(local_tracking_uri(uri)).log_artifacts(run_id, str(folder), artifact_path)


def list_artifacts(uri: str, run_id: str, path: str | None = None) -> list[str]:
    """The artifact paths logged to a run under ``path``."""
    return [f.path for f in _client(local_tracking_uri(uri)).list_artifacts(run_id, path)]


def child_runs(uri: str, task: str, parent_run_id: str) -> list[dict[str, Any]]:
    """The nested runs of a parent run as plain dicts: ``run_id``, ``name``, ``status``,
    ``end_time_ms`` (None while running), ``tags``,
    ``params``, ``metrics`` (the last value of each), and ``start_time_ms``."""
    client = _client(local_tracking_uri(uri))
    exp = client.get_experiment_by_name(experiment_name(task))
    if exp is None:
        return []
    runs = search_all(client, exp.experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "start_time_ms": r.info.start_time, "end_time_ms": r.info.end_time,
             "tags": dict(r.data.tags), "params": dict(r.data.params), "metrics": dict(r.data.metrics)}
            for r in runs]


@dataclass(frozen=True)
class RunRef:
    """Where a job's nested run goes: the tracking store and, once the driver opened it, the
    parent run (a warm-up job has the store only)."""

    uri: str
    experiment_id: str | None = None
    parent_run_id: str | None = None


@dataclass
class _PendingRun:
    """What a trial's run still needs written."""

    ref: RunRef
    run_name: str
    tags: dict[str, str]
    due: float  # when to write what is pending (time.monotonic())
    created: bool = False
    params: list[Any] = field(default_factory=list)
    metrics: list[Any] = field(default_factory=list)
    final_tags: list[Any] = field(default_factory=list)
    status: RunStatus | None = None
    run_id: str | None = None  # set by the writer thread once the run exists

    def pending(self) -> bool:
        return not self.created or bool(self.params or self.metrics or self.final_tags) or self.status is not None


class TrialRecorder:
    """Records trials' nested runs from a worker, on one background thread, in few writes.

    A run is created when its trial starts; its params and epoch metrics are written at most
    ``write_every_s`` after they happen, each time in one batch. A trial that ends sooner is
    written as the run's creation, one batch and its end: three writes where one per epoch,
    and more, were made (each is a database transaction for MLflow on SQL, a request for a
    server). ``flush`` writes everything pending.
    """

    def __init__(self, write_every_s: float = WRITE_EVERY_S) -> None:
        self.write_every_s = write_every_s
        self._clients: dict[str, Any] = {}
        self._client_lock = threading.Lock()
        self._runs: dict[int, _PendingRun] = {}  # by the key start() returned
        self._keys = itertools.count()
        self._cond = threading.Condition()
        self._writing = False
        self._thread = threading.Thread(target=self._loop, name="mlflow", daemon=True)
        self._thread.start()

    def _client(self, uri: str) -> Any:
        with self._client_lock:
            if uri not in self._clients:
                self._clients[uri] = _client(uri)
            return self._clients[uri]

    def warm(self, uri: str) -> None:
        """Import MLflow and open the store at ``uri`` in the background (a second or more for a
        database store): the training path never imports MLflow (what it records goes as plain
        data to the writer thread), so a worker's first trial need not wait for it."""
        def _open() -> None:
            give_way()  # the worker's first trial, and the other workers' warm-up, come first
            try:
                self._client(uri)
            except Exception as exc:  # tracking must never fail a trial
                log.warning("MLflow store %s could not be opened: %s", uri, exc)

        threading.Thread(target=_open, name="mlflow-open", daemon=True).start()

    def start(self, ref: RunRef, *, run_name: str, params: dict[str, Any], tags: dict[str, Any]) -> int:
        """Open a nested run under ``ref``'s parent; returns the key ``log_epoch`` and ``finish`` take."""
        run = _PendingRun(ref, run_name, {PARENT_TAG: str(ref.parent_run_id), **{k: str(v) for k, v in tags.items()}},
                          due=time.monotonic(),  # created at once: a running trial shows in the UI
                          params=[(k, _param_value(v)) for k, v in params.items()])
        with self._cond:
            key = next(self._keys)
            self._runs[key] = run
            self._cond.notify()
        return key

    def run_id(self, key: int) -> str | None:
        """The MLflow id of an open run, once the writer thread has created it."""
        with self._cond:
            run = self._runs.get(key)
            return run.run_id if run is not None else None

    def log_epoch(self, key: int, epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [(k, float(v), now, epoch) for k, v in metrics.items() if math.isfinite(v)]
        with self._cond:
            run = self._runs.get(key)
            if run is not None:
                run.metrics.extend(batch)

    def finish(self, key: int, *, state: JobState, tags: dict[str, Any],
               metrics: dict[str, float] | None = None) -> None:
        """Set the final tags (and metrics) and end the run: FINISHED, or FAILED for a failed trial."""
        now = int(time.time() * 1000)
        with self._cond:
            run = self._runs.get(key)
            if run is None:
                return
            run.metrics.extend((k, float(v), now, 0) for k, v in (metrics or {}).items()
                               if v is not None and math.isfinite(v))
            run.final_tags += [(STATE_TAG, state), *((k, _param_value(v)) for k, v in tags.items())]
            if state == JobState.PRUNED:
                # The runs table shows it by name; filter with tags.autoopt.pruned = 'true'.
                run.final_tags += [(PRUNED_TAG, "true"), ("mlflow.runName", f"{run.run_name} (pruned)")]
            run.status = RunStatus.FAILED if state == JobState.FAILED else RunStatus.FINISHED
            run.due = time.monotonic()
            self._cond.notify()

    def flush(self) -> None:
        """Write everything pending, and wait until it is written."""
        with self._cond:
            for run in self._runs.values():
                run.due = 0.0
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._writing and not any(r.pending() for r in self._runs.values()))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    due = [(k, r) for k, r in self._runs.items() if r.pending() and r.due <= now]
                    if due:
                        break
                    waits = [r.due - now for r in self._runs.values() if r.pending()]
                    self._cond.wait(timeout=min(waits) if waits else None)
                work: list[tuple[_PendingRun, bool, list[Any], list[Any], list[Any], RunStatus | None]] = []
                for key, run in due:
                    if not run.created and run.status is None:
                        # Create it now; its params go with its first metrics, or its end.
                        work.append((run, False, [], [], [], None))
                        run.created, run.due = True, now + self.write_every_s
                        continue
                    work.append((run, run.created, run.params, run.metrics, run.final_tags, run.status))
                    run.params, run.metrics, run.final_tags = [], [], []
                    run.created = True
                    run.due = now + self.write_every_s
                    if run.status is not None:
                        del self._runs[key]
                self._writing = True
            for item in work:
                self._write_retried(*item)
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def _write_retried(self, run: _PendingRun, created: bool, params: list[Any], metrics: list[Any],
                       tags: list[Any], status: RunStatus | None) -> None:
        """``_write``, tried again on a failure (a store busy with other writers, as SQLite is
        under several workers): a run is dropped only when every try failed, with a warning."""
        try:
            retried(lambda: self._write(run, created or run.run_id is not None, params, metrics, tags, status),
                    tries(WRITE_TRIES, wait=lambda n: 0.5 * 2 ** (n - 1)))
        except Exception as exc:  # tracking must never fail a trial
            log.warning("MLflow logging failed after %d tries: %s", WRITE_TRIES, exc)

    def _write(self, run: _PendingRun, created: bool, params: list[Any], metrics: list[Any],
               tags: list[Any], status: RunStatus | None) -> None:
        # The client first: it imports MLflow under the recorder's lock. Two threads importing
        # MLflow at once (this one and ``warm``'s) deadlock in its module locks, and every write
        # then fails with a half-imported module.
        client = self._client(run.ref.uri)
        from mlflow.entities import Metric, Param, RunTag

        params = [Param(*p) for p in params]
        metrics = [Metric(*m) for m in metrics]
        tags = [RunTag(*t) for t in tags]
        if not created:
            run.run_id = client.create_run(run.ref.experiment_id, run_name=run.run_name, tags=run.tags).info.run_id
        run_id = run.run_id
        # MLflow takes at most 1000 metrics, 100 params and 100 tags per batch.
        while params or metrics or tags:
            client.log_batch(run_id, metrics=metrics[:1000], params=params[:100], tags=tags[:100])
            params, metrics, tags = params[100:], metrics[1000:], tags[100:]
        if status is not None:
            client.set_terminated(run_id, status=status)
