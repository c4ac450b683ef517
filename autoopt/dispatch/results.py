"""What a job gives back: a typed ``JobResult`` with its ``JobState``.

Every way a job can end (trained to the end, pruned, diverged, raised, its worker died, Ray
failed the task) is one ``JobResult``; readers use its attributes, never string keys.

>>> r = JobResult(JobState.COMPLETE, 0.9, [{"epoch": 1, "val_accuracy": 0.8, "epoch_s": 2.0},
...                                         {"epoch": 2, "val_accuracy": 0.9, "epoch_s": 4.0}], {})
>>> r.s_per_epoch, r.time_to(0.85, "val_accuracy", "maximize")
(3.0, 6.0)
"""

from __future__ import annotations

import traceback as tb
from dataclasses import dataclass, field
from typing import Any

from autoopt.base.direction import better
from autoopt.base.states import JobState
from autoopt.study import redact


@dataclass(frozen=True)
class JobResult:
    """One job's outcome.

    ``value`` is the final validation metric (None when failed); ``history`` holds one dict per
    epoch (``epoch``, ``train_loss``, ``val_loss``, the metric, ``lr``, ``epoch_s``: seconds of
    training and validation of that epoch on the worker's device); ``test`` the test metrics
    (``test_<name>``) when the job asked for them; ``reason`` why it failed, was pruned or
    diverged; ``train_s`` the sum of ``epoch_s``; ``worker_s`` the job's time on its worker.
    """

    state: JobState
    value: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    traceback: str | None = None
    train_s: float = 0.0
    worker_s: float = 0.0
    pid: int | None = None
    node: str | None = None
    rss_mb: float | None = None  # the worker process's peak resident memory so far
    setup_s: float = 0.0  # a user loop's setup, run on this worker before this job (its own phase)

    @property
    def s_per_epoch(self) -> float | None:
        """Mean seconds per epoch (training and validation) over the epochs run; None if none ran."""
        times = [h["epoch_s"] for h in self.history if "epoch_s" in h]
        return sum(times) / len(times) if times else None

    def time_to(self, target: float, metric: str, direction: str) -> float | None:
        """Seconds of training (cumulative ``epoch_s``) until ``metric`` first reached ``target``
        (at least as good, by ``direction``); None if it never did."""
        elapsed = 0.0
        for h in self.history:
            elapsed += h.get("epoch_s", 0.0)
            value = h.get(metric)
            if value is not None and (value == target or better(value, target, direction)):
                return elapsed
        return None

    @classmethod
    def failed(cls, reason: str, *, tb_text: str | None = None, **timings: Any) -> JobResult:
        """A failed job: its reason (and traceback) redacted, cut to a readable length."""
        return cls(JobState.FAILED, None, [], {}, reason=redact(reason)[:500],
                   traceback=redact(tb_text)[-4000:] if tb_text else None, **timings)

    @classmethod
    def from_exception(cls, exc: BaseException, **timings: Any) -> JobResult:
        """A job that raised: the exception's type and first line, and the traceback."""
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        return cls.failed(f"{type(exc).__name__}: {first}", tb_text=tb.format_exc(), **timings)


def compact_history(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per-epoch losses, metrics, lr and seconds, rounded: small enough to keep as a trial
    attribute, and whole enough that a complete trial's run stands for a race's run of its config
    (``time_to`` reads the seconds)."""
    return [{k: round(float(v), 6) for k, v in h.items()} for h in history]
