"""Friction: everything checked before anything starts, MLflow stores created once, viewers.

Bad input (a dead tracking server, a file that is not MLflow's, a half-migrated one, GPUs on a
machine without one, a task that does not fit its model) stops in ``tuning.preflight`` with a
one-line ``UsageError`` and an empty folder. Drivers started at once in an empty folder all
succeed. The parent run carries the best value and the verdict; pruned runs can be filtered.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import sqlite3
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import optuna
import pytest
from conftest import as_nobody, scripts_at_once, shared_folder
from rich.console import Console

from autoopt import dispatch, tracking
from autoopt.commands import tuning
from autoopt.commands.progress import TuneDisplay
from autoopt.errors import UsageError
from autoopt.recommendation import Recommendation
from autoopt.spec import load_spec


def _sha(path: Path) -> bytes:
    return path.read_bytes()


# --- the tracking URI, checked before anything exists ----------------------------------------


class Probes:
    """What the tracking check sends out: each ``urlopen`` (its URL and timeout) goes through,
    and any request of MLflow's own client (which retries an unreachable server for minutes)
    is refused and recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import urllib.request

        import requests

        self.opened: list[tuple[str, float | None]] = []
        self.mlflow_requests: list[str] = []
        real = urllib.request.urlopen

        def urlopen(request: Any, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
            url = request.full_url if isinstance(request, urllib.request.Request) else str(request)
            self.opened.append((url, timeout))
            assert timeout is not None, "a probe without a timeout waits for a silent server forever"
            return real(request, *args, timeout=timeout, **kwargs)

        def refuse(session: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            self.mlflow_requests.append(f"{method} {url}")
            raise requests.ConnectionError(f"the test refuses {method} {url}")

        monkeypatch.setattr(urllib.request, "urlopen", urlopen)
        monkeypatch.setattr(requests.Session, "request", refuse)


def test_unreachable_tracking_server_is_refused_at_once_naming_the_url_without_its_password(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec("digits", trials=2, epochs=1, mlflow_uri="http://alice:s3cret@127.0.0.1:1")
    probes = Probes(monkeypatch)
    with pytest.raises(UsageError) as info:
        tuning.run(spec)
    msg = str(info.value)
    # At once: one probe, with the connect timeout, and no retry; MLflow's client never asked.
    assert [(url.split("/api/")[0], timeout) for url, timeout in probes.opened] == [
        ("http://127.0.0.1:1", tracking.connect_timeout_s())]
    assert probes.mlflow_requests == []
    assert "127.0.0.1:1" in msg and "s3cret" not in msg and "--mlflow-uri" in msg, msg
    assert "\n" not in msg
    assert os.listdir(workdir) == []  # no study file, no mlflow.db, no lock, no mlruns/


def test_a_server_that_never_answers_fails_within_the_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        monkeypatch.setenv("AUTOOPT_CONNECT_TIMEOUT_S", "1")
        probes = Probes(monkeypatch)
        with pytest.raises(UsageError, match=r"within 1 s"):
            tracking.check_tracking(f"http://127.0.0.1:{port}")
        # Within the timeout: one connection, one request bounded by the 1 s asked for, no retry.
        silent.setblocking(False)
        connections = []
        with contextlib.suppress(BlockingIOError):
            while True:
                connections.append(silent.accept()[0])
        for conn in connections:
            conn.close()
    assert len(connections) == 1, connections
    assert [timeout for _, timeout in probes.opened] == [1.0] and probes.mlflow_requests == []


def test_an_unreachable_tracking_database_is_refused_without_its_password() -> None:
    with pytest.raises(UsageError) as info:
        tracking.check_tracking("postgresql+psycopg://bob:pw123@127.0.0.1:1/mlflow")
    assert "bob:***@127.0.0.1:1" in str(info.value) and "pw123" not in str(info.value)


def test_connect_timeout_must_be_a_positive_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOOPT_CONNECT_TIMEOUT_S", "soon")
    with pytest.raises(UsageError, match="AUTOOPT_CONNECT_TIMEOUT_S"):
        tracking.connect_timeout_s()
    monkeypatch.delenv("AUTOOPT_CONNECT_TIMEOUT_S")
    assert tracking.connect_timeout_s() == 15.0  # the storage and the tracking server wait alike


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow store made once (MLflow's migrations take seconds), copied by the tests."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    tracking.StudyRun(f"sqlite:///{path}", "digits", "digits", {}).finish()
    return path


def _mlflow_db(template: Path, path: Path) -> Path:
    """A real MLflow store at ``path`` (its tables created by MLflow)."""
    shutil.copyfile(template, path)
    return path


def test_half_migrated_mlflow_db_is_named_with_the_fix_and_left_alone(workdir: Path, mlflow_template: Path) -> None:
    db = _mlflow_db(mlflow_template, workdir / "mlflow.db")
    with sqlite3.connect(db) as conn:  # what a migration that stopped half-way leaves
        conn.execute("CREATE TABLE _alembic_tmp_tags (key VARCHAR(250))")
    before = _sha(db)
    with pytest.raises(UsageError) as info:
        tracking.check_tracking("sqlite:///mlflow.db")
    msg = str(info.value)
    assert "half-migrated" in msg and "_alembic_tmp_tags" in msg and "mlflow db upgrade" in msg, msg
    assert "delete it" in msg
    assert _sha(db) == before


def test_an_mlflow_db_from_an_unknown_revision_is_named_when_opened(workdir: Path, mlflow_template: Path) -> None:
    db = _mlflow_db(mlflow_template, workdir / "newer.db")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    (workdir / "newer.db").rename(workdir / "unknown.db")
    with pytest.raises(UsageError, match=r"half-migrated or from another MLflow version.*mlflow db upgrade"):
        tracking.StudyRun("sqlite:///unknown.db", "digits", "again", {})


def test_a_database_that_is_not_mlflows_is_refused_unchanged(workdir: Path) -> None:
    optuna.create_study(storage="sqlite:///autoopt.db", study_name="x")
    before = _sha(workdir / "autoopt.db")
    with pytest.raises(UsageError, match="not MLflow's"):
        tracking.check_tracking("sqlite:///autoopt.db")
    assert _sha(workdir / "autoopt.db") == before
    (workdir / "notes.txt").write_text("not a database at all, but long enough to have a header" * 10)
    with pytest.raises(UsageError, match="not an SQLite database"):
        tracking.check_tracking("sqlite:///notes.txt")
    (workdir / "folder.db").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        tracking.check_tracking("sqlite:///folder.db")
    with pytest.raises(UsageError, match="does not exist"):
        tracking.check_tracking("sqlite:///no/such/folder/mlflow.db")


def test_a_read_only_mlflow_db_is_bad_input(mlflow_template: Path) -> None:
    """As ``nobody`` when the tests run as root (root writes read-only files), as
    tests/test_storage.py's read-only Optuna file does."""
    with shared_folder() as folder:
        db = _mlflow_db(mlflow_template, folder / "mlflow.db")
        db.chmod(0o666)
        uri = f"sqlite:///{db}"
        assert as_nobody(lambda: tracking.check_tracking(uri)) == (0, "")  # the control: writable, accepted
        db.chmod(0o444)
        before = _sha(db)
        code, message = as_nobody(lambda: tracking.check_tracking(uri))
        assert code == 2, message
        assert f"MLflow database {db} is read-only; make it writable (chmod u+w)" in message, message
        assert _sha(db) == before


# One driver's start in a fresh process: it opens (creating the store where there is none) and
# ends its parent run, and prints the run's id. Only ``autoopt.tracking`` is imported, as a
# driver's tracking would be; not this test module with torch and Optuna behind it.
OPEN_PARENT = """
import sys
from autoopt import tracking
run = tracking.StudyRun(sys.argv[1], "digits", sys.argv[2], {"who": sys.argv[2]})
run.finish()
print(run.run_id)
"""


@pytest.mark.slow
def test_drivers_creating_one_mlflow_db_at_once_all_succeed(workdir: Path) -> None:
    """Without the creation lock, MLflow's migrations race and some openers fail (or leave
    ``_alembic_tmp_*`` tables behind)."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    outs = scripts_at_once(OPEN_PARENT, [[uri, f"d{i}"] for i in range(4)], cwd=workdir)
    ids = [out.strip().splitlines()[-1] for out in outs]
    assert len(set(ids)) == 4
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("autoopt/digits")
    assert len(client.search_runs([exp.experiment_id])) == 4
    with sqlite3.connect(workdir / "mlflow.db") as conn:
        assert not [r for r in conn.execute("SELECT name FROM sqlite_master") if r[0].startswith("_alembic_tmp")]


@pytest.mark.slow
def test_tune_drivers_started_together_in_an_empty_folder_all_succeed_with_exactly_the_trials(
        workdir: Path) -> None:
    """Drivers started together on the SQLite default: one creates Optuna's tables while the
    other checks the file (under its lock: a half-made schema is not another application's), and
    each waits for the other's writes as for a busy database."""
    import subprocess

    cmd = [sys.executable, "-m", "autoopt", "tune", "--task", "digits", "--trials", "4", "--epochs", "1",
           "--no-confirm"]
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOOPT_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    procs = [subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-400:] for o in outs]
    study = optuna.load_study(study_name="digits", storage="sqlite:///autoopt.db")
    states = [t.state.name for t in study.trials]
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 4 and len(states) == 4, states
    assert study.metric_names == ["val_accuracy"]
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED"}
    assert all("best_value" in r.data.metrics and tracking.RECOMMENDED_TAG in r.data.tags for r in parents)


def test_one_sqlite_file_for_both_optuna_and_mlflow_is_refused_in_an_empty_folder(workdir: Path) -> None:
    spec = load_spec("digits", trials=1, epochs=1, storage="sqlite:///both.db", mlflow_uri="sqlite:///./both.db")
    with pytest.raises(UsageError, match="both name"):
        tuning.run(spec)
    assert os.listdir(workdir) == []


# --- GPUs ----------------------------------------------------------------------------------


def test_gpus_per_trial_packs_four_per_gpu_when_not_asked_and_refuses_gpus_that_are_not_there() -> None:
    assert dispatch.resolve_gpus(None, gpus_seen=1) == 0.25
    assert dispatch.resolve_gpus(None, gpus_seen=8) == 0.25
    assert dispatch.resolve_gpus(None, gpus_seen=0) == 0.0
    assert dispatch.resolve_gpus(0, gpus_seen=4) == 0  # told otherwise: the CPUs
    assert dispatch.resolve_gpus(1, gpus_seen=4) == 1
    assert dispatch.resolve_gpus(0.5, gpus_seen=0, ray_address="10.0.0.1:6379") == 0.5  # the cluster's GPUs
    with pytest.raises(UsageError, match=r"--gpus-per-trial 0.3: there is no GPU"):
        dispatch.resolve_gpus(0.3, gpus_seen=0)


@pytest.mark.skipif(__import__("torch").cuda.device_count() > 0, reason="this machine has a GPU")
def test_gpus_asked_for_on_a_machine_without_one_stop_before_anything_is_created(workdir: Path) -> None:
    spec = load_spec("digits", trials=2, epochs=1, gpus_per_trial=0.3)
    with pytest.raises(UsageError, match="no GPU"):
        tuning.run(spec)
    assert os.listdir(workdir) == []


# --- the task, loaded and checked ----------------------------------------------------------


def _task_module(folder: Path, name: str, body: str, monkeypatch: pytest.MonkeyPatch) -> str:
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(folder))
    return f"{name}:task"


def test_a_task_that_raises_or_does_not_fit_its_model_stops_before_anything_is_created(
        workdir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path_factory.mktemp("src")
    raises = _task_module(src, "raising_task", """
        def task(data_dir=None):
            raise RuntimeError("no credentials for the bucket")
    """, monkeypatch)
    misfit = _task_module(src, "misfit_task", """
        import torch
        from autoopt import Split, Task
        def task(data_dir=None):
            s = Split(torch.randn(16, 3), torch.randint(0, 2, (16,)))
            return Task("misfit", lambda: torch.nn.Linear(5, 2), s, s)
    """, monkeypatch)
    regression_as_classes = _task_module(src, "floaty_task", """
        import torch
        from autoopt import Split, Task
        def task(data_dir=None):
            s = Split(torch.randn(16, 3), torch.randn(16, 1))
            return Task("floaty", lambda: torch.nn.Linear(3, 1), s, s)
    """, monkeypatch)
    cases = [(raises, "RuntimeError: no credentials"),
             (misfit, "model fails on two validation rows"),
             (regression_as_classes, "loss='mse'")]
    for name, expected in cases:
        with pytest.raises(UsageError) as info:
            tuning.run(load_spec(name, trials=1, epochs=1))
        assert expected in str(info.value) and name in str(info.value), str(info.value)
        assert os.listdir(workdir) == [], name


# --- viewers -------------------------------------------------------------------------------


def test_pruned_trial_runs_can_be_filtered_and_show_as_pruned(workdir: Path, mlflow_template: Path) -> None:
    _mlflow_db(mlflow_template, workdir / "mlflow.db")
    parent = tracking.StudyRun("sqlite:///mlflow.db", "digits", "digits", {})
    recorder = tracking.TrialRecorder(write_every_s=0.1)
    for number, state in enumerate(["COMPLETE", "PRUNED"]):
        run = recorder.start(parent.ref, run_name=f"trial-{number}", params={"lr": 0.1},
                             tags={tracking.TRIAL_TAG: number})
        recorder.finish(run, state=state, tags={})
    recorder.flush()
    client = mlflow.MlflowClient(tracking_uri=parent.uri)
    for where in ("tags.autoopt.pruned = 'true'", "tags.autoopt.state = 'PRUNED'"):  # as typed in the UI
        runs = client.search_runs([parent.experiment_id], filter_string=where)
        assert [r.info.run_name for r in runs] == ["trial-1 (pruned)"], where
        assert runs[0].info.status == "FINISHED"
    (complete,) = client.search_runs([parent.experiment_id], filter_string="tags.autoopt.state = 'COMPLETE'")
    assert complete.info.run_name == "trial-0"


def test_runs_left_running_are_closed_by_their_trials_state(workdir: Path, mlflow_template: Path) -> None:
    """After a Ctrl-C this driver's workers are gone: a run whose trial finished (told before the
    worker wrote the run's end) ends FINISHED, a failed trial's FAILED; another driver's finished
    trial's run may still be on its way and is left alone."""
    _mlflow_db(mlflow_template, workdir / "mlflow.db")
    parent = tracking.StudyRun("sqlite:///mlflow.db", "digits", "digits", {})
    other = tracking.StudyRun("sqlite:///mlflow.db", "digits", "digits", {})
    recorder = tracking.TrialRecorder(write_every_s=0.1)
    for number, ref in ((0, parent.ref), (1, parent.ref), (2, other.ref)):
        recorder.start(ref, run_name=f"trial-{number}", params={}, tags={tracking.TRIAL_TAG: number,
                                                                        tracking.STUDY_TAG: "digits"})
    recorder.flush()  # created, never ended: their workers were killed
    closed = parent.close_orphans("digits", {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"})
    client = mlflow.MlflowClient(tracking_uri=parent.uri)
    runs = {r.info.run_name: r for r in client.search_runs([parent.experiment_id],
                                                          f"tags.`{tracking.TRIAL_TAG}` != ''")}
    assert closed == 2
    assert runs["trial-0"].info.status == "FINISHED" and runs["trial-0"].data.tags[tracking.STATE_TAG] == "COMPLETE"
    assert runs["trial-1"].info.status == "FAILED" and runs["trial-1"].data.tags[tracking.STATE_TAG] == "FAIL"
    assert runs["trial-2"].info.status == "RUNNING"


def test_a_sessions_parent_run_ends_as_its_body_ended() -> None:
    from autoopt.dispatch.session import RunSession

    def ended(kind: type[BaseException] | None, *, finished: bool = False) -> str:
        session, seen = RunSession(None), []
        session.tracker = SimpleNamespace(finish=seen.append)  # type: ignore[assignment]
        if finished:
            session.status = tracking.RunStatus.FINISHED
        session.__exit__(kind, None, None)
        return seen[0]

    assert ended(None, finished=True) == "FINISHED" and ended(None) == "FAILED"
    assert ended(KeyboardInterrupt, finished=True) == "KILLED" and ended(RuntimeError, finished=True) == "FAILED"


def test_the_parent_run_carries_the_best_value_the_pick_and_the_verdict(workdir: Path, mlflow_template: Path) -> None:
    _mlflow_db(mlflow_template, workdir / "mlflow.db")
    study = optuna.create_study(direction="maximize")
    parent = tracking.StudyRun("sqlite:///mlflow.db", "digits", "digits", {})
    rec = Recommendation(task="digits", optimizer="sgd", optimizer_params={"lr": 0.1}, scheduler="cosine",
                         value=0.93, study_name="digits",
                         improvement={"metric": "test_accuracy", "delta": 0.01, "spread": 0.0, "verdict": "better"})
    spec = load_spec("digits", out=str(workdir / "recs"))
    tuning.save(spec, study, rec, parent)
    run = mlflow.MlflowClient(tracking_uri=parent.uri).get_run(parent.run_id)
    assert run.data.metrics["best_value"] == pytest.approx(0.93)
    assert run.data.tags["autoopt.verdict"] == "better"
    assert run.data.tags["autoopt.recommended"] == "sgd + cosine"
    # The Python door logs the optimization history too (figures left to the default).
    listed = [a.path for a in mlflow.MlflowClient(tracking_uri=parent.uri).list_artifacts(parent.run_id, "plots")]
    assert listed == ["plots/optimization_history.png"]


def test_progress_stays_readable_at_80_columns() -> None:
    def shown(**counts: int) -> str:
        p = SimpleNamespace(last="trial", running=4, pruned=12, failed=1, best=0.98765, best_trial=137,
                            eta_s=lambda: 1234.0, done=200, total=200, **counts)
        buf = io.StringIO()
        with TuneDisplay(Console(file=buf, width=80), 200) as display:
            display.update(p)
        return buf.getvalue().strip().splitlines()[-1]

    line = shown(skipped=0)
    assert "200/200" in line and "best 0.9877 #137" in line and "ETA 1234s" in line, line
    assert "skipped" not in line and len(line) <= 80
    line = shown(skipped=3)  # the budget could not afford a trial: no more start, no ETA
    assert "failed 1  skipped 3  best 0.9877 #137" in line and "ETA" not in line and len(line) <= 80, line


# The ``autoopt`` command with an audit hook: every connection it opens and every program it
# starts is appended to the file $AUDIT_LOG names.
AUDITED_CLI = """
import os, runpy, sys
log = os.environ["AUDIT_LOG"]
def hook(event, args):
    if event == "socket.connect":
        line = f"connect {args[1]!r}"
    elif event == "subprocess.Popen":
        line = f"start {args[0] or (args[1] if isinstance(args[1], str) else list(args[1])[0])}"
    elif event in ("os.posix_spawn", "os.exec"):
        line = f"start {args[0]}"
    else:
        return
    with open(log, "a") as f:
        f.write(line + "\\n")
sys.addaudithook(hook)
sys.argv = ["autoopt", *sys.argv[1:]]
runpy.run_module("autoopt", run_name="__main__", alter_sys=True)
"""


def _python_or_ray(program: str) -> bool:
    """A program Ray starts: its binaries (gcs_server, raylet) or Python (its other processes)."""
    path = Path(os.fsdecode(program))
    return "ray" in path.parts or path.name.startswith("python") or str(path) == sys.executable


@pytest.mark.slow
def test_a_dead_mlflow_server_from_the_cli_exits_2_at_once_with_nothing_created(workdir: Path,
                                                                              tmp_path_factory: pytest.TempPathFactory
                                                                              ) -> None:
    import subprocess

    audit = tmp_path_factory.mktemp("audit") / "events.log"
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOOPT_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    result = subprocess.run([sys.executable, "-c", AUDITED_CLI, "tune", "--task", "digits", "--mlflow-uri",
                             "http://127.0.0.1:1", "--trials", "1"], cwd=workdir, capture_output=True, text=True,
                            timeout=120, env={**env, "COLUMNS": "200", "AUDIT_LOG": str(audit)},
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    # At once: the one probe of the server, then the exit; Ray never started (no process of its
    # own, no Python); a helper a library runs at import (ldconfig) may show.
    events = audit.read_text().splitlines() if audit.exists() else []
    assert [e for e in events if e.startswith("connect ")] == ["connect ('127.0.0.1', 1)"], events
    assert not [e for e in events if e.startswith("start ") and _python_or_ray(e.removeprefix("start "))], events
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach MLflow at http://127.0.0.1:1"), result.stderr
    assert not any(line.startswith("trials ") for line in result.stderr.splitlines())  # no progress bar
    assert os.listdir(workdir) == []
