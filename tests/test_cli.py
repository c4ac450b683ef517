"""The CLI end to end on digits, in an empty folder, as a new user runs it."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from conftest import refused, run_cli, run_main, shared_ray
from services import wait_for

from autoopt.space import FAMILIES
from autoopt.study import budget_used

FAST = ["--task", "digits", "--epochs", "2", "--no-confirm", "--concurrency", "2"]


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small study, run once per module. Tests never use it directly: see ``tuned``."""
    folder = tmp_path_factory.mktemp("tuned")
    res = run_cli("tune", *FAST, "--trials", "4", cwd=folder)
    assert res.returncode == 0, res.stderr[-2000:]
    return folder


@pytest.fixture()
def tuned(study_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the small study's folder: a test may extend or change it without the
    others noticing, so the tests pass in any order (or alone)."""
    folder = tmp_path / "tuned"
    shutil.copytree(study_folder, folder)
    return folder


def finished(folder: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{folder / 'autoopt.db'}")
    return [t for t in study.trials if t.state.is_finished()]


@pytest.mark.slow
def test_tune_writes_storage_tracking_and_recommendation(tuned: Path) -> None:
    rec = json.loads((tuned / "recommendations" / "digits.json").read_text())
    assert rec["task"] == "digits" and rec["study_name"] == "digits"
    assert rec["metric"] == "val_accuracy" and rec["direction"] == "maximize"
    assert rec["optimizer"] in FAMILIES
    assert 0.5 < rec["value"] <= 1.0
    trials = finished(tuned)
    assert len(trials) == 4
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert rec["trial_number"] == best.number and rec["value"] == pytest.approx(best.value)
    # Every trial reported its validation metric per epoch (pruning works across processes).
    assert all(len(t.intermediate_values) >= 1 for t in trials)


@pytest.mark.slow
def test_mlflow_holds_parent_and_nested_runs_with_epoch_metrics(tuned: Path) -> None:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tuned / 'mlflow.db'}")
    exp = client.get_experiment_by_name("autoopt/digits")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    child = children[0]
    assert {"autoopt.trial_number", "autoopt.state", "autoopt.optimizer"} <= set(child.data.tags)
    fam = child.data.tags["autoopt.optimizer"]
    assert child.data.params["optimizer"] == fam and "lr" in child.data.params
    for metric in ("train_loss", "val_loss", "val_accuracy", "lr"):
        history = client.get_metric_history(child.info.run_id, metric)
        assert [m.step for m in history] == list(range(1, len(history) + 1)), metric
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "recommendation")}
    assert "recommendation/digits.json" in artifacts
    plots = {a.path for a in client.list_artifacts(parents[0].info.run_id, "plots")}
    assert "plots/optimization_history.png" in plots


@pytest.mark.slow
def test_recommend_builds_working_optimizer_and_scheduler(tuned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoopt import recommend

    monkeypatch.chdir(tuned)
    rec = recommend("digits")
    assert rec.to_dict()["optimizer_params"] == json.loads(
        (tuned / "recommendations" / "digits.json").read_text())["optimizer_params"]
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = rec.build_optimizer(model)
    sched = rec.build_scheduler(opt, epochs=3, steps_per_epoch=4)
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    before = model[0].weight.detach().clone()
    if rec.to_dict().get("train_eval_mode"):
        opt.train()
    # Three steps: some families (ADOPT) only initialise their state on the first one.
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step(loss.item()) if rec.to_dict()["scheduler_step"] == "epoch" else sched.step()
    assert not torch.equal(before, model[0].weight), rec.to_dict()["optimizer"]

    shown = run_cli("recommend", "--task", "digits", cwd=tuned)
    assert shown.returncode == 0 and json.loads(shown.stdout)["optimizer"] == rec.optimizer
    code = run_cli("recommend", "--task", "digits", "--format", "python", cwd=tuned)
    assert code.returncode == 0 and "rec.build_optimizer(model)" in code.stdout
    compile(code.stdout, "snippet", "exec")


@pytest.mark.slow
def test_rerun_with_more_trials_extends_the_same_study(tuned: Path, local_ray: None,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The entry point in this process, on the session's Ray (the study above ran in a fresh one).
    monkeypatch.chdir(tuned)
    code, _, err = run_main(capsys, "tune", *FAST, "--trials", "5")
    assert code == 0, err[-2000:]
    trials = finished(tuned)
    assert len(trials) == 5 and sorted(t.number for t in trials) == list(range(5))
    # Same command again: nothing left to do, no duplicate work.
    code, _, err = run_main(capsys, "tune", *FAST, "--trials", "5")
    assert code == 0 and len(finished(tuned)) == 5, err[-2000:]


@pytest.mark.parametrize(("args", "expect"), [
    (["tune", "--task", "cifar"], "unknown task 'cifar'; known tasks: cifar10, digits"),
    (["tune", "--task", "digits", "--optimizers", "sgd,adamz"], "unknown optimizer 'adamz'"),
    (["tune", "--task", "digits", "--epochs", "0"], "--epochs"),
    (["tune", "--task", "digits", "--trials", "-3"], "--trials"),
    (["tune", "--task", "digits", "--storage", "nosuchdb://x"], "scheme 'nosuchdb' is not supported"),
    (["tune", "--task", "digits", "--storage", "postgresql+psycopg://u:hunter2@127.0.0.1:9/db"],
     "cannot open storage"),
    (["tune", "--task", "digits", "--study-file", "missing.yaml"], "does not exist"),
    (["recommend", "--task", "digits"], "run: autoopt tune --task digits"),
])
def test_bad_input_is_one_line_and_exit_2(workdir: Path, local_ray: None, capsys: pytest.CaptureFixture[str],
                                          args: list[str], expect: str) -> None:
    # In this process (the entry point the console script calls): no fresh interpreter needed.
    line = refused(capsys, *args)  # exit 2, one line that names the fix, no traceback
    assert expect in line
    assert "hunter2" not in line


def test_malformed_study_file_names_the_problem(workdir: Path, local_ray: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "bad.yaml").write_text("task: digits\ntrials: [1, 2\n")
    assert "not valid YAML" in refused(capsys, "tune", "--study-file", "bad.yaml")
    (workdir / "typo.yaml").write_text("task: digits\ntrails: 3\n")
    line = refused(capsys, "tune", "--study-file", "typo.yaml")
    assert "trails" in line and "unknown key" in line
    (workdir / "space.yaml").write_text("task: digits\nspace:\n  sgd:\n    lr: {log: [0, 1]}\n")
    assert "sgd.lr" in refused(capsys, "tune", "--study-file", "space.yaml")
    assert sorted(p.name for p in workdir.iterdir()) == ["bad.yaml", "space.yaml", "typo.yaml"]  # nothing created


@pytest.mark.slow
def test_user_study_file_is_used(workdir: Path, local_ray: None, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "mine.yaml").write_text(
        "task: digits\ntrials: 3\nepochs: 1\noptimizers: [adam]\nschedulers: [none]\ngrad_clip: false\n"
        "confirm: false\nstudy_name: mine\nspace:\n  adam:\n    lr: {log: [1.0e-3, 3.0e-3]}\n")
    code, _, err = run_main(capsys, "tune", "--study-file", "mine.yaml")
    assert code == 0, err[-2000:]
    study = optuna.load_study(study_name="mine", storage=f"sqlite:///{workdir / 'autoopt.db'}")
    # The study file's 3 trials are the search's own (no --trials given): adam's published
    # defaults are screened on top.
    assert len(study.trials) == 1 + 3
    assert all(t.params["optimizer"] == "adam" and 1e-3 <= t.params["adam.lr"] <= 3e-3 for t in study.trials)


def trial_states(db: Path) -> dict[str, int]:
    """The study's trials by state, read from the SQLite file without opening it for writing
    (empty while it does not exist yet or is being created)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
            return dict(conn.execute("select state, count(*) from trials group by state").fetchall())
    except sqlite3.Error:
        return {}


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_study(tmp_path: Path, _ray_session: None, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Two families (a small portfolio to resume) and far more trials than can ever finish before
    # the interrupt: the search is mid-way whenever it comes.
    args = [*FAST, "--optimizers", "sgd,adam"]
    cmd = [sys.executable, "-m", "autoopt", "tune", *args, "--trials", "400", "--epochs", "4"]
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    # A shell's background job inherits SIGINT ignored (and Python then never raises
    # KeyboardInterrupt): give the driver the default disposition a terminal would.
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    db = tmp_path / "autoopt.db"
    try:
        # The interrupt comes once the search runs: a trial complete (the best so far exists)
        # and one in flight. Whatever finishes between this read and the signal, the checks
        # below read the outcome from the study.
        def searching() -> bool:
            assert proc.poll() is None, err.read_text()[-2000:]
            states = trial_states(db)
            return states.get("COMPLETE", 0) >= 1 and states.get("RUNNING", 0) >= 1

        wait_for(searching, 300, "a complete trial and one running", 0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.read_text()[-2000:]
    assert "run the same command again" in err.read_text()
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}")
    trials = study.trials
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states, states
    # The trials the driver held (in flight, or asked and waiting for a worker) failed as
    # interrupted, and each was re-queued once with its config; nothing else failed.
    interrupted = {t.number: t for t in trials if t.state.name == "FAIL"}
    assert interrupted and all(t.user_attrs.get("reason") == "interrupted" for t in interrupted.values()), states
    retries = {t.system_attrs["failed_trial"]: t for t in trials if "failed_trial" in t.system_attrs}
    assert sorted(retries) == sorted(interrupted), (sorted(retries), sorted(interrupted))
    assert all(r.state.name == "WAITING" and r.params == interrupted[n].params for n, r in retries.items())
    assert (tmp_path / "recommendations" / "digits.json").exists()  # best so far
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("autoopt/digits")
    assert not client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")

    # Resuming with room for two more than the study holds (finished, queued and re-queued)
    # finishes exactly that: the re-queued and queued trials run, then two new ones.
    total = budget_used(trials) + 2
    # The resume in this process, on the session's Ray: what it proves is the study's, not a
    # fresh process's.
    shared_ray()
    monkeypatch.chdir(tmp_path)
    for var in ("AUTOOPT_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    code, _, err_text = run_main(capsys, "tune", *args, "--trials", str(total))
    assert code == 0, err_text[-2000:]
    after = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}").trials
    names = [t.state.name for t in after]
    assert not [s for s in names if s in ("RUNNING", "WAITING")], names
    assert sum(s in ("COMPLETE", "PRUNED") for s in names) == total, names
    assert {t.number for t in after if t.state.name == "FAIL"} == set(interrupted), names  # no new failure
    assert all(after[r.number].state.name in ("COMPLETE", "PRUNED") for r in retries.values()), names
    assert len(after) == total + len(interrupted) and budget_used(after) == total
