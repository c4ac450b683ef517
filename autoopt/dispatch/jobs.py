"""The job factory: what a worker is sent for a trial (``JobFactory.job``) and to warm up with
(``warm_job``): the study's task and settings, the trial's handle (its pruner, and under a
budget the wall-clock deadline by which it must end), and its MLflow run's tags."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoopt.budget import Budget
from autoopt.dispatch.clock import SYSTEM, Clock
from autoopt.dispatch.worker import Job, TrialRef
from autoopt.space import SearchSpace, TrialConfig
from autoopt.study.record import SCREEN, TrialKind, trial_seed
from autoopt.tracking import FAMILY_TAG, KIND_TAG, RUNNING, SEED_TAG, STATE_TAG, STUDY_TAG, TRIAL_TAG, RunRef
from autoopt.training.pruning import RANK_PRUNER, SCREEN_PRUNER

if TYPE_CHECKING:
    from autoopt.spec import StudySpec


@dataclass
class JobFactory:
    """Jobs for the trials of ``study_name`` (``spec``'s task, stored at ``storage_url``, tracked
    at ``tracking``). Under a ``budget``, a trial's deadline is what the search has left once
    the race's reserve is kept (``race_s``: its expected seconds, asked when the job is made)."""

    spec: StudySpec
    study_name: str
    storage_url: str
    tracking: RunRef | None
    space: SearchSpace
    budget: Budget | None = None
    race_s: Callable[[], float] = lambda: 0.0
    clock: Clock = SYSTEM

    def job(self, number: int, trial_id: int, config: TrialConfig, kind: TrialKind) -> Job:
        """The job of trial ``number`` (of ``kind``) training ``config``."""
        spec = self.spec
        seed = trial_seed(spec.seed, number, kind)
        tags = {STUDY_TAG: self.study_name, TRIAL_TAG: number, FAMILY_TAG: config.optimizer,
                KIND_TAG: SCREEN if kind == TrialKind.SCREEN else kind, STATE_TAG: RUNNING, SEED_TAG: seed}
        # The screen is pruned by successive halving (autoopt.training.pruning): cost-aware
        # without a budget; under one, by rank alone, the deadline stopping what the budget
        # cannot afford.
        pruner = (None if kind != TrialKind.SCREEN or spec.pruner == "none" else
                  SCREEN_PRUNER if self.budget is None else RANK_PRUNER)
        # A complete run scores the test split too (once, after its last epoch): it may count as a
        # seed of the confirmation's race (``autoopt.decide.confirm.made_runs``), which reports
        # the test split of every seed; no choice reads a trial's test score.
        return Job(spec.task, spec.placement.data_dir, config, spec.epochs, seed, spec.batch_size,
                   spec.placement.compile, evaluate_test=True, trial=self._ref(trial_id, number, pruner),
                   tracking=self.tracking, run_name=f"trial-{number}", tags=tags,
                   family=self.space.family(config.optimizer))

    def _ref(self, trial_id: int, number: int, pruner: str | None) -> TrialRef:
        spec = self.spec
        # Under a budget the trial must end within the search's share: the worker stops it when
        # its measured seconds per epoch project its end past that (the race keeps its reserve).
        deadline = (self.clock.time() + self.budget.search_left(self.race_s())
                    if self.budget is not None else None)
        return TrialRef(self.storage_url, self.study_name, trial_id, number, pruner or spec.pruner,
                        spec.epochs, spec.pruner_warmup, deadline=deadline)

    def warm(self) -> Job:
        """The job a worker warms up with (``warm_job``)."""
        return warm_job(self.spec, self.storage_url, self.study_name, self.tracking)


def warm_job(spec: StudySpec, storage_url: str, study_name: str, tracking: RunRef | None) -> Job:
    """The job a worker warms up with (``WorkerPool.warm``): the study's task, its study's
    handle and tracking store, a first training step of the space's first family (at its
    published defaults)."""
    space = spec.search_space()
    warm = TrialConfig(spec.optimizers[0], space.default_params(spec.optimizers[0]))
    ref = TrialRef(storage_url, study_name, -1, -1, spec.pruner, spec.epochs, spec.pruner_warmup)
    return Job(spec.task, spec.placement.data_dir, warm, spec.epochs, spec.seed, spec.batch_size,
               spec.placement.compile, tracking=tracking, trial=ref, family=space.family(warm.optimizer))
