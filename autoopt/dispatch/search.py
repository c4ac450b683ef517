"""The driver's search: ask Optuna for trials, dispatch them to the pool, tell the results.

``SearchLoop.run`` turns until the search is over; each turn (``_step``) does the upkeep
(``Upkeep``: heartbeats, stale trials, workers released or placed again), feeds every placed,
free worker of this driver with a trial asked for it (``TrialAsker.next``: asked under the
study's ask lock, its config sampled, its job built by ``JobFactory``; then submitted), then
collects results (``_finish``) or, with nothing in flight, waits (``_idle``): for other drivers'
trials, or for Ray to place a worker. The deadline is checked before every wait. A trial's
states and their moves belong to ``TrialBook`` (``autoopt.dispatch.trials``); what a trial
costs, to ``SearchCosts``; what the user sees, to ``SearchDisplay``; what the search spent, to
``SearchTally``.

The loop reads the time from one injected ``Clock`` and talks to workers through a ``Pool``:
in tests it runs on a fake pool and a fake clock.

A ``SearchPolicy`` (the portfolio, ``autoopt.screen.portfolio``) may seed the study with trials
before the sampler proposes anything.

Flat at scale: the loop reads the study through a ``StudyView`` (one incremental read, counts
kept as trials change), once per ask under the ask lock (the same read serves the sampling),
and for the display and the idle wait at most every ``REFRESH_S``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from optuna.trial import TrialState

from autoopt.budget import Budget
from autoopt.dispatch.asking import Pending, TrialAsker
from autoopt.dispatch.clock import SYSTEM, Clock, Deadline
from autoopt.dispatch.costs import SearchCosts
from autoopt.dispatch.display import REFRESH_S, STARVED_S, Progress, SearchDisplay, SearchProgress, Starving
from autoopt.dispatch.jobs import JobFactory, warm_job
from autoopt.dispatch.pool import Finished, InFlight, Pool
from autoopt.dispatch.results import JobResult, JobState
from autoopt.dispatch.tally import SearchTally, Span
from autoopt.dispatch.trials import TrialBook
from autoopt.dispatch.upkeep import Upkeep
from autoopt.errors import StudyStopped
from autoopt.screen.focus import SearchFocus
from autoopt.study import HEARTBEAT_S, StorageDown, full_trials, with_retry
from autoopt.study.backends import env_seconds
from autoopt.study.record import TrialKind, kind_of, record
from autoopt.study.view import StudyView
from autoopt.tracking import RunRef

if TYPE_CHECKING:
    from autoopt.spec import StudySpec

log = logging.getLogger(__name__)

__all__ = ["REFRESH_S", "SAME_ERROR_STOP", "STARVED_S", "FailureStreak", "Pending", "Progress", "SearchLoop",
           "SearchPolicy", "SearchProgress", "SearchStart", "Span", "begin_search", "warm_job"]

# The first trials this driver finishes all failed with this one error: the study stops (a user's
# bug must not cost every trial of the study).
SAME_ERROR_STOP = 3


class SearchPolicy(Protocol):
    """What the search runs besides the sampler's proposals."""

    def start(self, study: optuna.Study, storage_url: str, trials: int) -> str | None:
        """Called once per driver before the first ask: enqueue what must run first. Returns a
        one-line note for the user, or None."""


@dataclass
class FailureStreak:
    """The failures among the first trials this driver finished: once ``SAME_ERROR_STOP`` of them
    failed with one reason before any trial succeeded, ``add`` raises ``StudyStopped`` with it."""

    reasons: list[str] = field(default_factory=list)
    succeeded: bool = False

    def add(self, result: JobResult) -> None:
        if self.succeeded or result.state != JobState.FAILED:
            self.succeeded = True
            return
        self.reasons.append(result.reason or "no reason given")
        if len(self.reasons) >= SAME_ERROR_STOP and len(set(self.reasons)) == 1:
            raise StudyStopped(f"the first {len(self.reasons)} trials all failed with the same error, so the study "
                               f"stops here: {self.reasons[0]} (fix it and run the same command again; each "
                               "trial's traceback is in MLflow)")


@dataclass
class SearchStart:
    """What a search reads and writes once before its first ask (``begin_search``): a resumed
    study's measured costs, and the notes of the policy's start (the portfolio enqueued)."""

    speeds: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def begin_search(study: optuna.Study, storage_url: str, trials: int, policy: SearchPolicy | None) -> SearchStart:
    """What needs no worker, done once per driver (``tune`` does it while Ray starts): a resumed
    study's costs read, the policy's trials enqueued. Asks no trial."""
    out = SearchStart()
    for t in with_retry(lambda: list(full_trials(study)), what="read the study"):  # a resumed study's, whole
        rec = record(t)
        if rec.s_per_epoch and rec.family:  # a resumed study's costs
            out.speeds.setdefault(rec.family, []).append(rec.s_per_epoch)
    if policy is not None:
        note = with_retry(lambda: policy.start(study, storage_url, trials), what="enqueue the portfolio")
        if note:
            log.warning("%s", note)  # before the progress display starts: the CLI shows it
            out.notes.append(note)
    return out


class SearchLoop:
    """Ask, dispatch, tell until the study holds ``spec.trials`` trials (counting those of
    other drivers and those already finished), or ``spec.timeout_s`` passes, or the budget is
    spent. Each trial's life is kept by ``self.book`` (``autoopt.dispatch.trials``); a trial is
    asked only for a worker of this driver that the pool has placed and that is free.

    ``clock``: the time every part reads (``autoopt.dispatch.clock``); ``pool``: the workers
    (``autoopt.dispatch.pool.Pool``)."""

    def __init__(self, study: optuna.Study, *, spec: StudySpec, storage_url: str, tracking: RunRef | None,
                 pool: Pool, on_progress: Progress | None = None, policy: SearchPolicy | None = None,
                 budget: Budget | None = None, begun: SearchStart | None = None, clock: Clock = SYSTEM) -> None:
        self.study, self.spec, self.pool = study, spec, pool
        self.book = TrialBook(study, clock=clock.monotonic)
        view = StudyView(study, clock=clock.monotonic)
        costs = SearchCosts(spec.epochs, budget)
        workers = lambda: len(pool.workers)  # noqa: E731
        jobs = JobFactory(spec, study.study_name, storage_url, tracking, spec.search_space(), budget,
                          race_s=lambda: costs.race(workers()), clock=clock)
        self.asker = TrialAsker(study, spec, book=self.book, view=view, costs=costs, jobs=jobs, workers=workers)
        self.upkeep = Upkeep(study, self.book, pool, clock=clock)
        self.display = SearchDisplay(view, spec.trials, on_progress, clock=clock,
                                     starving=Starving(env_seconds("AUTOOPT_STARVED_S", STARVED_S), clock))
        self.deadline = Deadline.after(clock, spec.timeout_s)
        self.tally = SearchTally()
        self.failures = FailureStreak()
        self.inflight: dict[Any, InFlight] = {}
        self.begin: Callable[[], SearchStart] = (
            (lambda: begun) if begun is not None else lambda: begin_search(study, storage_url, spec.trials, policy))

    # --- what the caller reads -----------------------------------------------------------------

    @property
    def progress(self) -> SearchProgress:
        return self.display.progress

    @property
    def focus(self) -> SearchFocus:
        return self.asker.focus

    @property
    def costs(self) -> SearchCosts:
        return self.asker.costs

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> SearchProgress:
        """Run the search. Ctrl-C (or any error but a lost database) fails the trials held here
        and re-queues them (the study stays resumable), then re-raises."""
        try:
            self._start()
            while not self._step():
                pass
            budget = self.costs.budget
            if budget is not None and not self.over():  # it ended at its trials, not at the budget
                budget.note(f"the search ran all its {self.spec.trials} trials with {budget.left():.0f}s of the "
                            "budget left (a larger --trials lets the search spend them)")
            self.notify("search over")  # the display shows the study as it ended
        except StorageDown:
            raise  # nothing can be recorded: their heartbeats stop, and a later driver re-queues them
        except BaseException:
            self.interrupt()
            raise
        return self.progress

    def _start(self) -> None:
        if not self.pool.warming:
            self.pool.warm(self.asker.jobs.warm())
        begun = self.begin()
        for name, speeds in begun.speeds.items():
            for speed in speeds:
                self.costs.measured(name, speed)
        for line in begun.notes:
            self.display.note(line)
        self.notify("start")

    def over(self) -> bool:
        """The deadline (``--timeout``, ``--time-budget``) passed or the budget holds no more trials."""
        return self.costs.spent or self.deadline.passed()

    def _step(self) -> bool:
        """One turn: upkeep, free workers fed, results collected. True when the search is over."""
        self.upkeep()
        if not self.over():
            self._feed()
        if not self.inflight:
            return self._idle()
        # Before the deadline, a wait ends at it (nothing is asked after it); past it, the trials
        # in flight are waited for as they end (a busy loop would take a core from them).
        wait_s = HEARTBEAT_S if self.over() else self.deadline.wait_s(HEARTBEAT_S)
        for done in self.pool.collect(self.inflight, timeout_s=wait_s):
            self._finish(done)  # then the next turn feeds the freed worker
        return False

    def _feed(self) -> None:
        """A trial for each placed, free worker, asked and prepared for it and sent at once."""
        while not self.upkeep.asked_all and not self.over() and (worker := self.pool.free()) is not None:
            pending = self.next(worker)
            if pending is None:
                return
            self.submit(worker, pending)

    def _idle(self) -> bool:
        """Nothing of ours in flight: the search is over, or waits (for other drivers' trials,
        or for Ray to place a worker of ours). True when it is over. Never waits past the deadline."""
        if self.over():
            return True
        view = self.asker.view
        with_retry(lambda: view.fresh(REFRESH_S), what="read the study")
        if (view.used >= self.spec.trials and view.count(TrialState.RUNNING) == 0
                and view.count(TrialState.WAITING) == 0):
            return True
        self.progress.refresh(view)
        if self.upkeep.asked_all:
            # Other drivers' trials still run (a dead driver's are re-queued once their heartbeat
            # goes stale: the upkeep then places workers again). Our workers are released.
            self.deadline.clock.sleep(self.deadline.wait_s(1.0))
            return False
        line = self.display.starving.line(self.pool.describe_wait)
        if line is not None:
            log.warning("%s", line)
            self.notify(line)
        self.pool.wait_ready(self.deadline.wait_s(HEARTBEAT_S))
        return False

    def _finish(self, done: Finished) -> None:
        item, result, trial = done.item, done.result, done.item.trial
        assert trial is not None, "a search job is submitted with its trial"
        number = trial.number
        kind = TrialKind.SCREEN if kind_of(trial.user_attrs) == TrialKind.SCREEN else TrialKind.SEARCH
        self.tally.add(Span(number, kind, item.worker, item.started, done.ended), result)
        self.costs.measured(item.job.config.optimizer, result.s_per_epoch)
        if done.lost:
            log.warning("worker died during trial %d: %s", number, (result.reason or "")[:200])
            self.book.requeue(number, "worker died during the trial")
            self.notify(f"trial {number} lost its worker; re-queued")
            return
        self.focus.observe(item.job.config.optimizer if kind == TrialKind.SEARCH else None,
                           TrialState[result.state.value], result.value)
        with_retry(lambda: self.book.tell(number, result), what="record a trial")
        self.progress.finished_here += 1
        self.notify(f"trial {number} {result.state.value.lower()}")
        self.failures.add(result)

    # --- a trial, from ask to submit -----------------------------------------------------------

    def next(self, worker: int) -> Pending | None:
        """Ask for the next trial for ``worker`` (placed and free) and prepare its job; None when
        the study's trials are all asked (the workers may go) or the budget is spent."""
        pending = self.asker.next(worker)
        if pending is None:
            self.upkeep.asked_all = not self.costs.spent
        return pending

    def submit(self, worker: int, pending: Pending) -> None:
        """Send a PLACED trial's job to its worker: RUNNING from now on."""
        ref, item = self.pool.submit(worker, pending.job, pending.trial)
        self.book.start(pending.trial.number)
        self.inflight[ref] = item
        self.display.starving.fed()

    def interrupt(self) -> None:
        """Ctrl-C: the workers stopped, the trials held here failed and re-queued, so running the
        command again finishes exactly the remainder."""
        self.pool.shutdown()
        self.inflight.clear()
        self.book.interrupt()

    def notify(self, event: str) -> None:
        self.display.notify(event, busy=bool(self.inflight))

