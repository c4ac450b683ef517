"""The study as a driver last read it: ``StudyView``, with its counts kept as trials change.

Each ``read`` is one incremental read of the storage (Optuna's trial cache fetches only the
trials that changed since the last read: the unfinished ones and the new ones). The counts the
driver needs per trial (the budget used against ``--trials``, trials by state, the skipped ones,
the best value, the waiting queue) are then updated from those trials only: a finished trial never changes, so
it is counted once. A driver's cost per trial stays flat as its study grows.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

import autoopt.study.quiet  # noqa: F401  (Optuna quietened first)
from autoopt.base.direction import better
from autoopt.study.record import SKIPPED


@dataclass
class StudyView:
    """A study's trials as last read (``trials``), and what the driver counts of them."""

    study: optuna.Study
    trials: list[FrozenTrial] = field(default_factory=list)
    read_at: float = -math.inf  # monotonic seconds of the last read
    finished: Counter[str] = field(default_factory=Counter)  # finished trials by state name
    retried: set[int] = field(default_factory=set)  # failed trials whose retry was queued
    failed_retried: int = 0  # ... of which failed (they count neither as failed nor against --trials)
    skipped: int = 0  # failed before they started, the time budget not affording them (not counted as failed)
    best: tuple[int, float] | None = None  # the best complete trial: number, value
    open: dict[int, TrialState] = field(default_factory=dict)  # unfinished trials: number -> state
    _seen: int = 0  # trials[:_seen] were visited once
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)  # what read_at reads

    def read(self) -> list[FrozenTrial]:
        """Read the study (one incremental read) and update the counts."""
        trials = self.study.get_trials(deepcopy=False)
        self.read_at = self.clock()
        if any(trials[i].number != i for i in (0, len(trials) - 1) if trials) or len(trials) < self._seen:
            self._reset()  # numbers are positions in a study Optuna keeps; anything else is counted afresh
        changed = [trials[n] for n in self.open if n < len(trials)] + trials[self._seen:]
        self._seen = len(trials)
        for t in changed:
            self._visit(t)
        self.trials = trials
        return trials

    def fresh(self, max_age_s: float) -> list[FrozenTrial]:
        """The trials, read again only when the last read is older than ``max_age_s``."""
        if self.clock() - self.read_at >= max_age_s:
            return self.read()
        return self.trials

    def _reset(self) -> None:
        self.finished, self.retried, self.failed_retried, self.skipped = Counter(), set(), 0, 0
        self.best, self.open, self._seen = None, {}, 0

    def _visit(self, t: FrozenTrial) -> None:
        first = t.number not in self.open
        if first:
            for n in t.system_attrs.get("retry_history", ()):
                if n not in self.retried:
                    self.retried.add(n)
                    self.failed_retried += 1  # a retried trial was failed before its retry was queued
        if not t.state.is_finished():
            self.open[t.number] = t.state
            return
        self.open.pop(t.number, None)
        if t.state == TrialState.FAIL and t.user_attrs.get(SKIPPED):
            self.skipped += 1
            return
        self.finished[t.state.name.lower()] += 1
        if t.state == TrialState.COMPLETE and t.value is not None and (
                self.best is None or better(t.value, self.best[1], self.study.direction)):
            self.best = (t.number, t.value)

    # --- what the driver reads --------------------------------------------------------------

    @property
    def used(self) -> int:
        """Trials that count against ``--trials`` (``autoopt.study.budget_used``)."""
        return len(self.trials) - len(self.retried)

    def count(self, state: TrialState) -> int:
        if state.is_finished():
            n = self.finished[state.name.lower()]
            return n - self.failed_retried if state == TrialState.FAIL else n
        return sum(1 for s in self.open.values() if s == state)

    def first_waiting(self) -> FrozenTrial | None:
        """The waiting trial Optuna hands out next (the lowest number), or None."""
        waiting = [n for n, s in self.open.items() if s == TrialState.WAITING]
        return self.trials[min(waiting)] if waiting else None
