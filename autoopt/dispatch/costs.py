"""What a search trial is expected to cost, and whether the time budget still holds one.

``SearchCosts`` keeps the seconds per epoch measured by family (this driver's trials and a
resumed study's) and answers the search loop's one question under a budget: does a trial of
this family fit in what the budget leaves before the confirmation?
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from autoopt.budget import MIN_SEEDS, RACE_FLOOR, Budget, run_cost

KEPT = 64  # the newest measured speeds kept per family: the estimate costs the same at any study size


@dataclass
class SearchCosts:
    """Measured speeds and the budget's verdict on the next trial."""

    epochs: int
    budget: Budget | None = None
    speeds: dict[str, list[float]] = field(default_factory=dict)  # seconds per epoch, by family
    spent: bool = False  # a trial did not fit: ask no more

    def measured(self, name: str, s_per_epoch: float | None) -> None:
        if s_per_epoch:
            kept = self.speeds.setdefault(name, [])
            kept.append(s_per_epoch)
            del kept[:-KEPT]

    def expected(self, name: str | None) -> float:
        """Expected seconds of a trial of family ``name`` (None: not known yet): its measured
        seconds per epoch, else the median of all measured, times the epochs; 0 before any."""
        mine = self.speeds.get(name or "")
        every = [v for vs in self.speeds.values() for v in vs]
        speed = statistics.median(mine) if mine else (statistics.median(every) if every else 0.0)
        return run_cost(self.epochs, speed)

    def race(self, workers: int) -> float:
        """Expected seconds of the smallest confirmation: ``RACE_FLOOR`` configs on ``MIN_SEEDS``
        seeds, over ``workers``."""
        return RACE_FLOOR * MIN_SEEDS / max(1, workers) * self.expected(None)

    def over(self, name: str | None, workers: int) -> bool:
        """True (and ``spent`` set, the reason noted in the budget) when a trial of ``name`` does
        not fit in what the budget leaves the search."""
        if self.budget is None:
            return False
        cost, left = self.expected(name), self.budget.search_left(self.race(workers))
        if cost <= left:
            return False
        self.spent = True
        self.budget.note(f"search stopped: a {name or 'search'} trial's expected {cost:.1f}s exceeds the "
                         f"{max(0.0, left):.1f}s left before the confirmation")
        return True
