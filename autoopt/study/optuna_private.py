"""Optuna's private names, in one place: the only module of ``autoopt`` that reaches them.

autoopt's reads and writes of a study (``snapshot``, ``reads``, ``writes``, ``samplers``) stand
on a few of Optuna's internals that its public API does not offer: a trial's storage id, the
trial a ``Trial`` handle holds, ``RDBStorage``'s read of the changed trials and its session
scope, the classes of its tables, and ``Study``'s read of its trials through the samplers'
cache. Each is a small function here that reaches it as Optuna does, nothing more (no copy, no
extra read). Each holds in Optuna 4.9 and 5.0, the range pyproject.toml allows;
``tests/test_optuna_private.py`` runs each on a real SQLite study, on the lowest and the newest
Optuna (``.ci/lowest`` runs it too), so that a release that moves one fails there first, by its
name. That test also checks that no other module of ``autoopt`` touches an Optuna private name.

One contract cannot live here: a method that Optuna calls by its private name must be defined
under that name on the object Optuna calls. ``OVERRIDES`` names each such method, and the test
checks that Optuna still calls it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, Trial

import autoopt.study.quiet  # noqa: F401  (Optuna quietened first)

if TYPE_CHECKING:
    from optuna.storages._rdb import models as models  # at run time, ``__getattr__`` below
    from sqlalchemy.orm import Session

# The methods autoopt defines under a private name that Optuna calls, by where they are defined:
# the study as TPE reads it (its window) answers the samplers' ``study._get_trials(...)``, in
# Optuna 4.9 and 5.0 with the arguments ``deepcopy``, ``states`` and ``use_cache``.
OVERRIDES = {"autoopt.study.samplers._WindowedStudy._get_trials": "optuna.Study._get_trials"}


def id_of(trial: FrozenTrial | Trial) -> int:
    """The storage id of ``trial`` (``_trial_id``, on a ``FrozenTrial`` and on a ``Trial``
    handle alike): Optuna's public API gives a trial's number, not its id, and the snapshot
    reads a study by id (the trials past the newest finished one, and those unfinished) and
    keeps a step's writes by it."""
    return trial._trial_id


def frozen_of(trial: Trial) -> FrozenTrial:
    """The trial as the handle ``trial`` knows it (``Trial._cached_frozen_trial``: its params
    and reports as made through it), itself, not a copy. ``snapshot.deferred_writes`` copies it
    before a step's writes, to give it back when they fail (``set_frozen``)."""
    return trial._cached_frozen_trial


def set_frozen(trial: Trial, frozen: FrozenTrial) -> None:
    """The handle ``trial`` knows its trial as ``frozen`` again (``Trial._cached_frozen_trial``):
    a handle would not write again what it holds, so a step whose writes failed makes it forget
    them, and a retry writes them."""
    trial._cached_frozen_trial = frozen


def rdb_trials(base: RDBStorage, study_id: int, *, included: set[int], after: int) -> list[FrozenTrial]:
    """The trials of study ``study_id`` whose id is above ``after`` or in ``included``, every
    state, by id (``RDBStorage._get_trials``, the incremental read of Optuna's cached storage):
    the snapshot's read of the changed trials on a database other than SQLite and PostgreSQL,
    where ``reads.read_trials`` reads them in one statement."""
    return base._get_trials(study_id, states=None, included_trial_ids=included, trial_id_greater_than=after)


def study_trials(study: optuna.Study, *, use_cache: bool) -> list[FrozenTrial]:
    """``study``'s trials, not copied, every state (``Study._get_trials``): with ``use_cache``,
    from the cache Optuna keeps per thread from a trial's ask to its tell, which ``get_trials``
    does not read.
    The study as TPE reads it (``samplers._WindowedStudy``) serves its window from them."""
    return study._get_trials(deepcopy=False, use_cache=use_cache)


def scoped_session(base: RDBStorage) -> AbstractContextManager[Session]:
    """A session of ``base`` as Optuna's own writes use one (``_create_scoped_session``):
    committed as the block ends, rolled back on an exception (SQLAlchemy's, an integrity error
    aside, raised as Optuna's ``StorageInternalError``), closed either way. ``writes`` makes a
    step's writes and creates trials in it."""
    return _create_scoped_session(base.scoped_session)


def __getattr__(name: str) -> Any:
    """``models``: ``optuna.storages._rdb.models``, the SQLAlchemy classes of Optuna's tables
    (``StudyModel``, ``TrialModel``, one per kind of attribute, ``TrialHeartbeatModel``) with
    their conversions of values to and from the stored columns. ``writes`` inserts through them
    and ``reads`` converts what it read by them. Imported on first use, as Optuna does (the
    import declares the ORM's classes, which a study opened on another storage never needs)."""
    if name == "models":
        from optuna.storages._rdb import models

        return models
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
