"""The trials snapshot: a ``BaseStorage`` wrapper that serves the study's trials from one read.

One decision reads the trials many times: TPE with groups once per parameter group of the trial
it samples, the pruner's guard and the median pruner once each. Each read is a round trip (six
queries) to the database. ``SnapshotStorage`` implements Optuna's ``BaseStorage`` by delegating
every call to the storage it wraps (as Optuna's own cached storage does), except that inside
``trials_snapshot`` it serves ``get_all_trials`` from one read: one round trip per decision.
Writes go through, except inside ``deferred(trial_id)``: a step's writes to its trial are kept
and made in one transaction at the block's end (``autoopt.study.writes``), reads of that trial
seeing them.

Studies opened by ``autoopt.study`` (``open_study``, ``load_study``) are ``SnapshotStudy``s: they
sit on such a wrapper and name it (``snapshot_storage``); ``storage_of(study)`` and
``trial_id_of(study, number)`` give the storage and trial ids with public calls only.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Collection, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, RDBStorage, get_storage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

import autoopt.study.quiet  # noqa: F401  (Optuna quietened first)
from autoopt.study.log import TrialLog
from autoopt.study.optuna_private import frozen_of, id_of, rdb_trials, set_frozen
from autoopt.study.pgstats import refresh
from autoopt.study.reads import read_trials
from autoopt.study.window import FINISHED
from autoopt.study.writes import TrialWrites, create_trial, flush


@dataclass(frozen=True)
class _Read:
    """One read of a study's trials (by number) and, where known, the numbers of those unfinished
    in it: a read of the waiting or running trials alone (Optuna's ask looks for a waiting one)
    visits those, not the whole study."""

    trials: list[FrozenTrial]
    unfinished: list[int] | None

    def of(self, states: Container[TrialState]) -> list[FrozenTrial]:
        trials = self.trials
        if self.unfinished is not None and not any(s in states for s in FINISHED):
            numbered = all(n < len(trials) and trials[n].number == n for n in self.unfinished)
            if numbered:  # as in a study Optuna keeps: a trial's number is its position
                return [t for n in self.unfinished if (t := trials[n]).state in states]
        return [t for t in trials if t.state in states]



_NO_ID = 2**31 - 1  # above every trial id: a read of the ids named alone


class SnapshotStorage(BaseStorage):
    """Delegates to ``inner`` (an ``RDBStorage``, wrapped in Optuna's own trial cache);
    ``get_all_trials`` is served from a snapshot while one is taken (``snapshot``)."""

    def __init__(self, base: BaseStorage) -> None:
        self.base = base  # the storage as opened (RDBStorage): heartbeats, its engine
        self.inner = get_storage(base)
        self._cache: dict[int, _Read] | None = None
        self._ids: dict[tuple[int, int], int] = {}
        self._ids_by_name: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pending: dict[int, TrialWrites] = {}  # the writes kept by ``deferred``, by trial id
        self._known: dict[tuple[int, str], BaseDistribution] = {}  # (study id, param): as first written here
        self._created: dict[int, FrozenTrial] = {}  # the trial this process created last, until read
        self._read: dict[int, TrialLog] = {}  # each study's trials as read so far (``_all_trials``)
        self.slim = False  # the logs keep finished trials slim (``TrialLog``): a driver's storage
        self._newest: dict[int, int] = {}  # each study's highest trial id read or created here

    @contextlib.contextmanager
    def deferred(self, trial_id: int, known: FrozenTrial | None = None) -> Iterator[None]:
        """Within the block, the writes to trial ``trial_id`` are kept, then made in one
        transaction as it ends (``flush``); nothing of them when it raises. Reads of the trial
        see them, on the trial as first read in the block, or as ``known`` (the caller's copy,
        which spares that read: the flush checks the trial is still unfinished). One thread's
        block per trial (the driver's step that holds it); nested blocks write with the outer one."""
        if trial_id in self._pending:
            yield
            return
        writes = self._pending[trial_id] = TrialWrites(read=known)
        try:
            yield
        finally:
            self._pending.pop(trial_id, None)
        flush(self.base, self.inner, trial_id, writes, self._known)

    def record_heartbeat(self, trial_id: int) -> None:
        """A heartbeat of ``trial_id``'s driver (kept for the flush inside ``deferred``)."""
        if (writes := self._pending.get(trial_id)) is not None:
            writes.heartbeat = True
        elif isinstance(self.base, RDBStorage):
            self.base.record_heartbeat(trial_id)

    @contextlib.contextmanager
    def snapshot(self, study_id: int, trials: list[FrozenTrial] | None = None,
                 unfinished: Collection[int] | None = None) -> Iterator[None]:
        """Within the block, trials are read once (or taken from ``trials``, a read made just
        before, whose unfinished trials' numbers are ``unfinished`` where the caller knows them).
        Nested blocks share the outer snapshot."""
        with self._lock:
            if self._cache is not None:
                outer = True
            else:
                outer, self._cache = False, {}
                if trials is not None:
                    self._cache[study_id] = _Read(trials, None if unfinished is None else sorted(unfinished))
        try:
            yield
        finally:
            if not outer:
                self._cache = None

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        cache = self._cache
        if cache is None:
            read = self._all_trials(study_id)
        else:
            if study_id not in cache:
                cache[study_id] = self._all_trials(study_id)
            read = cache[study_id]
        trials = read.trials if states is None else read.of(states)
        return copy.deepcopy(trials) if deepcopy else trials

    def _all_trials(self, study_id: int) -> _Read:
        """The study's trials, by number (a new list): only those that changed since the last
        read are read (the unfinished ones and the new ones), as Optuna's cached storage does,
        but kept in number order as they come: no sort of every trial per read."""
        if not isinstance(self.base, RDBStorage):
            return _Read(self.inner.get_all_trials(study_id, deepcopy=False), None)
        known = self._read.setdefault(study_id, TrialLog(slim=self.slim))
        with known.lock:
            if known.statistics.due(len(known.trials)):
                refresh(self.base.engine)  # PostgreSQL's alone
            if self.base.engine.name in ("sqlite", "postgresql"):  # one statement (``read_trials``)
                known.merge(read_trials(self.base, study_id, known.last_finished, known.unfinished))
            else:
                known.merge(rdb_trials(self.base, study_id, included=set(known.unfinished),
                                       after=known.last_finished))
            if known.trials:
                self._newest[study_id] = max(self._newest.get(study_id, 0), id_of(known.trials[-1]))
            return _Read(list(known.trials), sorted(known.unfinished.values()))

    def keep_slim(self) -> None:
        """The logs keep finished trials slim from their next read on (``slim_log``)."""
        self.slim = True
        for log in self._read.values():
            with log.lock:
                log.slim = True

    def full(self, study_id: int, ids: Collection[int]) -> list[FrozenTrial]:
        """The trials of ``ids`` as stored, whole, by id; read now and kept nowhere (the log keeps
        a finished trial slim)."""
        if not ids:
            return []
        if not isinstance(self.base, RDBStorage):
            return sorted((self.inner.get_trial(i) for i in ids), key=id_of)
        if self.base.engine.name in ("sqlite", "postgresql"):
            return read_trials(self.base, study_id, _NO_ID, ids)
        return rdb_trials(self.base, study_id, included=set(ids), after=_NO_ID)

    def trial_id(self, study_id: int, number: int) -> int:
        """The storage id of trial ``number`` (cached: ids never change)."""
        key = (study_id, number)
        if key not in self._ids:
            self._ids[key] = self.inner.get_trial_id_from_study_id_trial_number(study_id, number)
        return self._ids[key]

    def __getattr__(self, name: str) -> Any:
        # What only the wrapped storage has (RDBStorage's engine, record_heartbeat, ...).
        if name in ("base", "inner"):
            raise AttributeError(name)
        return getattr(self.base, name)

    # --- BaseStorage, delegated -----------------------------------------------------------

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self.inner.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._ids_by_name = {k: v for k, v in self._ids_by_name.items() if v != study_id}
        self._read.pop(study_id, None)
        self._newest.pop(study_id, None)
        self.inner.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.inner.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.inner.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        if study_name not in self._ids_by_name:  # a deleted study's name is never reused by autoopt
            self._ids_by_name[study_name] = self.inner.get_study_id_from_name(study_name)
        return self._ids_by_name[study_name]

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.inner.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self.inner.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.inner.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.inner.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[Any]:
        return self.inner.get_all_studies()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is not None or not isinstance(self.base, RDBStorage):
            return self.inner.create_new_trial(study_id, template_trial)
        # A trial asked for: Optuna's ``Trial`` reads it at once. It is served as created, which
        # spares that read (a round trip of six queries); it is numbered after the newest trial
        # read here, not by counting the study's trials (``create_trial``).
        created = create_trial(self.base, study_id, self._newest.get(study_id, 0))
        created_id = id_of(created)
        self._newest[study_id] = max(self._newest.get(study_id, 0), created_id)
        self._created = {created_id: created}
        self._ids[(study_id, created.number)] = created_id
        return created_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        if (writes := self._pending.get(trial_id)) is not None:
            writes.params[param_name] = (param_value_internal, distribution)
            return
        # A write of its own, as a step's (Optuna's cached storage knows only the trials it read).
        flush(self.base, self.inner, trial_id, TrialWrites(params={param_name: (param_value_internal, distribution)}),
              self._known)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.trial_id(study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self.inner.get_trial_number_from_id(trial_id)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        if (writes := self._pending.get(trial_id)) is not None and state.is_finished():
            writes.finish(state, values)  # a trial finished meanwhile raises at the flush
            return True
        return self.inner.set_trial_state_values(trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        if (writes := self._pending.get(trial_id)) is not None:
            writes.intermediate[step] = intermediate_value
            return
        self.inner.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if (writes := self._pending.get(trial_id)) is not None:
            writes.user_attrs[key] = value
            return
        self.inner.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if (writes := self._pending.get(trial_id)) is not None:
            writes.system_attrs[key] = value
            return
        self.inner.set_trial_system_attr(trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        created = self._created.pop(trial_id, None)
        writes = self._pending.get(trial_id)
        if writes is None:
            return created if created is not None else self.inner.get_trial(trial_id)
        if writes.read is None:  # a step reads its trial once (Optuna's tell reads it twice)
            writes.read = created if created is not None else self.inner.get_trial(trial_id)
        return writes.overlay(writes.read)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        writes = self._pending.get(trial_id)
        return {**self.inner.get_trial_system_attrs(trial_id), **(writes.system_attrs if writes else {})}

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        writes = self._pending.get(trial_id)
        return {**self.inner.get_trial_user_attrs(trial_id), **(writes.user_attrs if writes else {})}

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        writes = self._pending.get(trial_id)
        if writes and param_name in writes.params:
            return writes.params[param_name][0]
        return self.inner.get_trial_param(trial_id, param_name)

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self.inner.check_trial_is_updatable(trial_id, trial_state)

    def remove_session(self) -> None:
        self.inner.remove_session()


class SnapshotStudy(optuna.Study):
    """An ``optuna.Study`` on a ``SnapshotStorage``, which it names (``snapshot_storage``):
    ``optuna.Study`` keeps its storage private. ``open_study`` and ``load_study`` return one."""

    def __init__(self, study_name: str, storage: SnapshotStorage,
                 sampler: optuna.samplers.BaseSampler | None = None,
                 pruner: optuna.pruners.BasePruner | None = None) -> None:
        super().__init__(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        self.snapshot_storage = storage
        self._autoopt_on_base: optuna.Study | None = None

    def on_base(self) -> optuna.Study:
        """The same study on the storage as opened (``snapshot_storage.base``, with Optuna's
        heartbeats, which the wrapper does not carry); loaded once, it lives as long as this study."""
        if self._autoopt_on_base is None:
            self._autoopt_on_base = optuna.load_study(study_name=self.study_name, storage=self.snapshot_storage.base)
        return self._autoopt_on_base


def snapshot_study(study: optuna.Study) -> SnapshotStudy:
    """``study`` as a ``SnapshotStudy``; a study not opened by ``autoopt.study`` is a ``ValueError``."""
    if not isinstance(study, SnapshotStudy):
        raise ValueError(f"study {study.study_name!r} was not opened by autoopt.study "
                         "(open_study or load_study)")
    return study


def storage_of(study: optuna.Study) -> SnapshotStorage:
    """The storage of a study opened by ``autoopt.study``."""
    return snapshot_study(study).snapshot_storage


def study_id_of(study: optuna.Study) -> int:
    return storage_of(study).get_study_id_from_name(study.study_name)


def trial_id_of(study: optuna.Study, number: int) -> int:
    """The storage id of trial ``number`` of a study opened by ``autoopt.study``."""
    storage = storage_of(study)
    return storage.trial_id(study_id_of(study), number)


@contextlib.contextmanager
def trials_snapshot(study: optuna.Study, trials: list[FrozenTrial] | None = None,
                    unfinished: Collection[int] | None = None) -> Iterator[None]:
    """Within the block, the study's trials are read from the storage once, then served from
    that snapshot (or ``trials``, a read made just before, whose unfinished trials have the
    numbers ``unfinished`` where known). A study not opened by ``autoopt.study`` reads as usual."""
    if not isinstance(study, SnapshotStudy):
        yield
        return
    with study.snapshot_storage.snapshot(study_id_of(study), trials, unfinished):
        yield


def slim_log(study: optuna.Study) -> None:
    """From now on, ``study``'s log keeps its finished trials slim (``TrialLog``): the driver's
    memory no longer grows with the study. Its readers of whole finished trials read them with
    ``full_trials``. A study not opened by ``autoopt.study`` is left as it is."""
    if isinstance(study, SnapshotStudy):
        study.snapshot_storage.keep_slim()


def full_trials(study: optuna.Study, trials: Iterable[FrozenTrial] | None = None, *,
                chunk: int = 256) -> Iterator[FrozenTrial]:
    """``trials`` (the study's, as ``get_trials`` gives them, by default) whole, in their order:
    where the log keeps finished trials slim (``slim_log``), read again from the storage,
    ``chunk`` at a time, so that a pass over the study holds no more than that many whole trials."""
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    if not isinstance(study, SnapshotStudy) or not study.snapshot_storage.slim:
        yield from trials
        return
    storage, sid = study.snapshot_storage, study_id_of(study)
    batch: list[FrozenTrial] = []
    for t in trials:
        batch.append(t)
        if len(batch) >= chunk:
            yield from _whole(storage, sid, batch)
            batch = []
    yield from _whole(storage, sid, batch)


def _whole(storage: SnapshotStorage, study_id: int, batch: list[FrozenTrial]) -> list[FrozenTrial]:
    """``batch`` whole, in its order: the finished trials read again, the unfinished ones as they are."""
    read = {id_of(t): t for t in storage.full(study_id, [id_of(t) for t in batch if t.state.is_finished()])}
    return [read.get(id_of(t), t) for t in batch]


@contextlib.contextmanager
def deferred_writes(study: optuna.Study, trial: optuna.trial.Trial, *, read: bool = False) -> Iterator[None]:
    """Within the block, the writes to ``trial`` are made in one transaction as it ends
    (``SnapshotStorage.deferred``), on the trial as its handle knows it; with ``read``, as read
    again (another process wrote to it: a worker its reports). When the block or its transaction
    fails, the handle forgets what the block wrote through it (Optuna's ``Trial`` keeps its
    params and reports in a cache of its own, and would not write them again on a retry). A
    study not opened by ``autoopt.study`` writes as usual."""
    if not isinstance(study, SnapshotStudy):
        yield
        return
    before = copy.deepcopy(frozen_of(trial))
    try:
        with study.snapshot_storage.deferred(id_of(trial), None if read else copy.deepcopy(before)):
            yield
    except BaseException:
        set_frozen(trial, before)
        raise
