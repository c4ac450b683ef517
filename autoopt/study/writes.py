"""A trial's writes of one step in one transaction.

Each of Optuna's writes to an ``RDBStorage`` is a transaction of its own: on PostgreSQL a
connection checked out (and pinged), the trial read to check it is not finished, the write, the
commit. A driver's step makes many: sampling a trial writes each parameter and its config,
telling it five user attributes, its last report and its state. ``SnapshotStorage.deferred``
keeps a step's writes to its trial (``TrialWrites``) and ``flush`` makes them in one transaction
of a few statements: the trial locked and checked, then one insert per table, each row as
RDBStorage's own write stores it (``tests/test_writes.py`` checks the two against each other).
All or nothing: a trial another driver finished meanwhile (it took this one for dead) raises
Optuna's ``UpdateFinishedTrialError`` and nothing of the step is written. Any other storage gets
the writes one by one.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
    json_to_distribution,
)
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func

from autoopt.study.optuna_private import scoped_session


@dataclass
class TrialWrites:
    """What a step wrote to one trial, in order of kind: its params (internal values), user and
    system attributes, intermediate values, then its finished state and values."""

    params: dict[str, tuple[float, BaseDistribution]] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    state: tuple[TrialState, list[float] | None] | None = None
    heartbeat: bool = False  # a heartbeat of the trial's driver, at the database's clock
    read: FrozenTrial | None = None  # the trial as the step first read it, or as its caller knew it

    def __bool__(self) -> bool:
        return bool(self.params or self.user_attrs or self.system_attrs or self.intermediate
                    or self.state is not None or self.heartbeat)

    def finish(self, state: TrialState, values: Sequence[float] | None) -> None:
        if not state.is_finished():
            raise ValueError(f"a deferred state must be a finished one, not {state.name}")
        self.state = (state, None if values is None else [float(v) for v in values])

    def overlay(self, trial: FrozenTrial) -> FrozenTrial:
        """``trial`` as read, with these writes made (a copy)."""
        trial = copy.deepcopy(trial)
        trial.distributions = {**trial.distributions, **{n: d for n, (_, d) in self.params.items()}}
        trial.params = {**trial.params, **{n: d.to_external_repr(v) for n, (v, d) in self.params.items()}}
        trial.user_attrs = {**trial.user_attrs, **self.user_attrs}
        trial.system_attrs = {**trial.system_attrs, **self.system_attrs}
        trial.intermediate_values = {**trial.intermediate_values, **self.intermediate}
        if self.state is not None:
            trial.state, trial.values = self.state[0], self.state[1]
        return trial


def flush(base: BaseStorage, inner: BaseStorage, trial_id: int, writes: TrialWrites,
          known: dict[tuple[int, str], BaseDistribution]) -> None:
    """Make ``writes`` to ``trial_id``: in one transaction of ``base`` where it is an
    ``RDBStorage`` (SQLite or PostgreSQL), else one by one through ``inner`` (the storage
    Optuna's calls go to). ``known`` holds each parameter's distribution by (study id, name), as
    first written by this process: the study's previous one is read once per name, as Optuna's
    cached storage does, and a new one checked against it."""
    if not writes:
        return
    if not isinstance(base, RDBStorage) or base.engine.name not in ("sqlite", "postgresql"):
        _one_by_one(inner, trial_id, writes)
        return
    from autoopt.study.optuna_private import models
    with _transaction(base) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        base.check_trial_is_updatable(trial_id, cast(TrialState, trial.state))
        study_id = cast(int, trial.study_id)
        for name, (_, dist) in writes.params.items():
            previous = _known(session, models, study_id, name, known)
            check_distribution_compatibility(previous or dist, dist)
        # One statement per table, each row as RDBStorage's own write would store it: a param
        # set already is kept (Optuna ignores the duplicate), anything else is replaced.
        upsert = _upsert(base.engine.name)
        upsert(session, models.TrialParamModel, ("trial_id", "param_name"), [
            {"trial_id": trial_id, "param_name": name, "param_value": internal,
             "distribution_json": distribution_to_json(dist)}
            for name, (internal, dist) in writes.params.items()], keep=True)
        for model, attrs in ((models.TrialUserAttributeModel, writes.user_attrs),
                             (models.TrialSystemAttributeModel, writes.system_attrs)):
            upsert(session, model, ("trial_id", "key"), [
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()])
        stored = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr
        upsert(session, models.TrialIntermediateValueModel, ("trial_id", "step"), [
            dict(zip(("trial_id", "step", "intermediate_value", "intermediate_value_type"),
                     (trial_id, step, *stored(value)), strict=True))
            for step, value in writes.intermediate.items()])
        if writes.heartbeat:  # as RDBStorage.record_heartbeat does
            upsert(session, models.TrialHeartbeatModel, ("trial_id",),
                   [{"trial_id": trial_id, "heartbeat": func.now()}])
        if writes.state is not None:  # as RDBStorage.set_trial_state_values does
            state, values = writes.state
            upsert(session, models.TrialValueModel, ("trial_id", "objective"), [
                dict(zip(("trial_id", "objective", "value", "value_type"),
                         (trial_id, objective, *models.TrialValueModel.value_to_stored_repr(v)), strict=True))
                for objective, v in enumerate(values or ())])
            trial.state = state
            trial.datetime_complete = datetime.datetime.now()
    for name, (_, dist) in writes.params.items():
        known.setdefault((study_id, name), dist)


def create_trial(base: RDBStorage, study_id: int, since: int = 0) -> FrozenTrial:
    """A new RUNNING trial of study ``study_id``, made as ``RDBStorage._create_new_trial`` makes
    one (under a lock of the study's row), but numbered in the insert itself, after the newest
    of the study's trials from id ``since`` on (the newest one the caller has read), not by
    counting every trial of the study in a statement of its own: under that lock each trial was
    numbered so, and the numbers follow the ids from 0. With none from ``since`` on, the trials
    are counted. The range is on the primary key alone (the study is tested per row), so the
    database reads the few trials made since, however many the study holds."""
    from sqlalchemy import case, insert, select

    from autoopt.study.optuna_private import models

    trials = models.TrialModel.__table__
    newest = select(func.max(case((trials.c.study_id == study_id, trials.c.number)))).where(
        trials.c.trial_id >= since).scalar_subquery()
    counted = select(func.count(trials.c.trial_id)).where(trials.c.study_id == study_id).scalar_subquery()
    started = datetime.datetime.now()
    with _transaction(base) as session:
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        trial_id, number = session.execute(insert(trials).values(
            study_id=study_id, number=func.coalesce(newest + 1, counted), state=TrialState.RUNNING,
            datetime_start=started).returning(trials.c.trial_id, trials.c.number)).one()
    return FrozenTrial(number=number, state=TrialState.RUNNING, value=None, values=None, datetime_start=started,
                       datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
                       intermediate_values={}, trial_id=trial_id)


@contextlib.contextmanager
def _transaction(base: RDBStorage) -> Iterator[Any]:
    """Optuna's session scope (``optuna_private.scoped_session``), rolled back on any exception
    too: a Ctrl-C in the middle of the writes must not leave the session's transaction open (on
    SQLite, holding the database's write lock against the interrupt's own writes)."""
    with scoped_session(base) as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise


def _known(session: Any, models: Any, study_id: int, name: str,
           known: dict[tuple[int, str], BaseDistribution]) -> BaseDistribution | None:
    """Parameter ``name``'s distribution in the study: as this process first wrote or read it,
    else as a trial of the study stored it (read once), else None (a new parameter)."""
    if (study_id, name) not in known:
        row = (session.query(models.TrialParamModel.distribution_json).join(models.TrialModel)
               .filter(models.TrialModel.study_id == study_id, models.TrialParamModel.param_name == name).first())
        if row is None:
            return None
        known[study_id, name] = json_to_distribution(row[0])
    return known[study_id, name]


def _upsert(dialect: str) -> Any:
    """``upsert(session, model, key, rows, keep=False)``: insert ``rows`` in one statement; a
    row whose ``key`` columns exist already is kept (``keep``) or has its other columns replaced."""
    from sqlalchemy.dialects import postgresql, sqlite

    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert

    def upsert(session: Any, model: Any, key: tuple[str, ...], rows: list[dict[str, Any]], keep: bool = False) -> None:
        if not rows:
            return
        stmt = insert(model).values(rows)
        if keep:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(key))
        else:
            stmt = stmt.on_conflict_do_update(index_elements=list(key), set_={
                column: stmt.excluded[column] for column in rows[0] if column not in key})
        session.execute(stmt)

    return upsert


def _one_by_one(storage: BaseStorage, trial_id: int, writes: TrialWrites) -> None:
    if writes.heartbeat and isinstance(storage, RDBStorage):
        storage.record_heartbeat(trial_id)
    for name, (internal, dist) in writes.params.items():
        storage.set_trial_param(trial_id, name, internal, dist)
    for key, value in writes.user_attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)
    for key, value in writes.system_attrs.items():
        storage.set_trial_system_attr(trial_id, key, value)
    for step, value in writes.intermediate.items():
        storage.set_trial_intermediate_value(trial_id, step, value)
    if writes.state is not None:
        storage.set_trial_state_values(trial_id, writes.state[0], writes.state[1])
