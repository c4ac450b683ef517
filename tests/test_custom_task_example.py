"""The README's "Your own task" example runs end to end through ``autoopt tune``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, run_cli

EXAMPLES = ROOT / "examples"


def test_the_example_task_is_a_regression_scored_by_val_rmse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from autoopt.tasks import load_task

    task = load_task("regression_task:task")
    assert (task.metric, task.direction, task.loss) == ("val_rmse", "minimize", "mse")
    assert len(task.train) + len(task.val) + len(task.test) == 442
    assert task.build_model()(task.val.x[:3]).shape == (3, 1)


@pytest.mark.slow
def test_tune_runs_the_example_task_from_pythonpath(workdir: Path) -> None:
    path = os.pathsep.join(p for p in (str(EXAMPLES), os.environ.get("PYTHONPATH")) if p)
    result = run_cli("tune", "--task", "regression_task:task", "--trials", "2", "--epochs", "1", "--no-confirm",
                     cwd=workdir, env={"PYTHONPATH": path, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    [saved] = (workdir / "recommendations").glob("*.json")
    rec = json.loads(saved.read_text())
    assert rec["metric"] == "val_rmse" and rec["direction"] == "minimize" and rec["value"] > 0
    study = optuna.load_study(study_name="regression_task:task", storage="sqlite:///autoopt.db")
    assert study.metric_names == ["val_rmse"]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 2
