"""MLflow: one experiment per task, one parent run per ``tune``, one nested run per trial.

The only module that imports mlflow. The driver owns the parent run (``StudyRun``); each
worker records its trials' nested runs (``TrialRecorder``) on a background thread, so
a trial never waits for the tracking server.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
STUDY_TAG = "autoopt.study"
TRIAL_TAG = "autoopt.trial_number"
STATE_TAG = "autoopt.state"
FAMILY_TAG = "autoopt.optimizer"
KIND_TAG = "autoopt.kind"


def experiment_name(task: str) -> str:
    return f"autoopt/{task}"


def _client(uri: str) -> Any:
    import mlflow

    # Quiet the per-run "View run at ..." lines and the table-creation chatter. MLflow prints
    # those links to stdout with the tracking URI as given, password included.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return mlflow.MlflowClient(tracking_uri=uri)


def local_tracking_uri(uri: str) -> str:
    """Make a relative SQLite tracking URI absolute (workers may run in other folders)."""
    from autoopt.study import absolute_sqlite

    return absolute_sqlite(uri)


def ensure_experiment(client: Any, task: str, uri: str) -> str:
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
                 kind: str = "study", run_name: str | None = None) -> None:
        from mlflow.entities import Param

        self.uri = local_tracking_uri(uri)
        self.client = _client(self.uri)
        self.experiment_id = ensure_experiment(self.client, task, self.uri)
        run = self.client.create_run(self.experiment_id, run_name=run_name or f"tune-{study_name}",
                                     tags={STUDY_TAG: study_name, KIND_TAG: kind})
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def log_figure(self, figure: Any, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                                    if v is not None and math.isfinite(v)])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def close_orphans(self, study_name: str, live: set[int]) -> int:
        """End the nested runs of this study left RUNNING by a dead worker or driver (any
        trial not in ``live``) as FAILED, and the parent runs of those drivers (still RUNNING,
        not this one) as KILLED. Returns how many nested runs were closed."""
        closed = 0
        dead_parents: set[str] = set()
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{study_name}' and attributes.status = 'RUNNING'",
            max_results=5000)
        for run in runs:
            number = run.data.tags.get(TRIAL_TAG)
            if run.info.run_id == self.run_id or number is None or int(number) in live:
                continue
            self.client.set_tag(run.info.run_id, STATE_TAG, "FAIL")
            self.client.set_terminated(run.info.run_id, status="FAILED")
            closed += 1
            dead_parents.add(run.data.tags.get(PARENT_TAG, self.run_id))
        for run_id in dead_parents - {self.run_id}:
            # Its trial went stale: the driver that owned this parent run is gone.
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, status="KILLED")
        return closed


def latest_study_run(uri: str, task: str, study_name: str) -> str | None:
    """The id of the newest parent run (``tune``) of ``study_name`` in experiment ``autoopt/<task>``."""
    client = _client(local_tracking_uri(uri))
    exp = client.get_experiment_by_name(experiment_name(task))
    if exp is None:
        return None
    where = f"tags.`{STUDY_TAG}` = '{study_name}' and tags.`{KIND_TAG}` = 'study'"
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
    ``params``, ``metrics`` (the last value of each)."""
    client = _client(local_tracking_uri(uri))
    exp = client.get_experiment_by_name(experiment_name(task))
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                              max_results=5000)
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "end_time_ms": r.info.end_time,
             "tags": dict(r.data.tags), "params": dict(r.data.params), "metrics": dict(r.data.metrics)}
            for r in runs]


class TrialRecorder:
    """Records trials' nested runs from a worker, in order, on one background thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        self._clients: dict[str, Any] = {}
        self._last: Future | None = None

    def _client(self, uri: str) -> Any:
        if uri not in self._clients:
            self._clients[uri] = _client(uri)
        return self._clients[uri]

    def _submit(self, fn: Any, *args: Any) -> None:
        self._last = self._pool.submit(self._guard, fn, *args)

    def warm(self, uri: str) -> None:
        """Import MLflow and open the store at ``uri`` now (a second or more for a database
        store), so that a worker's first trial does not wait for it."""
        self._pool.submit(self._guard, self._client, uri).result()

    @staticmethod
    def _guard(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # tracking must never fail a trial
            log.warning("MLflow logging failed: %s", exc)

    def start(self, handle: dict[str, Any], *, run_name: str, params: dict[str, Any],
              tags: dict[str, Any]) -> None:
        """Create the nested run; ``handle`` (uri, experiment_id, parent_run_id) comes from the
        driver and receives the new run's id."""
        def _start() -> None:
            from mlflow.entities import Param

            client = self._client(handle["uri"])
            all_tags = {PARENT_TAG: handle["parent_run_id"], **{k: str(v) for k, v in tags.items()}}
            run = client.create_run(handle["experiment_id"], run_name=run_name, tags=all_tags)
            handle["run_id"] = run.info.run_id
            client.log_batch(run.info.run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])

        self._submit(_start)

    def log_epoch(self, handle: dict[str, Any], epoch: int, metrics: dict[str, float]) -> None:
        def _log() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if math.isfinite(v)]
            self._client(handle["uri"]).log_batch(handle["run_id"], metrics=batch)

        self._submit(_log)

    def finish(self, handle: dict[str, Any], *, state: str, tags: dict[str, Any],
               metrics: dict[str, float] | None = None) -> None:
        """Set the final tags (and metrics) and end the run: FINISHED, or FAILED for a failed trial."""
        def _finish() -> None:
            from mlflow.entities import Metric, RunTag

            client = self._client(handle["uri"])
            now = int(time.time() * 1000)
            mets = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()
                    if v is not None and math.isfinite(v)]
            client.log_batch(handle["run_id"], metrics=mets,
                             tags=[RunTag(STATE_TAG, state), *(RunTag(k, _param_value(v)) for k, v in tags.items())])
            client.set_terminated(handle["run_id"], status="FAILED" if state == "FAIL" else "FINISHED")

        self._submit(_finish)

    def flush(self) -> None:
        """Wait until everything submitted so far is written."""
        if self._last is not None:
            self._last.result()
