"""Friction: everything checked before anything starts, MLflow stores created once, viewers.

Bad input (a dead tracking server, a file that is not MLflow's, a half-migrated one, GPUs on a
machine without one, a task that does not fit its model) stops in ``tuning.preflight`` with a
one-line ``UsageError`` and an empty folder. Drivers started at once in an empty folder all
succeed. The parent run carries the best value and the verdict; pruned runs can be filtered.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import socket
import sqlite3
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import optuna
import pytest
from conftest import run_cli
from rich.console import Console

from autoopt import tracking, tuning
from autoopt.errors import UsageError
from autoopt.progress import TuneDisplay
from autoopt.recommendation import Recommendation
from autoopt.spec import load_spec


def _sha(path: Path) -> bytes:
    return path.read_bytes()


# --- the tracking URI, checked before anything exists ----------------------------------------


def test_unreachable_tracking_server_is_refused_at_once_naming_the_url_without_its_password(workdir: Path) -> None:
    spec = load_spec("digits", trials=2, epochs=1, mlflow_uri="http://alice:s3cret@127.0.0.1:1")
    t0 = time.monotonic()
    with pytest.raises(UsageError) as info:
        tuning.run(spec)
    msg = str(info.value)
    assert time.monotonic() - t0 < 15
    assert "127.0.0.1:1" in msg and "s3cret" not in msg and "--mlflow-uri" in msg, msg
    assert "\n" not in msg
    assert os.listdir(workdir) == []  # no study file, no mlflow.db, no lock, no mlruns/


def test_a_server_that_never_answers_fails_within_the_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        monkeypatch.setenv("AUTOOPT_CONNECT_TIMEOUT_S", "1")
        t0 = time.monotonic()
        with pytest.raises(UsageError, match=r"within 1 s"):
            tracking.check_tracking(f"http://127.0.0.1:{port}")
        assert time.monotonic() - t0 < 5


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


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
def test_a_read_only_mlflow_db_is_bad_input(workdir: Path, mlflow_template: Path) -> None:
    db = _mlflow_db(mlflow_template, workdir / "mlflow.db")
    db.chmod(0o444)
    with pytest.raises(UsageError, match="read-only"):
        tracking.check_tracking("sqlite:///mlflow.db")


def _open_parent(uri: str, name: str) -> str:
    run = tracking.StudyRun(uri, "digits", name, {"who": name})
    run.finish()
    return run.run_id


@pytest.mark.slow
def test_drivers_creating_one_mlflow_db_at_once_all_succeed(workdir: Path) -> None:
    """Without the creation lock, MLflow's migrations race and some openers fail (or leave
    ``_alembic_tmp_*`` tables behind)."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        ids = pool.starmap(_open_parent, [(uri, f"d{i}") for i in range(4)])
    assert len(set(ids)) == 4
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("autoopt/digits")
    assert len(client.search_runs([exp.experiment_id])) == 4
    with sqlite3.connect(workdir / "mlflow.db") as conn:
        assert not [r for r in conn.execute("SELECT name FROM sqlite_master") if r[0].startswith("_alembic_tmp")]


@pytest.mark.slow
def test_two_tune_drivers_in_an_empty_folder_both_succeed_with_exactly_the_trials(workdir: Path) -> None:
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
    assert tuning.resolve_gpus(None, gpus_seen=1) == 0.25
    assert tuning.resolve_gpus(None, gpus_seen=8) == 0.25
    assert tuning.resolve_gpus(None, gpus_seen=0) == 0.0
    assert tuning.resolve_gpus(0, gpus_seen=4) == 0  # told otherwise: the CPUs
    assert tuning.resolve_gpus(1, gpus_seen=4) == 1
    assert tuning.resolve_gpus(0.5, gpus_seen=0, ray_address="10.0.0.1:6379") == 0.5  # the cluster's GPUs
    with pytest.raises(UsageError, match=r"--gpus-per-trial 0.3: there is no GPU"):
        tuning.resolve_gpus(0.3, gpus_seen=0)


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
    handles = []
    for number, state in enumerate(["COMPLETE", "PRUNED"]):
        handle = {"uri": parent.uri, "experiment_id": parent.experiment_id, "parent_run_id": parent.run_id}
        recorder.start(handle, run_name=f"trial-{number}", params={"lr": 0.1},
                       tags={tracking.TRIAL_TAG: number})
        recorder.finish(handle, state=state, tags={})
        handles.append(handle)
    recorder.flush()
    client = mlflow.MlflowClient(tracking_uri=parent.uri)
    for where in ("tags.autoopt.pruned = 'true'", "tags.autoopt.state = 'PRUNED'"):  # as typed in the UI
        runs = client.search_runs([parent.experiment_id], filter_string=where)
        assert [r.info.run_id for r in runs] == [handles[1]["run_id"]], where
    pruned = client.get_run(handles[1]["run_id"])
    assert pruned.info.run_name == "trial-1 (pruned)" and pruned.info.status == "FINISHED"
    assert client.get_run(handles[0]["run_id"]).info.run_name == "trial-0"


def test_the_parent_run_carries_the_best_value_the_pick_and_the_verdict(workdir: Path, mlflow_template: Path) -> None:
    _mlflow_db(mlflow_template, workdir / "mlflow.db")
    study = optuna.create_study(direction="maximize")
    parent = tracking.StudyRun("sqlite:///mlflow.db", "digits", "digits", {})
    rec = Recommendation(task="digits", optimizer="sgd", optimizer_params={"lr": 0.1}, scheduler="cosine",
                         value=0.93, study_name="digits", extra={"improvement": {"verdict": "better"}})
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
    p = SimpleNamespace(last="trial", running=4, pruned=12, failed=1, best=0.98765, best_trial=137,
                        eta_s=lambda: 1234.0, done=200, total=200)
    buf = io.StringIO()
    with TuneDisplay(Console(file=buf, width=80), 200) as display:
        display.update(p)
    line = buf.getvalue().strip().splitlines()[-1]
    assert "200/200" in line and "best 0.9877 #137" in line and "ETA 1234s" in line, line
    assert len(line) <= 80


@pytest.mark.slow
def test_a_dead_mlflow_server_from_the_cli_exits_2_at_once_with_nothing_created(workdir: Path) -> None:
    t0 = time.monotonic()
    result = run_cli("tune", "--task", "digits", "--mlflow-uri", "http://127.0.0.1:1", "--trials", "1",
                     cwd=workdir, timeout=120, env={"COLUMNS": "200"})
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - t0 < 45
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach MLflow at http://127.0.0.1:1"), result.stderr
    assert not any(line.startswith("trials ") for line in result.stderr.splitlines())  # no progress bar
    assert os.listdir(workdir) == []
