"""A trial's life in one driver, from ask to tell: ``TrialBook`` is its one owner.

Every trial this driver asks goes through these states, and only ``TrialBook``'s methods move
it (each checks the move is allowed; any other raises ``BadMove``)::

    (the study's queue)
        |  ask       the search loop, only for one of this driver's workers that Ray has placed
        v            and that is free (the worker is named with the trial)
      ASKED ------------------------------------------------------------+
        |  place     the loop, once the trial's config is sampled and     |
        v            its job built                                        |
      PLACED -------------------------------------------------------------+
        |  start     the loop, as the job is sent to that worker           |
        v                                                                 |
      RUNNING -- tell --> TOLD       the result recorded (COMPLETE, PRUNED, FAIL), or the
        |                            trial found finished by another driver (not ours then)
        |                  ^
        |                  +-- skip  ASKED/PLACED: its expected cost does not fit the budget
        +------ requeue --> REQUEUED failed and back in the study's queue, for any driver:
                           its worker died (RUNNING), Ctrl-C (any live state), or it waited
                           ``GRACE_S`` without a worker (ASKED/PLACED: ``requeue_unplaced``)

TOLD and REQUEUED are final: the trial leaves the book. Heartbeats (``beat``) go to RUNNING
trials only, plus one when a trial is asked: a trial whose driver holds it without running it
is taken for stale by the other drivers, as it should be.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from autoopt.dispatch.results import JobResult, JobState, compact_history
from autoopt.study import (
    GRACE_S,
    deferred_writes,
    is_unreachable,
    record_heartbeat,
    retry_trial,
    storage_of,
    trial_id_of,
    with_retry,
)
from autoopt.study.record import write_reason, write_run, write_skipped

if TYPE_CHECKING:
    from autoopt.dispatch.worker import Job

log = logging.getLogger(__name__)


@contextlib.contextmanager
def interrupt_deferred() -> Iterator[None]:
    """Ctrl-C waits for the end of the block, then comes as it would have: a trial the block
    asks is in the book before the interrupt, which re-queues it (else it would stay RUNNING,
    nobody's, until the other drivers take it for stale). Only in the main thread, where
    signals arrive; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


class Life(enum.Enum):
    ASKED = "asked"
    PLACED = "placed"
    RUNNING = "running"
    TOLD = "told"
    REQUEUED = "requeued"


# Which state each move starts from.
MOVES: dict[str, frozenset[Life]] = {
    "place": frozenset({Life.ASKED}),
    "start": frozenset({Life.PLACED}),
    "tell": frozenset({Life.RUNNING}),
    "skip": frozenset({Life.ASKED, Life.PLACED}),
    "requeue": frozenset({Life.ASKED, Life.PLACED, Life.RUNNING}),
}


class BadMove(RuntimeError):
    """A move the trial's state does not allow (a bug in the caller, never a user's error)."""


@dataclass
class Held:
    """A trial this driver holds: its Optuna handle, its state, the worker it is for, and since
    when it is in that state (monotonic seconds)."""

    trial: optuna.trial.Trial
    worker: int
    state: Life = Life.ASKED
    since: float = field(default_factory=time.monotonic)
    job: Job | None = None

    @property
    def number(self) -> int:
        return self.trial.number


class TrialBook:
    """The trials this driver holds, by number, and every move of their lives (see the module
    docstring). ``clock`` is ``time.monotonic`` but for tests."""

    def __init__(self, study: optuna.Study, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.study, self.clock = study, clock
        self.held: dict[int, Held] = {}
        self.history: list[tuple[int, Life]] = []  # every state each trial entered here, in order

    # --- reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.held)

    def __contains__(self, number: int) -> bool:
        return number in self.held

    def state(self, number: int) -> Life | None:
        held = self.held.get(number)
        return held.state if held is not None else None

    def in_state(self, *states: Life) -> Iterator[Held]:
        return (h for h in list(self.held.values()) if h.state in states)

    # --- moves --------------------------------------------------------------------------------

    def ask(self, trial: optuna.trial.Trial, worker: int) -> Held:
        """A trial just asked (under the ask lock, which recorded its first heartbeat) for
        ``worker``, placed and free."""
        if trial.number in self.held:
            raise BadMove(f"trial {trial.number} is held already ({self.held[trial.number].state.value})")
        held = self.held[trial.number] = Held(trial, worker, since=self.clock())
        self.history.append((trial.number, Life.ASKED))
        return held

    def place(self, number: int, job: Job) -> Held:
        held = self._move(number, "place", Life.PLACED)
        held.job = job
        return held

    def start(self, number: int) -> Held:
        return self._move(number, "start", Life.RUNNING)

    def tell(self, number: int, result: JobResult) -> bool:
        """Record ``result`` for a RUNNING trial; False when another driver finished it first (it
        took this driver for dead). An unreachable database raises, to be retried: the trial
        stays RUNNING until the tell succeeds or fails for good."""
        held = self._check(number, "tell")
        trial = held.trial
        try:
            # The tell is one transaction, all or nothing. A trial of one epoch is as its handle
            # knows it (its worker left its one report to the tell); a longer one is read again.
            with deferred_writes(self.study, trial, read=len(result.history) > 1):
                write_run(trial, train_s=result.train_s, s_per_epoch=result.s_per_epoch,
                          history=compact_history(result.history), reason=result.reason,
                          node=result.node, pid=result.pid, rss_mb=result.rss_mb,
                          seed=held.job.seed if held.job is not None else None,
                          batch_size=held.job.batch_size if held.job is not None else None, test=result.test)
                if result.state == JobState.COMPLETE and result.value is not None:
                    # The worker leaves the last epoch's report to this tell: it spares the trial a
                    # round trip at its end, and no pruner acts on the last epoch. (A complete run
                    # without a value trained no epoch: failed, as Optuna would not take it.)
                    trial.report(result.value, len(result.history) or 1)
                    self.study.tell(trial, result.value)
                else:
                    self.study.tell(trial, state=TrialState.PRUNED if result.state == JobState.PRUNED
                                    else TrialState.FAIL)
        except Exception as exc:
            if is_unreachable(exc):
                raise
            log.warning("could not record trial %d: %s", number, exc)
            self._leave(number, Life.TOLD)
            return False
        self._leave(number, Life.TOLD)
        return True

    def skip(self, number: int, reason: str) -> None:
        """A trial asked but not started: failed with ``reason``, marked skipped (not re-queued)."""
        trial = self._check(number, "skip").trial
        with_retry(lambda: write_skipped(trial, reason), what="record a trial")
        with_retry(lambda: self._fail(trial), what="record a trial")
        self._leave(number, Life.TOLD)

    def requeue(self, number: int, reason: str) -> None:
        """Fail the trial with ``reason`` and put it back in the study's queue for any driver
        (at most ``MAX_RETRY`` times, as for a dead driver's trial)."""
        trial = self._check(number, "requeue").trial

        def fail_and_queue() -> None:
            write_reason(trial, reason)
            if self._fail(trial):
                retry_trial(self.study, number)

        with_retry(fail_and_queue, what="re-queue a trial")
        self._leave(number, Life.REQUEUED)

    def requeue_unplaced(self, grace_s: float = GRACE_S) -> list[int]:
        """Re-queue the trials held ``grace_s`` or more without running on a worker."""
        now = self.clock()
        stale = [h.number for h in self.in_state(Life.ASKED, Life.PLACED) if now - h.since >= grace_s]
        for number in stale:
            log.warning("trial %d waited %.0fs without a worker; re-queued for any driver", number, grace_s)
            self.requeue(number, f"waited {grace_s:.0f}s without a worker")
        return stale

    def interrupt(self) -> None:
        """Ctrl-C (or a crash of the driver): every trial held here failed and re-queued, so
        running the command again finishes exactly the remainder. Best effort, trial by trial."""
        for held in list(self.held.values()):
            try:
                self.requeue(held.number, "interrupted")
            except Exception as exc:
                log.warning("could not re-queue trial %d: %s", held.number, exc)
                self.held.pop(held.number, None)

    def beat(self) -> None:
        """A heartbeat for each RUNNING trial (none for a trial that waits without a worker)."""
        for held in self.in_state(Life.RUNNING):
            with_retry(functools.partial(record_heartbeat, self.study, held.number), what="heartbeat")

    # --- internals ----------------------------------------------------------------------------

    def _check(self, number: int, move: str) -> Held:
        held = self.held.get(number)
        if held is None:
            raise BadMove(f"{move}: trial {number} is not held by this driver")
        if held.state not in MOVES[move]:
            raise BadMove(f"{move}: trial {number} is {held.state.value}")
        return held

    def _move(self, number: int, move: str, to: Life) -> Held:
        held = self._check(number, move)
        held.state, held.since = to, self.clock()
        self.history.append((number, to))
        return held

    def _leave(self, number: int, final: Life) -> None:
        self.held.pop(number, None)
        self.history.append((number, final))

    def _fail(self, trial: optuna.trial.Trial) -> bool:
        """Fail ``trial``; False when it was finished already (by a driver that took us for dead)."""
        try:
            self.study.tell(trial, state=TrialState.FAIL)
        except Exception as exc:
            if is_unreachable(exc):
                raise
            frozen = storage_of(self.study).get_trial(trial_id_of(self.study, trial.number))
            if frozen.state.is_finished():
                return False
            raise
        return True
