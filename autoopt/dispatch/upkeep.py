"""The search's upkeep, every ``HEARTBEAT_S`` (``Upkeep``): heartbeats for the trials running
here, stale trials of dead drivers failed and re-queued, trials held too long without a worker
re-queued; this driver's workers released when nothing is left to ask, placed again when a trial
comes back to the queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from autoopt.dispatch.clock import SYSTEM, Clock
from autoopt.dispatch.trials import TrialBook
from autoopt.study import GRACE_S, HEARTBEAT_S, fail_stale, with_retry

if TYPE_CHECKING:
    from autoopt.dispatch.pool import Pool


class Upkeep:
    """The upkeep of one driver's search. ``asked_all``: the study's trials are all asked (by
    any driver), so this driver's workers may go."""

    def __init__(self, study: optuna.Study, book: TrialBook, pool: Pool, *, clock: Clock = SYSTEM) -> None:
        self.study, self.book, self.pool, self.clock = study, book, pool, clock
        self.last_beat = -float("inf")
        self.asked_all = False

    def __call__(self) -> None:
        """The upkeep, when ``HEARTBEAT_S`` passed since the last."""
        now = self.clock.monotonic()
        if now - self.last_beat < HEARTBEAT_S:
            return
        self.last_beat = now
        self.book.beat()
        with_retry(lambda: fail_stale(self.study), what="fail stale trials")
        self.book.requeue_unplaced(GRACE_S)
        if self.asked_all:
            self._release_or_restore()

    def _release_or_restore(self) -> None:
        pending = with_retry(lambda: self.study.get_trials(
            deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)), what="read the study")
        if any(t.state == TrialState.WAITING for t in pending):
            self.asked_all = False
            self.pool.restore()
        elif any(t.number not in self.book for t in pending):
            # Other drivers' trials still run: our idle workers' CPUs are theirs to use (a
            # driver that is done and about to confirm keeps its warm workers).
            self.pool.release()
