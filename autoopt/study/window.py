"""TPE's window kept as the study grows, at a cost that does not grow with the study: every
trial up to ``window`` finished ones; beyond, the ``best`` complete trials (TPE's "good" model:
at most 25 trials, so it is the whole study's), the newest ``window`` finished ones (Optuna
weighs older trials less already), and every unfinished one (the constant liar's), in order.

``TailWindow`` keeps, per study and set of states, where the window starts and the best
complete trials before it, instead of reading every trial per call:

- the window (the newest ``window`` finished trials in the states asked for, and every
  unfinished one after its start) is found walking back from the newest trial;
- the trials before it are read once, as the window's start moves past them: a finished trial
  never changes, so the best ``best`` complete ones are kept in a heap; an unfinished one is kept
  aside, and read again on each call until it finishes.

A study's trials are in the order of their numbers (``trials[i].number == i``), as Optuna reads
them; a list that is not (another study, trials deleted) starts the window afresh.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Container
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial, TrialState

FINISHED = frozenset({TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL})


@dataclass
class _Tail:
    """One set of states' window: its start, and what lies before it."""

    start: int = 0  # trials[:start] lie before the window
    best: list[tuple[float, int]] = field(default_factory=list)  # a min-heap: (signed value, number)
    open: set[int] = field(default_factory=set)  # unfinished trials before the start


@dataclass
class TailWindow:
    """The TPE window of one study, kept between calls (see the module)."""

    window: int
    best: int
    maximize: bool
    _tails: dict[frozenset[TrialState] | None, _Tail] = field(default_factory=dict)
    _seen: int = 0

    def of(self, trials: list[FrozenTrial], states: Container[TrialState] | None) -> list[FrozenTrial]:
        """The window of ``trials`` (all of the study's, in order) restricted to ``states``."""
        if len(trials) < self._seen or any(trials[i].number != i for i in (0, len(trials) - 1) if trials):
            self._tails.clear()
        self._seen = len(trials)
        wanted = frozenset(s for s in TrialState if states is None or s in states)

        def keep(t: FrozenTrial) -> bool:
            return t.state in wanted

        start = self._start(trials, keep)
        tail = self._tails.setdefault(None if states is None else wanted, _Tail())
        if start < tail.start:  # the list is not the one the window was kept for
            tail = self._tails[None if states is None else wanted] = _Tail()
        self._absorb(trials, tail, start, keep)
        before = sorted({n for _, n in tail.best} | {n for n in tail.open if keep(trials[n])})
        return [trials[n] for n in before] + [t for t in trials[start:] if keep(t)]

    def _start(self, trials: list[FrozenTrial], keep: Callable[[FrozenTrial], bool]) -> int:
        """Where the window starts: at the ``window``-th newest finished trial kept (0 where
        there are no more than ``window``)."""
        count = 0
        for i in range(len(trials) - 1, -1, -1):
            t = trials[i]
            if t.state in FINISHED and keep(t):
                count += 1
                if count == self.window:
                    return i
        return 0

    def _absorb(self, trials: list[FrozenTrial], tail: _Tail, start: int,
                keep: Callable[[FrozenTrial], bool]) -> None:
        """Read the trials the window's start moved past, and the unfinished ones before it."""
        sign = 1.0 if self.maximize else -1.0

        def score(t: FrozenTrial) -> None:
            v = t.value
            if t.state == TrialState.COMPLETE and keep(t) and v is not None and math.isfinite(v):
                item = (sign * v, t.number)
                if len(tail.best) < self.best:
                    heapq.heappush(tail.best, item)
                elif item > tail.best[0]:
                    heapq.heapreplace(tail.best, item)

        for n in list(tail.open):
            if trials[n].state in FINISHED:
                tail.open.discard(n)
                score(trials[n])
        for t in trials[tail.start:start]:
            if t.state in FINISHED:
                score(t)
            else:
                tail.open.add(t.number)
        tail.start = max(tail.start, start)
