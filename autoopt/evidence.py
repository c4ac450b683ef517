"""The evidence behind a recommendation, as frozen records: what the race confirmed, the
baselines, the paired verdict, the cost, the time budget, the effort by phase.

Each record is immutable (a function that refines one returns a new one, ``model_copy``) and
keeps any key it does not name (``extra="allow"``), so a JSON written by a later release still
loads. ``to_dict`` is the JSON form; the recommendation writes and reads it in one place
(``autoopt.recommendation``). Plain records, importing nothing of autoopt: the screen
(``LeftOnCost``) and the budget (``BudgetUse``) fill some before the search, the confirmation
(``autoopt.decide``) the rest after it.

>>> s = Stats.of([0.5, None, 0.7])
>>> s.mean, s.complete, s.values
(0.6, 2, (0.5, None, 0.7))
>>> Paired.model_validate({"deltas": [0.01, 0.02], "mean": 0.015, "ci95": [0.0, 0.03], "verdict": "tie", "n": 2}).ci95
(0.0, 0.03)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    """A frozen record that keeps unknown keys."""

    model_config = ConfigDict(frozen=True, extra="allow")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field, unknown keys kept."""
        return self.model_dump(mode="json")


class Stats(Record):
    """One metric over seeds: mean, population std, the per-seed values (None for a seed whose run
    did not complete) and how many completed."""

    mean: float | None = None
    std: float | None = None
    values: tuple[float | None, ...] = ()
    complete: int = 0

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stats:
        clean = [v for v in values if v is not None and math.isfinite(v)]
        if not clean:
            return cls(values=tuple(values))
        return cls(mean=statistics.fmean(clean), std=statistics.pstdev(clean) if len(clean) > 1 else 0.0,
                   values=tuple(values), complete=len(clean))

    @property
    def all_complete(self) -> bool:
        return self.mean is not None and self.complete == len(self.values)


class Paired(Record):
    """The paired comparison of A against B (``autoopt.decide.verdict.paired``): per-seed signed
    differences, their mean, its 95% t-interval and the verdict."""

    deltas: tuple[float, ...] = ()
    mean: float | None = None
    ci95: tuple[float, float] | None = None
    verdict: str | None = None
    n: int = 0
    resolution: float | None = None


class VersusPick(Record):
    """An entry against the pick, with the equivalence margin and whether it is shown within it."""

    verdict: str | None = None
    mean: float | None = None
    ci95: tuple[float, float] | None = None
    n: int | None = None
    margin: float | None = None
    equivalent: bool | None = None


class RaceStatus(Record):
    """Why a contender left the race unconfirmed (its ``race.Standing``: dropped or unaffordable)."""

    status: str
    reason: str | None = None


class Reused(Record):
    """A seed of an entry whose run the study had made already: trial ``trial``'s (a complete
    screen or search run of the same config at the same epochs), counted rather than repeated."""

    seed: int
    trial: int


class Entry(Record):
    """One confirmed config (a tuned trial's, ``trial_number`` set) or baseline. ``reused``: the
    seeds (of ``seeds``) whose run is a trial the study made already, not a run of the race."""

    name: str
    trial_number: int | None = None
    optimizer: str
    optimizer_params: dict[str, Any] = {}
    scheduler: str = "none"
    scheduler_params: dict[str, Any] = {}
    grad_clip_norm: float | None = None
    seeds: tuple[int, ...] = ()
    val: Stats = Stats()
    test: Stats = Stats()
    s_per_epoch: float | None = None
    failed: tuple[str, ...] = ()
    relative: float | None = None
    time_to_baseline_s: float | None = None
    versus_pick: VersusPick | None = None
    excluded: str | None = None
    race: RaceStatus | None = None
    reused: tuple[Reused, ...] = ()

    def config(self) -> dict[str, Any]:
        """The config's five keys, as ``TrialConfig.from_dict`` takes them."""
        return {"optimizer": self.optimizer, "optimizer_params": dict(self.optimizer_params),
                "scheduler": self.scheduler, "scheduler_params": dict(self.scheduler_params),
                "grad_clip_norm": self.grad_clip_norm}

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for key in ("excluded", "race"):  # absent rather than null, as before
            if out.get(key) is None:
                out.pop(key, None)
        return out


class Baseline(Entry):
    """A published default confirmed beside the tuned configs (``params``: its optimizer's)."""

    @property
    def params(self) -> dict[str, Any]:
        return self.optimizer_params

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "params": self.optimizer_params}


class Improvement(Record):
    """What tuning bought over the best baseline: the recommendation's mean test metric minus the
    baseline's (``delta``, positive is better), the verdict of the validation comparison that
    decided the pick (``paired``) and the same comparison on test (``test_paired``)."""

    metric: str
    delta: float
    spread: float
    versus: str | None = None
    tuned: str | None = None
    recommended: float | None = None
    baseline: float | None = None
    verdict: str | None = None
    paired: Paired | None = None
    test_paired: Paired | None = None

    def says(self) -> str:
        """What was decided, in words (the summary's line).

        >>> Improvement(metric="test_accuracy", delta=0.0, spread=0.003, versus="muon_default", tuned="trial_7",
        ...             verdict="worse", paired=Paired(deltas=[-0.01] * 3, n=3)).says()
        "muon's published defaults (muon_default) beat the best tuned config, trial_7 (paired, 3 seeds)"
        """
        n = self.paired.n if self.paired is not None else 0
        seeds = f"paired, {n} seed{'' if n == 1 else 's'}"
        base = baseline_words(self.versus)
        if self.verdict == "better":
            return (f"the tuned config {self.tuned} beat the best baseline, {base} ({seeds}); "
                    f"{self.metric} {self.delta:+.4f}")
        if self.verdict == "worse":
            return f"{base} beat the best tuned config, {self.tuned} ({seeds})"
        if self.verdict == "tie":
            why = "on one seed, which decides nothing" if n == 1 else "not shown better"
            return f"{base} stands: the best tuned config, {self.tuned}, is {why} ({seeds})"
        return f"{base} stands: no tuned config left to compare"


def baseline_words(name: str | None) -> str:
    """A baseline's name in words: ``muon_default`` is "muon's published defaults (muon_default)".

    >>> baseline_words("adam_tutorial")
    "the tutorial's adam (adam_tutorial)"
    """
    if not name:
        return "the best baseline"
    family, _, kind = name.rpartition("_")
    if kind == "default" and family:
        return f"{family}'s published defaults ({name})"
    if kind == "tutorial" and family:
        return f"the tutorial's {family} ({name})"
    return name


class Cost(Record):
    """The pick's seconds per epoch, and that over the fastest baseline's."""

    s_per_epoch: float | None = None
    relative: float | None = None


class Alternative(Record):
    """A config cheaper per epoch than the pick and shown equivalent to it."""

    name: str
    optimizer: str
    s_per_epoch: float | None = None
    relative: float | None = None
    versus_pick: VersusPick | None = None


class BudgetUse(Record):
    """The time budget and how it was spent, by phase."""

    limit_s: float
    used_s: float
    phases_s: dict[str, float] = {}
    notes: tuple[str, ...] = ()


class RaceSummary(Record):
    """How the confirmation race went: rounds, seeds, the runs it made and their epochs, the runs
    the study had made already that it counted as seeds (``reused``), and who left unconfirmed."""

    rounds: int = 0
    min_seeds: int | None = None
    max_seeds: int | None = None
    runs: int = 0
    epochs: int = 0
    reused: int = 0
    left_out: dict[str, str | None] = {}


class Effort(Record):
    """What each phase of a study spent: epochs trained and wall seconds, by phase (``screen``,
    ``search``, ``confirm``)."""

    epochs: dict[str, int] = {}
    seconds: dict[str, float] = {}
    trials: int = 0  # the screen's and the search's
    first_trial_s: float | None = None  # from the start to the first trial, under a time budget
    searched: dict[str, str] = {}  # the families the search tuned, and why (the screen's survivors)


class LeftOnCost(Record):
    """A screened family the cost-aware screen left untrained although it ranked in the best
    third of its rung: its rank there, its s/epoch (and over the pick's), and the time budget
    that would have trained and raced it."""

    family: str | None = None
    trial: int
    epoch: int
    rank: int
    of: int
    s_per_epoch: float
    relative_to_pick: float | None = None
    time_budget_s: int


class ZeroShot(Record):
    """Where a zero-shot answer (``source: database``) comes from: the earlier studies read, the
    family order they give, and the study whose config it is (JSON key ``from``)."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    studies: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    from_study: str | None = Field(default=None, alias="from")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


# The evidence keys of a recommendation's JSON and the record each is read into.
EVIDENCE: dict[str, type[Record]] = {"improvement": Improvement, "cost": Cost, "budget": BudgetUse,
                                     "cheapest_equivalent": Alternative, "race": RaceSummary, "effort": Effort}
