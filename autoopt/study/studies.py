"""The Optuna study: create or resume it (``open_study``), load it (``load_study``), and count
its trials against ``--trials`` (``budget_used``) so that several drivers, or a resumed one,
stop at exactly the requested total.

Studies opened here sit on a ``SnapshotStorage`` (see ``autoopt.study.snapshot``).
"""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

import autoopt.study.quiet  # noqa: F401  (Optuna quietened first)
from autoopt.base.direction import Direction
from autoopt.errors import UsageError
from autoopt.study.record import SCREEN, WARMSTART  # noqa: F401  (re-exported)
from autoopt.study.samplers import build_sampler
from autoopt.study.snapshot import SnapshotStorage, SnapshotStudy
from autoopt.study.storage import with_retry


def open_study(storage: BaseStorage, name: str, *, direction: Direction, metric: str | None = None,
               sampler: str = "tpe", seed: int = 0, pruner: optuna.pruners.BasePruner | None = None
               ) -> SnapshotStudy:
    """Create the study, or load it when it exists (resume). ``metric`` names its objective
    (what optuna-dashboard shows). The sampler's seed is offset by the trials already there, so
    a resumed study does not replay its first proposals."""
    wrapped = SnapshotStorage(storage)

    def _open() -> SnapshotStudy:
        created = optuna.create_study(storage=wrapped, study_name=name, direction=direction,
                                      load_if_exists=True, pruner=pruner)
        study = SnapshotStudy(name, wrapped, sampler=created.sampler, pruner=created.pruner)
        if study.direction.name.lower() != direction:
            raise UsageError(f"study '{name}' exists with direction {study.direction.name.lower()}, "
                             f"but this task {direction}s its metric; pick another --study name")
        if metric is not None and study.metric_names != [metric]:
            study.set_metric_names([metric])
        return study

    study = with_retry(_open, what="open the study")
    offset = len(study.get_trials(deepcopy=False))
    study.sampler = build_sampler(sampler, seed + offset)
    return study


def load_study(storage: BaseStorage, name: str, *, pruner: optuna.pruners.BasePruner | None = None,
               sampler: optuna.samplers.BaseSampler | None = None) -> SnapshotStudy:
    """Load an existing study (``KeyError`` when there is none), on a snapshot wrapper (as
    ``optuna.load_study`` does, with the study's class)."""
    return SnapshotStudy(name, SnapshotStorage(storage), pruner=pruner, sampler=sampler)


def load_existing_study(storage: BaseStorage, name: str) -> SnapshotStudy | None:
    """The study, or None when there is none."""
    try:
        return load_study(storage, name)
    except KeyError:
        return None


def budget_used(trials: list[FrozenTrial]) -> int:
    """Trials that count against ``--trials``: all of them except failed ones that were
    re-queued (their retry counts instead)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return len(trials) - len(retried & {t.number for t in trials})


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """Trials by state name (complete, pruned, fail, running, waiting)."""
    out = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        out[t.state.name.lower()] += 1
    return out
