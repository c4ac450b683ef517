"""What the search shows while it runs: ``SearchProgress`` (the counts, the best trial, the
estimate, the notes) updated after every event, and the one line a starved driver prints.

The study is read for the display at most every ``REFRESH_S`` while trials run (short trials
finish several times a second); the last event always reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from optuna.trial import TrialState

from autoopt.dispatch.clock import SYSTEM, Clock
from autoopt.study import with_retry
from autoopt.study.view import StudyView

REFRESH_S = 0.5  # the progress display reads the study at most this often while trials run
# No worker of ours placed for this long (env AUTOOPT_STARVED_S): say what was asked and what is free.
STARVED_S = 60.0


@dataclass
class SearchProgress:
    """What the progress display shows; updated after every event of the search. ``started``:
    monotonic seconds on ``clock``."""

    total: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    skipped: int = 0  # not started: the time budget could not afford them
    running: int = 0
    best: float | None = None
    best_trial: int | None = None
    started: float = field(default_factory=time.monotonic)
    finished_here: int = 0
    last: str = ""
    notes: list[str] = field(default_factory=list)  # one line each: what the user should know
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed + self.skipped

    def eta_s(self) -> float | None:
        """Seconds left at this driver's pace so far (None before its first trial ends).

        >>> p = SearchProgress(total=10, complete=4, started=100.0, finished_here=4, clock=lambda: 120.0)
        >>> p.eta_s()
        30.0
        """
        if self.finished_here == 0:
            return None
        per = (self.clock() - self.started) / self.finished_here
        return max(0.0, (self.total - self.done) * per)

    def refresh(self, view: StudyView) -> None:
        """Counts and best trial, from the study as ``view`` last read it."""
        self.complete, self.pruned = view.count(TrialState.COMPLETE), view.count(TrialState.PRUNED)
        self.running, self.failed = view.count(TrialState.RUNNING), view.count(TrialState.FAIL)
        self.skipped = view.skipped
        if view.best is not None:
            self.best_trial, self.best = view.best


Progress = Callable[[SearchProgress], None]


class SearchDisplay:
    """The progress of one search and whom to tell (``on_progress``), on ``clock``; and the line
    a driver without a placed worker says (``starving``)."""

    def __init__(self, view: StudyView, total: int, on_progress: Progress | None = None, *,
                 clock: Clock = SYSTEM, starving: Starving | None = None) -> None:
        self.view, self.on_progress, self.clock = view, on_progress, clock
        self.progress = SearchProgress(total=total, started=clock.monotonic(), clock=clock.monotonic)
        self.starving = starving or Starving(STARVED_S, clock)  # the starved driver's line

    def notify(self, event: str, *, busy: bool) -> None:
        """``event`` happened; the study is read again unless trials are in flight (``busy``)
        and the last read is younger than ``REFRESH_S``."""
        self.progress.last = event
        if not busy or self.clock.monotonic() - self.view.read_at >= REFRESH_S:
            with_retry(self.view.read, what="read the study")
        self.progress.refresh(self.view)
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def note(self, line: str) -> None:
        """A line the user should read (shown with the progress)."""
        self.progress.notes.append(line)


@dataclass
class Starving:
    """No worker of this driver placed: after ``after_s`` seconds, one line saying what was
    asked and what is free (``line``), once until a worker is placed again (``fed``).

    >>> from autoopt.dispatch.clock import ManualClock
    >>> clock = ManualClock()
    >>> s = Starving(60.0, clock)
    >>> s.line(lambda: "each worker asks 1 CPU") is None
    True
    >>> clock.advance(61)
    >>> s.line(lambda: "each worker asks 1 CPU")
    'no worker placed for 61s: each worker asks 1 CPU'
    >>> s.line(lambda: "each worker asks 1 CPU") is None  # said once
    True
    """

    after_s: float
    clock: Clock = SYSTEM
    since: float | None = None
    said: bool = False

    def line(self, waiting_for: Callable[[], str]) -> str | None:
        now = self.clock.monotonic()
        if self.since is None:
            self.since = now
        elif now - self.since >= self.after_s and not self.said:
            self.said = True
            return f"no worker placed for {now - self.since:.0f}s: {waiting_for()}"
        return None

    def fed(self) -> None:
        self.since, self.said = None, False
