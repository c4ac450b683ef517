"""What this driver's search spent: its trials' spans, the epochs trained by kind, and a user
loop's setup on the workers (``SearchTally``), read by ``tune`` for the effort it reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoopt.dispatch.results import JobResult
from autoopt.study.record import TrialKind


@dataclass(frozen=True)
class Span:
    """A trial run by this driver: its number, kind (screen or search), worker, and its start and
    end (wall-clock seconds)."""

    number: int
    kind: TrialKind
    worker: int
    started: float
    ended: float


@dataclass
class SearchTally:
    """The spans, epochs by kind and setup seconds of the trials this driver ran.

    >>> tally = SearchTally()
    >>> tally.add(Span(0, "screen", 0, 10.0, 12.0), JobResult.failed("boom"))
    >>> tally.timeline[0].kind, tally.epochs_run
    ('screen', {<TrialKind.SCREEN: 'screen'>: 0, <TrialKind.SEARCH: 'search'>: 0})
    """

    epochs_run: dict[TrialKind, int] = field(default_factory=lambda: dict.fromkeys(
        (TrialKind.SCREEN, TrialKind.SEARCH), 0))
    timeline: list[Span] = field(default_factory=list)
    setup_s: float = 0.0  # a user loop's setup on the workers (its own phase, no trial's cost)

    def add(self, span: Span, result: JobResult) -> None:
        self.timeline.append(span)
        self.epochs_run[span.kind] += len(result.history)
        self.setup_s += result.setup_s
