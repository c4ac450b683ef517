"""The leave-one-task-out measurement's arithmetic, on hand-made studies and runs (the whole
measurement is ``autoopt bench prior``, minutes of real studies)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from autoopt.commands.priorbench import _row, markdown, time_to_target

START = datetime(2026, 1, 1, 12, 0, 0)


def _study(path: Path, trials: list[tuple[TrialState, list[float], float | None, float]]) -> None:
    """Study ``s``: trials of (state, intermediate values, final value, seconds from START to completion)."""
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{path}", direction="maximize")
    for number, (state, steps, value, after) in enumerate(trials):
        study.add_trial(FrozenTrial(
            number=number, state=state, value=value, datetime_start=START,
            datetime_complete=START + timedelta(seconds=after), params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)}, user_attrs={}, system_attrs={},
            intermediate_values=dict(enumerate(steps, 1)), trial_id=number))


def test_time_to_target_is_the_first_report_at_least_as_good_pruned_ones_included(tmp_path: Path) -> None:
    _study(tmp_path / "a.db", [(TrialState.COMPLETE, [0.5, 0.7], 0.7, 30.0),
                               (TrialState.PRUNED, [0.95], None, 12.0),  # a screened default got there first
                               (TrialState.COMPLETE, [0.8, 0.96], 0.96, 20.0)])
    since = START.timestamp()
    assert time_to_target(tmp_path / "a.db", "s", since, 0.95, "maximize") == pytest.approx(12.0)
    assert time_to_target(tmp_path / "a.db", "s", since, 0.96, "maximize") == pytest.approx(20.0)
    assert time_to_target(tmp_path / "a.db", "s", since, 0.99, "maximize") is None  # never within the budget


def test_a_row_pairs_the_seeds_and_counts_a_miss_as_the_whole_budget() -> None:
    runs = {"prior": [{"seed": 1, "optimizer": "soap", "test": 0.98, "time_to_default_s": 10.0},
                      {"seed": 2, "optimizer": "soap", "test": 0.97, "time_to_default_s": None}],
            "none": [{"seed": 1, "optimizer": "adamw", "test": 0.96, "time_to_default_s": 40.0},
                     {"seed": 2, "optimizer": "adamw", "test": 0.95, "time_to_default_s": 30.0}]}
    row = _row("digits", 0.97, "maximize", 60.0, runs)
    assert row["median_time_ratio"] == pytest.approx((10 / 40 + 60 / 30) / 2)
    assert row["test_paired"]["mean"] == pytest.approx(0.02) and row["test_paired"]["verdict"] in ("better", "tie")
    table = markdown([row])
    assert "| digits | 0.9700 | 10.0, never | 40.0, 30.0 |" in table and "0.9750" in table
    # a minimized metric: lower test RMSE with the prior is a positive (better) difference
    rmse = {"prior": [{**r, "test": 0.5} for r in runs["prior"]], "none": [{**r, "test": 0.6} for r in runs["none"]]}
    assert _row("reg", 0.6, "minimize", 60.0, rmse)["test_paired"]["mean"] == pytest.approx(0.1)
