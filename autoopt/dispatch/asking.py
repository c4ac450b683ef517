"""A trial for a free worker, from ask to a job ready to send (``TrialAsker.next``): ask under
the study's ask lock (an enqueued trial first), choose the family where the focus gives one,
sample and store the config, check that the budget still affords it, build its job.

The read of the study made under the ask lock (one incremental read: ``StudyView``) counts the
trials against ``--trials`` exactly and serves the sampling too (``trials_snapshot``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from autoopt.dispatch.costs import SearchCosts
from autoopt.dispatch.jobs import JobFactory
from autoopt.dispatch.trials import TrialBook, interrupt_deferred
from autoopt.dispatch.worker import Job
from autoopt.screen.focus import SearchFocus
from autoopt.space import TrialConfig, suggest_config
from autoopt.spec import StudySpec
from autoopt.study import (
    ask_lock,
    build_sampler,
    deferred_writes,
    record_heartbeat,
    storage_of,
    trial_id_of,
    trials_snapshot,
    with_retry,
)
from autoopt.study.record import REASON, TrialKind, kind_of, write_config, write_reason
from autoopt.study.samplers import TrialSeededSampler
from autoopt.study.view import StudyView


@dataclass
class Pending:
    """A trial asked and prepared for a worker (PLACED in the book), about to be sent to it."""

    trial: optuna.trial.Trial
    job: Job


class TrialAsker:
    """Asks ``study`` for trials for this driver's workers (``workers``: how many it has) and
    prepares their jobs (``jobs``); each trial's life is kept by ``book``, its expected cost
    checked against the time budget by ``costs`` (which holds it, if any)."""

    def __init__(self, study: optuna.Study, spec: StudySpec, *, book: TrialBook, view: StudyView,
                 costs: SearchCosts, jobs: JobFactory, workers: Callable[[], int]) -> None:
        self.study, self.spec, self.book, self.view = study, spec, book, view
        self.costs, self.jobs, self.workers = costs, jobs, workers
        self.focus = SearchFocus(study.direction)  # the screen's survivors

    def next(self, worker: int) -> Pending | None:
        """Ask for the next trial for ``worker`` (placed and free) and prepare its job; None when
        the study's trials are all asked or the budget is spent."""
        asked = with_retry(lambda: self.ask(worker), what="ask for a trial")
        if asked is None:
            return None
        trial, trials, unfinished = asked
        kind = kind_of(trial.user_attrs)
        # The search tunes the families the screen found (``autoopt.screen.focus``).
        family = self.focus.family(trials) if kind == TrialKind.SEARCH else None
        # The read of the trials made under the ask lock serves the sampling too.
        with trials_snapshot(self.study, trials, unfinished):
            config = with_retry(lambda: self.prepare(trial, family), what="store a trial's config")
        if self.costs.budget is not None and self.costs.over(config.optimizer, self.workers()):
            # its family, sampled now, is too slow for what is left
            self.book.skip(trial.number, "not started: its expected cost exceeds what is left of the time budget")
            return None
        job = self.jobs.job(trial.number, trial_id_of(self.study, trial.number), config, kind)
        self.book.place(trial.number, job)
        return Pending(trial, job)

    def ask(self, worker: int) -> tuple[optuna.trial.Trial, list[FrozenTrial], list[int]] | None:
        """A new trial (an enqueued one first) for ``worker``, held by the book, and the study's
        trials as read before asking it (and the numbers of those unfinished then), or None when
        the study's trials are all asked or the budget is spent."""
        with ask_lock(self.jobs.storage_url, self.study.study_name):
            trials = self.view.read()  # one incremental read, under the lock: the count is exact
            unfinished = list(self.view.open)
            upcoming = self.view.first_waiting()
            if upcoming is None and self.view.used >= self.spec.trials:
                return None
            if (budget := self.costs.budget) is not None:
                budget.mark_search_start()
                # An enqueued trial (the screen, a retry) holds its family in its fixed params.
                family = (upcoming.system_attrs.get("fixed_params", {}).get("optimizer")
                          if upcoming is not None else None)
                if self.costs.over(family, self.workers()):
                    return None
            with interrupt_deferred():  # from the trial's row to the book, nobody's for no instant
                # Optuna's look for a waiting trial reads this read (its unfinished trials only)
                with trials_snapshot(self.study, trials, unfinished):
                    trial = self.study.ask()
                self.book.ask(trial, worker)
        return trial, trials, unfinished

    def prepare(self, trial: optuna.trial.Trial, family: str | None = None) -> TrialConfig:
        """Sample ``trial``'s config and store it (idempotent: a retry gives the same config).

        Each trial is sampled by a sampler of its own seeded by --seed plus the trial's number
        (unique in the study), made when the trial is asked (``build_sampler``): two drivers
        started together with the same --seed would otherwise propose the same configs, and one
        driver stays reproducible. The study's sampler is set here only when it is not that one
        yet (a study opened with another seed: once per driver); a trial asked before then is
        sampled by the new one all the same. A portfolio trial trains its family at its
        published defaults, without a scheduler or clipping. A search trial trains ``family``
        where the focus gives one, its settings sampled as usual.
        """
        sampler = self.study.sampler
        if not (isinstance(sampler, TrialSeededSampler) and sampler.serves(self.spec.sampler, self.spec.seed)):
            sampler = self.study.sampler = build_sampler(self.spec.sampler, self.spec.seed)
        if family is not None:
            sampler.fix(self.study.study_name, trial.number, {"optimizer": family})
        space = self.jobs.space
        with deferred_writes(self.study, trial):  # its params, config and first heartbeat: one transaction
            # At once: a trial without any heartbeat is only failed after 2 x GRACE_S.
            record_heartbeat(self.study, trial.number)
            config = suggest_config(trial, space)
            if kind_of(trial.user_attrs) == TrialKind.SCREEN:
                config = TrialConfig(config.optimizer, space.default_params(config.optimizer))
            write_config(trial, config.to_dict())
            if trial.user_attrs.get(REASON) and "failed_trial" in storage_of(self.study).get_trial_system_attrs(
                    trial_id_of(self.study, trial.number)):
                write_reason(trial, None)  # inherited from the failed attempt it retries
        return config
