"""The state names that cross modules: how a job ended (``JobState``), in Optuna's trial-state
names, as the worker returns it, the driver tells it and MLflow tags a trial's run with it.

>>> JobState.FAILED == "FAIL", JobState("PRUNED") is JobState.PRUNED
(True, True)
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """How a job ended, in Optuna's trial-state names."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"  # stopped by the pruner, or diverged (``reason`` says which)
    FAILED = "FAIL"
