"""The trainable door: a user's own training loop (``@autoopt.trainable``) run as trials.

Unit tests of the handle the loop gets (``Run``: optimizer, schedule, clipping, reports, the
end of a trial it did not ask for) and of the checks before anything runs; then the whole
command on ``loop_user:train`` (tests/loop_user.py: a DataLoader, its own Huber loss and MAE),
and a loop whose every trial raises.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from conftest import ROOT, run_cli
from torch import nn

import autoopt
from autoopt.dispatch.results import JobResult, JobState
from autoopt.dispatch.search import SAME_ERROR_STOP, FailureStreak
from autoopt.errors import StudyStopped, UsageError
from autoopt.mark import Trainable
from autoopt.space import TrialConfig
from autoopt.tasks import UserLoop, load_task
from autoopt.training.loop import LoopError, run_loop

TESTS = ROOT / "tests"


def _loop(fn: Any, metric: str = "val_loss", direction: str = "minimize", setup: Any = None) -> UserLoop:
    return UserLoop("m:fit", fn, Trainable(metric, direction, setup))


def _fit(run: Any, swallow: bool = False) -> None:
    """A tiny regression in the user's own loop, reporting val_loss and a metric of its own."""
    model = nn.Linear(4, 1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    opt = run.optimizer(model)
    sched = run.scheduler(opt, steps_per_epoch=4)
    for _ in range(run.epochs):
        for i in range(4):
            loss = nn.functional.mse_loss(model(x[i * 16:(i + 1) * 16]), y[i * 16:(i + 1) * 16])
            opt.zero_grad()
            loss.backward()
            run.clip(model)
            opt.step()
            if sched is not None:
                sched.step()
        try:
            with run.evaluating(model, opt):
                run.report(val_loss=nn.functional.mse_loss(model(x), y).item(), my_score=1.5)
        except Exception:  # a loop that swallows errors still ends where the trial is stopped
            if not swallow:
                raise
    with run.evaluating(model, opt):
        run.report_test(0.25, extra=2.0)


def test_a_loop_reports_every_metric_with_lr_and_seconds_per_epoch() -> None:
    cfg = TrialConfig("adam", {"lr": 1e-2}, scheduler="cosine", scheduler_params={"eta_min_ratio": 0.01},
                      grad_clip_norm=1.0)
    result = run_loop(_loop(_fit), cfg, epochs=3, seed=0)
    assert result.status == "complete" and len(result.history) == 3
    assert all({"val_loss", "my_score", "lr", "epoch_s"} <= set(h) for h in result.history)
    assert result.history[2]["lr"] < result.history[0]["lr"]  # the cosine schedule stepped
    assert result.value == result.history[-1]["val_loss"]
    assert result.train_s == pytest.approx(sum(h["epoch_s"] for h in result.history))
    assert result.test == {}  # not a confirmation run: the test split is not recorded


def test_a_confirmation_run_records_report_test_under_the_declared_metric() -> None:
    result = run_loop(_loop(_fit, metric="val_loss"), TrialConfig("sgd", {"lr": 1e-2}), epochs=1, seed=0,
                      evaluate_test=True)
    assert result.test == {"test_loss": 0.25, "test_extra": 2.0}


def test_on_epoch_ends_the_loop_there_even_when_it_catches_exceptions() -> None:
    seen: list[int] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool | str:
        seen.append(epoch)
        return "stopped by the budget" if epoch == 2 else False

    result = run_loop(_loop(lambda run: _fit(run, swallow=True)), TrialConfig("adam", {"lr": 1e-3}), epochs=5,
                      seed=0, on_epoch=on_epoch)
    assert result.status == "pruned" and result.reason == "stopped by the budget"
    assert seen == [1, 2] and len(result.history) == 2


def test_a_report_without_the_declared_metric_fails_naming_both() -> None:
    def wrong(run: Any) -> None:
        run.report(val_mse=1.0)

    with pytest.raises(LoopError, match=r"val_mse.*declared metric val_mae"):
        run_loop(_loop(wrong, metric="val_mae"), TrialConfig("adam", {"lr": 1e-3}), epochs=2, seed=0)


def test_a_loop_that_never_reports_fails_naming_the_metric() -> None:
    with pytest.raises(LoopError, match=r"never called run\.report: report val_loss"):
        run_loop(_loop(lambda run: None), TrialConfig("adam", {"lr": 1e-3}), epochs=2, seed=0)


def test_a_non_finite_metric_ends_the_trial_as_diverged() -> None:
    def blows_up(run: Any) -> None:
        for _ in range(run.epochs):
            run.report(val_loss=math.nan)

    result = run_loop(_loop(blows_up), TrialConfig("adam", {"lr": 1e-3}), epochs=3, seed=0)
    assert result.status == "diverged" and "val_loss is nan at epoch 1" in (result.reason or "")


def test_the_generators_are_seeded_and_setup_data_is_passed() -> None:
    draws: list[tuple[float, float, float, Any]] = []

    def fit(run: Any, data: Any) -> None:
        draws.append((random.random(), float(np.random.rand()), torch.rand(()).item(), data))
        run.report(val_loss=1.0)

    loop = UserLoop("m:fit", fit, Trainable("val_loss", "minimize", setup=lambda d: "data"), data="data")
    for _ in range(2):
        run_loop(loop, TrialConfig("adam", {"lr": 1e-3}), epochs=1, seed=7)
    assert draws[0] == draws[1] and draws[0][3] == "data"


def test_a_plateau_schedule_moves_once_per_epoch_on_the_declared_metric() -> None:
    def flat(run: Any) -> None:
        model = nn.Linear(2, 1)
        opt = run.optimizer(model)
        sched = run.scheduler(opt, steps_per_epoch=10)
        for _ in range(run.epochs):
            for _ in range(10):
                sched.step()  # per optimizer step, as the contract says: no-ops for plateau
            run.report(val_acc=0.5)  # never improves

    cfg = TrialConfig("sgd", {"lr": 0.1}, scheduler="plateau", scheduler_params={"factor": 0.5, "patience": 0})
    result = run_loop(_loop(flat, metric="val_acc", direction="maximize"), cfg, epochs=3, seed=0)
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.1, 0.05])  # reported, then stepped


def test_schedule_free_evaluates_at_its_averaged_weights_and_trains_again() -> None:
    modes: list[bool] = []

    def fit(run: Any) -> None:
        model = nn.Linear(4, 1)
        opt = run.optimizer(model)
        for _ in range(run.epochs):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with run.evaluating(model, opt):
                modes.append(opt.param_groups[0]["train_mode"])
                run.report(val_loss=loss.item())
        modes.append(opt.param_groups[0]["train_mode"])

    result = run_loop(_loop(fit), TrialConfig("sfadamw", {"lr": 1e-3}), epochs=2, seed=0)
    assert result.status == "complete" and modes == [False, False, True]


def test_trainable_refuses_a_bad_direction_at_the_decorator() -> None:
    with pytest.raises(UsageError, match="sideways"):
        autoopt.trainable(metric="val_loss", direction="sideways")


def test_a_marked_function_loads_as_a_user_loop_and_runs_its_setup(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("LOOP_SETUP_LOG", str(tmp_path))
    loop = load_task("loop_user:train")
    assert isinstance(loop, UserLoop) and (loop.metric, loop.direction) == ("val_mae", "minimize")
    assert set(loop.data) == {"train", "val", "test"} and loop.setup_s > 0
    assert [p.read_text() for p in tmp_path.iterdir()] == ["setup\n"]
    result = run_loop(loop, TrialConfig("adamw", {"lr": 1e-2}), epochs=2, seed=0, evaluate_test=True)
    assert result.status == "complete" and {"val_mae", "train_huber"} <= set(result.history[-1])
    assert result.test["test_mae"] > 0


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_setup_that_raises_is_bad_input_naming_the_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _module(tmp_path, monkeypatch, "usersetup", "import autoopt\n"
            "def load(data_dir):\n    raise FileNotFoundError('no shards in ' + str(data_dir))\n"
            "@autoopt.trainable(metric='val_loss', setup=load)\ndef train(run, data):\n    pass\n")
    refusal = r"usersetup:train.*setup load\(data_dir\) raised FileNotFoundError: no shards"
    with pytest.raises(UsageError, match=refusal):
        load_task("usersetup:train", tmp_path)


def test_a_function_neither_task_nor_trainable_is_refused_naming_both(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _module(tmp_path, monkeypatch, "userplain", "def plain(run):\n    return None\n")
    with pytest.raises(UsageError, match=r"not an autoopt Task, and is not marked @autoopt.trainable"):
        load_task("userplain:plain", tmp_path)


def _failed(reason: str) -> JobResult:
    return JobResult.failed(reason)


def test_the_first_trials_failing_with_one_error_stop_the_study() -> None:
    streak = FailureStreak()
    for _ in range(SAME_ERROR_STOP - 1):
        streak.add(_failed("ValueError: boom"))
    with pytest.raises(StudyStopped, match=r"the first 3 trials all failed with the same error.*ValueError: boom"):
        streak.add(_failed("ValueError: boom"))


def test_different_errors_or_a_trial_that_worked_keep_the_study_going() -> None:
    mixed = FailureStreak()
    for reason in ("ZeroDivisionError: bug", "OutOfMemoryError: CUDA", "ZeroDivisionError: bug", "x", "x"):
        mixed.add(_failed(reason))
    worked = FailureStreak()
    worked.add(JobResult(JobState.COMPLETE, 0.5))
    for _ in range(5):
        worked.add(_failed("ValueError: boom"))  # a trial already worked: a config's own failure


# --- the whole command --------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    log = tmp_path / "setup-log"
    log.mkdir(exist_ok=True)
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "LOOP_SETUP_LOG": str(log), "COLUMNS": "200"}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """``loop_user:train`` tuned once for the module: 3 families screened, 3 searched, confirmed."""
    work = tmp_path_factory.mktemp("loop")
    result = run_cli("tune", "--task", "loop_user:train", "--optimizers", "adam,adamw,sgd", "--trials", "6",
                     "--epochs", "3", "--confirm-seeds", "2", cwd=work, env=_env(work))
    return work, result


@pytest.mark.slow
def test_a_user_loop_is_screened_searched_and_confirmed_with_a_paired_verdict(tuned: tuple[Path, Any]) -> None:
    work, result = tuned
    assert result.returncode == 0, result.stderr[-3000:]
    [saved] = (work / "recommendations").glob("*.json")
    rec = json.loads(saved.read_text())
    assert (rec["metric"], rec["direction"]) == ("val_mae", "minimize")
    assert rec["improvement"]["verdict"] in ("better", "tie", "worse")
    assert len(rec["improvement"]["paired"]["deltas"]) >= 2
    assert rec["cost"]["s_per_epoch"] > 0
    chosen = rec["confirmation"].get(rec["chosen"]) or next(b for b in rec["baselines"] if b["name"] == rec["chosen"])
    assert chosen["test"]["mean"] > 0  # from run.report_test
    assert "setup" in rec["effort"]["seconds"]  # setup is its own phase, in no trial's cost
    study = optuna.load_study(study_name="loop_user:train", storage=f"sqlite:///{work}/autoopt.db")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 6


@pytest.mark.slow
def test_setup_runs_once_per_worker_process(tuned: tuple[Path, Any]) -> None:
    work, result = tuned
    assert result.returncode == 0, result.stderr[-3000:]
    counts = [p.read_text().count("setup") for p in (work / "setup-log").iterdir()]
    # the driver's check, then each worker once, for 6 trials and the confirmation's runs
    assert counts and max(counts) == 1 and len(counts) <= 4, counts


@pytest.mark.slow
def test_every_reported_metric_is_a_curve_in_mlflow(tuned: tuple[Path, Any]) -> None:
    import mlflow

    work, result = tuned
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
    exp = client.get_experiment_by_name("autoopt/loop_user:train")
    runs = client.search_runs([exp.experiment_id], "tags.`autoopt.state` = 'COMPLETE'")
    assert runs
    run_id = runs[0].info.run_id
    assert len(client.get_metric_history(run_id, "val_mae")) == 3
    assert len(client.get_metric_history(run_id, "train_huber")) == 3


@pytest.mark.slow
def test_recommend_reads_a_user_loop_by_its_module_function(tuned: tuple[Path, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    work, result = tuned
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.chdir(work)
    rec = autoopt.recommend("loop_user:train")
    assert rec.metric == "val_mae" and rec.direction == "minimize"


@pytest.mark.slow
def test_a_loop_that_always_raises_stops_the_study_in_one_line(tmp_path: Path) -> None:
    result = run_cli("tune", "--task", "loop_user:broken", "--optimizers", "adam,sgd", "--trials", "12",
                     "--epochs", "2", cwd=tmp_path, env=_env(tmp_path))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the first 3 trials all failed") and "boom in the user's loop" in last, last
    study = optuna.load_study(study_name="loop_user:broken", storage=f"sqlite:///{tmp_path}/autoopt.db")
    assert 3 <= sum(t.state.name == "FAIL" for t in study.trials) <= 6
