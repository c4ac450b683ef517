"""The time budget: ``--time-budget 90s`` bounds the whole command, launch to exit.

A budget is counted from the moment the command was launched (the process's start, so the
interpreter's and the imports' seconds count too; ``tune()`` from Python counts from its call).
It is split as the costs are measured, never by fixed shares alone:

* **start-up** is whatever it takes (the Ray start, the MLflow store and the workers' warm-up
  overlap; about 10 s on a 2-core machine);
* **the screen and the search** may start a trial only while its expected cost (its family's
  measured seconds per epoch, else the median of those measured, times the epochs) fits in
  what is left after the **confirmation's reserve**: the larger of ``CONFIRM_SHARE`` of the
  budget left after start-up and the measured cost of racing ``RACE_FLOOR`` configs on
  ``MIN_SEEDS`` seeds;
* **the confirmation** (a race, ``autoopt.decide.race``) adds a round of seeds only when the round's
  expected cost fits in what is left; a config too slow for what is left is not confirmed,
  and the JSON says so;
* **the end** (saving, closing MLflow, stopping the workers and Ray) keeps ``END_RESERVE_S``
  plus ``END_SHARE`` of the budget.

``Budget.record()`` is the JSON's ``budget``: ``limit_s``, ``used_s`` and the seconds of each
phase.

>>> parse_duration("90s"), parse_duration("20m"), parse_duration("1h30m"), parse_duration(45)
(90.0, 1200.0, 5400.0, 45.0)
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from autoopt.errors import UsageError
from autoopt.evidence import BudgetUse

MIN_BUDGET_S = 30.0  # start-up (about 10 s here) plus one config confirmed on two seeds, at the least
CONFIRM_SHARE = 0.3  # of the budget left after start-up, kept for the confirmation at the least
RACE_FLOOR = 6  # configs the confirmation's reserve can race at the least (of three tuned and six baselines)
MIN_SEEDS = 2  # seeds every confirmed config gets under a budget
END_RESERVE_S = 4.0  # saving, closing the runs, stopping the workers and Ray
RUN_OVERHEAD_S = 0.5  # a run's cost beyond its epochs: ask or dispatch, tracking, tell
END_SHARE = 0.02
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")


def run_cost(epochs: int, s_per_epoch: float) -> float:
    """Expected seconds of one run (a search trial, a confirmation run) of ``epochs`` epochs: the
    one cost model of the search's budget and the race's."""
    return epochs * s_per_epoch + RUN_OVERHEAD_S


def parse_duration(value: str | float | int) -> float:
    """Seconds in ``value``: a number of seconds, or ``90s``, ``20m``, ``2h``, ``1h30m``.
    Anything else, and a duration that is not positive, is a one-line ``UsageError``."""
    if isinstance(value, bool):
        raise UsageError(f"time budget {value!r}: give a duration such as 90s, 20m or 2h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or _PART.sub("", text).strip():
                raise UsageError(f"time budget {value!r} is not a duration; give one such as 90s, 20m or 2h") from None
            seconds = sum(float(n) * UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"time budget {value!r} must be more than 0; give one such as 90s, 20m or 2h")
    return seconds


def check_budget(seconds: float | None) -> float | None:
    """``seconds`` when it can hold start-up plus one confirmed config; else a ``UsageError``."""
    if seconds is not None and seconds < MIN_BUDGET_S:
        raise UsageError(f"time budget of {seconds:g}s is too small to start up and confirm one config; "
                         f"give at least {MIN_BUDGET_S:g}s")
    return seconds


def launch_time() -> float:
    """When this process started (wall clock, seconds since the epoch); now where unknown."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


@dataclass
class Budget:
    """A time budget of ``limit_s`` seconds counted from ``since`` (wall clock: ``clock``'s
    time), and the seconds each phase took."""

    limit_s: float
    since: float = field(default_factory=time.time)
    phases: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    search_started: float | None = None
    confirm_ended: float | None = None
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)

    def used(self) -> float:
        return self.clock() - self.since

    def left(self) -> float:
        """Seconds left for work, the end's reserve kept back."""
        return self.limit_s - self.used() - self.end_reserve()

    def end_reserve(self) -> float:
        return END_RESERVE_S + END_SHARE * self.limit_s

    def mark_search_start(self) -> None:
        """Start-up ends here: the search's first trial is asked."""
        if self.search_started is None:
            self.search_started = self.clock()
            self.phases["startup"] = self.search_started - self.since

    def confirm_reserve(self, race_cost_s: float) -> float:
        """Seconds kept for the confirmation: ``CONFIRM_SHARE`` of what start-up left, or the
        measured cost of the smallest race, whichever is larger."""
        start = self.search_started or self.clock()
        after_startup = self.limit_s - (start - self.since) - self.end_reserve()
        return max(CONFIRM_SHARE * after_startup, race_cost_s)

    def search_left(self, race_cost_s: float) -> float:
        """Seconds the screen and the search may still spend."""
        return self.left() - self.confirm_reserve(race_cost_s)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def record(self) -> BudgetUse:
        """The recommendation's ``budget``: the limit, what was used, by phase, and the notes."""
        return BudgetUse(limit_s=self.limit_s, used_s=round(self.used(), 2),
                         phases_s={k: round(v, 2) for k, v in self.phases.items()}, notes=tuple(self.notes))
