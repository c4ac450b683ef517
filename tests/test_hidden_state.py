"""No hidden module state: a study names its storage wrapper, the caches of a long-lived process
stay bounded (or die with what they serve), and building a ``Job`` leaves Ray's pickler alone."""

from __future__ import annotations

import copy
import gc
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
import torch
from conftest import forget_family

from autoopt.dispatch import Job, WorkerPool
from autoopt.space import TrialConfig, register_optimizer
from autoopt.study import backends, fail_stale, open_storage, open_study, storage_of, trials_snapshot

# --- the study and its wrapper ----------------------------------------------------------------


def test_a_study_names_its_wrapper_and_a_copy_keeps_it(workdir: Path) -> None:
    study = open_study(open_storage("sqlite:///autoopt.db"), "s", direction="minimize")
    wrapper = storage_of(study)
    twin = copy.copy(study)  # no registry to miss it: the link travels with the study
    assert storage_of(twin) is wrapper
    study.tell(study.ask(), 1.0)
    with trials_snapshot(twin):
        assert len(twin.get_trials()) == 1
    with pytest.raises(ValueError, match=r"not opened by autoopt\.study"):
        storage_of(optuna.load_study(study_name="s", storage="sqlite:///autoopt.db"))


def _live_studies() -> int:
    gc.collect()
    return sum(issubclass(type(o), optuna.Study) for o in gc.get_objects())


def test_the_studies_fail_stale_opens_die_with_their_study(workdir: Path) -> None:
    """``fail_stale`` needs the study on the storage as opened (heartbeats): one per study, not
    one per (storage, name) kept for the life of the process."""
    before = _live_studies()
    for i in range(4):
        study = open_study(open_storage(f"sqlite:///s{i}.db"), "s", direction="minimize")
        fail_stale(study)
        fail_stale(study)  # the second call reuses the first one's
        wrapper = weakref.ref(storage_of(study))
        del study
        gc.collect()
        assert wrapper() is None, "a study's wrapper outlives it"
    assert _live_studies() == before


# --- the ask lock's engines -------------------------------------------------------------------


@pytest.fixture()
def lock_engines(monkeypatch: pytest.MonkeyPatch) -> Iterator[OrderedDict[str, Any]]:
    engines: OrderedDict[str, Any] = OrderedDict()
    monkeypatch.setattr(backends, "_LOCK_ENGINES", engines)
    yield engines
    for engine in engines.values():
        engine.dispose()


def test_the_ask_lock_engines_stay_bounded_and_evicted_ones_are_disposed(lock_engines: OrderedDict) -> None:
    bound = getattr(backends, "LOCK_ENGINES_MAX", 8)
    urls = [f"postgresql+psycopg://u@db{i}:5432/optuna" for i in range(bound + 5)]  # created, never connected
    made = {}
    for url in urls:
        engine = backends._lock_engine(url)
        made[url] = (engine, engine.pool)
        assert backends._lock_engine(url) is engine  # cached
        assert len(lock_engines) <= bound
    # The least recently used went, each disposed (its pool replaced); the rest are kept as they were.
    assert list(lock_engines) == urls[-bound:]
    for url in urls[:-bound]:
        engine, pool = made[url]
        assert engine.pool is not pool, f"evicted engine for {url} was not disposed"
    for url in urls[-bound:]:
        engine, pool = made[url]
        assert lock_engines[url] is engine and engine.pool is pool
    # Using one moves it to the front: the next eviction takes another.
    backends._lock_engine(urls[-bound])
    backends._lock_engine("postgresql+psycopg://u@other:5432/optuna")
    assert urls[-bound] in lock_engines and urls[-bound + 1] not in lock_engines


# --- a Job and Ray's pickler ------------------------------------------------------------------


class LocalSGD(torch.optim.SGD):
    """A class from this test module: it must travel to a worker by value."""


@pytest.fixture()
def pickler_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    calls: list[str] = []
    monkeypatch.setattr(ray.cloudpickle, "register_pickle_by_value", lambda module: calls.append(module.__name__))
    register_optimizer("local_sgd", LocalSGD, {"lr": 0.05}, replace=True)
    try:
        yield calls
    finally:
        forget_family("local_sgd")


class _Actor:
    class run:  # shaped like a Ray actor's method
        @staticmethod
        def remote(job: Job) -> object:
            return object()


def test_building_a_job_leaves_rays_pickler_alone_and_shipping_it_registers_once(pickler_calls: list[str]) -> None:
    job = Job("digits", None, TrialConfig("local_sgd", {"lr": 0.05}), 1, 0)
    again = Job("digits", None, TrialConfig("local_sgd", {"lr": 0.01}), 1, 1)
    assert job.family is not None and job.family.optimizer_class is LocalSGD
    assert pickler_calls == [], "building a Job changed Ray's pickler"
    assert job.by_value_modules() == [LocalSGD.__module__]
    assert Job("digits", None, TrialConfig("sgd", {"lr": 0.05}), 1, 0).by_value_modules() == []

    pool = WorkerPool(0, cpus=1, gpus=0)  # no actor: the shipping path only
    pool.warm(job)
    assert pickler_calls == [LocalSGD.__module__]
    pool.workers, pool.load, pool.ready = [_Actor()], [0], [True]
    pool.submit(0, job)
    pool.submit(0, again)
    assert pickler_calls == [LocalSGD.__module__], "one registration per module, however many jobs"
