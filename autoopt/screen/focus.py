"""The search's focus: it tunes the families the screen found.

The screen trains every family at its published defaults, by successive halving; at each epoch
it reported, a family ranked in its best third or did not. The families that did, ordered by the
deepest epoch at which they did (then by their rank there), are the survivors: the first
``FOCUS_FAMILIES`` of them. Each search trial's family is then chosen among the survivors by a
bandit (UCB1 on how each trial ranks among the study's complete results), per second: a
family's score is divided by its seconds per epoch in the screen over the fastest survivor's, so
the search's time goes where the expected gain per second is highest (a family five times slower
per epoch must promise five times as much to get the trial). TPE tunes that family's settings
(learning rate, betas, weight decay, schedule) from that family's trials. A family outside the
survivors gets no search trial: the screen's evidence says it will not win.

>>> from optuna.trial import create_trial
>>> from optuna.distributions import CategoricalDistribution
>>> def screened(family, values):
...     return create_trial(state=TrialState.PRUNED, params={"optimizer": family},
...                         distributions={"optimizer": CategoricalDistribution(["a", "b", "c"])},
...                         intermediate_values=dict(enumerate(values, 1)))
>>> screen = [screened("a", [0.9, 0.95]), screened("b", [0.8]), screened("c", [0.5])]
>>> [(s.family, s.epoch, s.rank) for s in survivors(screen, "maximize")]
[('a', 2, 1)]
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial, TrialState

from autoopt.base.direction import ordered, sign
from autoopt.study.record import TrialKind, kind_of, record

FOCUS_FAMILIES = 5  # the search tunes at most this many families
MIN_SCREENED = 6  # a screen of fewer families narrows nothing worth narrowing: TPE sees them all


@dataclass(frozen=True)
class Survivor:
    """A family the search tunes: the deepest epoch at which it ranked in the screen's best
    third, and its rank there (``rank`` of ``of``)."""

    family: str
    epoch: int
    rank: int
    of: int
    s_per_epoch: float | None = None  # its seconds per epoch in the screen (None: not measured)

    @property
    def why(self) -> str:
        return f"the screen's best third at epoch {self.epoch} ({self.rank} of {self.of})"


def survivors(screen: Iterable[FrozenTrial], direction: object, k: int = FOCUS_FAMILIES) -> list[Survivor]:
    """The screen's survivors (see the module's docstring), at most ``k``, best first."""
    trials = [t for t in screen if isinstance(t.params.get("optimizer"), str)]
    speed = {t.params["optimizer"]: record(t).s_per_epoch for t in trials}
    deepest: dict[str, Survivor] = {}
    for epoch in sorted({s for t in trials for s in t.intermediate_values}):
        at = [(v, t.params["optimizer"]) for t in trials
              if (v := t.intermediate_values.get(epoch)) is not None and math.isfinite(v)]
        ranked = ordered(at, key=lambda pair: pair[0], direction=direction)
        third = max(1, math.ceil(len(ranked) / 3))
        for i, (_, fam) in enumerate(ranked[:third]):
            deepest[fam] = Survivor(fam, epoch, i + 1, len(ranked), speed.get(fam))
    return sorted(deepest.values(), key=lambda s: (-s.epoch, s.rank))[:k]


@dataclass
class Focus:
    """The survivors and the bandit that picks each search trial's family among them.

    A trial's reward is its mid-rank among the study's complete results (1 for a new best; 0 for
    a pruned, diverged or failed trial), so it does not depend on the metric's scale; each survivor starts
    with one pull worth its screen rank. ``choose`` gives the family with the highest UCB1 score
    per second (over its cost: its seconds per epoch over the fastest survivor's).
    """

    families: list[Survivor]
    direction: object
    pulls: dict[str, int] = field(default_factory=dict)
    rewards: dict[str, float] = field(default_factory=dict)
    _complete: list[float] = field(default_factory=list)  # the complete results, sign-adjusted, sorted
    chosen: set[str] = field(default_factory=set)  # the families given a search trial so far

    def __post_init__(self) -> None:
        self.update(self.families)

    def update(self, families: list[Survivor], k: int = FOCUS_FAMILIES) -> None:
        """The survivors as the screen now ranks them (it may still be running): a new one starts
        with one pull worth its rank; the pulls of the others are kept. A family already given a
        search trial stays searched, the others in rank order filling the rest of the ``k``
        places: the search's trials span ``k`` families at most, however the screen's last
        results reorder its best third (ties at its edge are common on a small validation set).
        """
        now = {s.family for s in families}
        kept = [s for s in self.families if s.family in self.chosen and s.family not in now]
        fresh = [s for s in families if s.family in self.chosen]
        room = max(0, k - len(kept) - len(fresh))
        rest = [s for s in families if s.family not in self.chosen][:room]
        self.families = [s for s in families if s in fresh or s in rest] + kept
        for s in self.families:
            if s.family not in self.pulls:
                self.pulls[s.family] = 1
                self.rewards[s.family] = 1.0 - (s.rank - 1) / max(1, s.of)

    @property
    def names(self) -> list[str]:
        return [s.family for s in self.families]

    def why(self) -> dict[str, str]:
        """Each searched family and why it is searched (the JSON's ``effort.searched``), with its
        cost where it is much slower per epoch than the fastest survivor."""
        return {s.family: s.why + (f"; {c:.1f}x the fastest's seconds per epoch" if (c := self.cost(s.family)) >= 1.5
                                   else "") for s in self.families}

    def observe(self, family: str | None, state: TrialState, value: float | None) -> None:
        """A finished trial: its result joins the study's, and a search trial of a survivor is
        that survivor's pull."""
        reward = 0.0
        if state == TrialState.COMPLETE and value is not None and math.isfinite(value):
            score = sign(self.direction) * value
            bisect.insort(self._complete, score)
            # its mid-rank among the complete results, itself included: 1 for a new best, 0.5 alone
            ties = bisect.bisect_left(self._complete, score) + bisect.bisect_right(self._complete, score)
            reward = ties / (2 * len(self._complete))
        if family is not None and family in self.pulls:
            self.chosen.add(family)
            self.pulls[family] += 1
            self.rewards[family] += reward

    def cost(self, name: str) -> float:
        """Family ``name``'s seconds per epoch over the fastest survivor's (1 where not measured)."""
        speeds = {s.family: s.s_per_epoch for s in self.families if s.s_per_epoch}
        fastest = min(speeds.values(), default=None)
        return max(1.0, speeds[name] / fastest) if fastest and name in speeds else 1.0

    def choose(self) -> str:
        """The next search trial's family: the survivor with the highest UCB1 score per second
        (the first, best screened, on ties)."""
        total = sum(self.pulls[name] for name in self.names)

        def per_second(name: str) -> float:
            n = self.pulls[name]
            return (self.rewards[name] / n + math.sqrt(2 * math.log(total) / n)) / self.cost(name)

        best = max(self.names, key=per_second)
        self.chosen.add(best)
        return best


def focus_of(trials: list[FrozenTrial], direction: object, screen_numbers: list[int]) -> Focus | None:
    """The focus of a study whose screen is ``screen_numbers`` (trial numbers, positions in
    ``trials``), with its finished search trials observed; None when the screen has reported
    nothing yet."""
    found = survivors([trials[n] for n in screen_numbers if n < len(trials)], direction)
    if not found:
        return None
    focus = Focus(found, direction)
    wanted = set(screen_numbers)
    for t in trials:
        if t.state.is_finished():
            focus.observe(t.params.get("optimizer") if t.number not in wanted else None, t.state, t.value)
    return focus


class SearchFocus:
    """A driver's focus over a study's life: the screen's trial numbers (read once), the
    ``Focus`` made once the screen has reported, its survivors followed while the screen runs.
    Its reads of the study are the driver's own (the view's trials); per trial it visits the
    screen's few trials only."""

    def __init__(self, direction: object) -> None:
        self.direction = direction
        self.screen: list[int] | None = None
        self.focus: Focus | None = None
        self.off = False  # the screen is too small to narrow: TPE sees every family
        self.screen_done = False

    def family(self, trials: list[FrozenTrial]) -> str | None:
        """The family of the next search trial, or None where the search is not focused."""
        if self.off:
            return None
        if self.screen is None:
            self.screen = [t.number for t in trials if kind_of(t.user_attrs) == TrialKind.SCREEN]
            if len({trials[n].params.get("optimizer") for n in self.screen}) < MIN_SCREENED:
                self.off = True
                return None
        if self.focus is None:
            self.focus = focus_of(trials, self.direction, self.screen)
        elif not self.screen_done:
            screen = [trials[n] for n in self.screen if n < len(trials)]
            self.screen_done = all(t.state.is_finished() for t in screen)
            self.focus.update(survivors(screen, self.direction) or self.focus.families)
        return self.focus.choose() if self.focus is not None else None

    def observe(self, family: str | None, state: TrialState, value: float | None) -> None:
        if self.focus is not None:
            self.focus.observe(family, state, value)

    def why(self) -> dict[str, str]:
        """The searched families and why (empty where the search was not focused)."""
        return self.focus.why() if self.focus is not None else {}
