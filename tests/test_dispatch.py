"""The dispatch package: typed job results, and no worker idle while a job waits (the next job
waits in the driver, not on a busy worker's queue), on a real local Ray."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from conftest import forget_family

from autoopt.dispatch import Job, JobResult, JobState, SearchLoop, SearchProgress, WorkerPool, run_jobs
from autoopt.dispatch.session import _token_auth_for
from autoopt.space import TrialConfig, register_optimizer
from autoopt.spec import load_spec
from autoopt.study import open_storage, open_study


def test_job_result_times_and_failures() -> None:
    history = [{"epoch": 1, "val_loss": 0.5, "epoch_s": 1.0}, {"epoch": 2, "val_loss": 0.3, "epoch_s": 3.0},
               {"epoch": 3, "val_loss": 0.2, "epoch_s": 2.0}]
    r = JobResult(JobState.COMPLETE, 0.2, history, {}, train_s=6.0)
    assert r.s_per_epoch == 2.0
    assert r.time_to(0.3, "val_loss", "minimize") == 4.0
    assert r.time_to(0.1, "val_loss", "minimize") is None
    assert r.time_to(0.5, "val_loss", "maximize") == 1.0
    assert JobResult(JobState.FAILED, None).s_per_epoch is None
    try:
        raise RuntimeError("cannot reach postgresql://me:secret@db:5432/x")
    except RuntimeError as exc:
        failed = JobResult.from_exception(exc)
    assert failed.state == JobState.FAILED and failed.value is None
    assert failed.reason.startswith("RuntimeError: ") and "secret" not in failed.reason
    assert "secret" not in failed.traceback and "Traceback" in failed.traceback


def test_the_private_ray_token_helper_is_where_autoopt_expects_it() -> None:
    """autoopt's one private Ray name (``session._token_auth_for``): fails loudly when it moves."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    assert callable(maybe_enable_token_auth_if_token_available) and callable(_token_auth_for)


def job(epochs: int, seed: int, optimizer: str = "sgd") -> Job:
    return Job("digits", None, TrialConfig(optimizer, {"lr": 0.05, "momentum": 0.9} if optimizer == "sgd"
                                           else {"lr": 0.05}), epochs, seed)


class GatedSGD(torch.optim.SGD):
    """SGD whose every step waits until the file ``gate`` exists: a job that cannot end before
    the test opens the gate, on a fast machine or a loaded one. ``wait_s`` only guards against a
    hang (a pool that queued the job the gate waits for behind this one); a step that waited
    that long leaves ``<gate>.timed-out``. Both travel with the class to the workers."""

    gate = ""
    wait_s = 240.0

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        deadline = time.monotonic() + self.wait_s
        timed_out = Path(f"{self.gate}.timed-out")
        while not os.path.exists(self.gate) and not timed_out.exists():
            if time.monotonic() > deadline:
                timed_out.touch()  # once: the steps after it do not wait
            time.sleep(0.02)
        return super().step(closure)


@pytest.fixture()
def gated(tmp_path: Path) -> Iterator[Path]:
    """The family ``gated_sgd`` (GatedSGD), registered for this test only, and its gate (closed)."""
    gate = tmp_path / "gate"
    GatedSGD.gate = str(gate)
    register_optimizer("gated_sgd", GatedSGD, {"lr": 0.05}, replace=True)
    try:
        yield gate
    finally:
        forget_family("gated_sgd")  # later tests see the built-in families alone
    assert not Path(f"{gate}.timed-out").exists(), "the gated job waited for its gate until wait_s"


Event = tuple[str, int, int]  # ("start" | "end", worker index, job)


def record_events(pool: WorkerPool, job_of: Any, on_queued: Any = None) -> list[Event]:
    """Every job the driver hands to a worker (``submit``) and every job it sees end (``collect``),
    in the order it does them: the order of the driver's own events, no clock involved.
    ``on_queued()`` runs when a job is handed to a worker still busy with another."""
    events: list[Event] = []
    busy: set[int] = set()
    submit, collect = pool.submit, pool.collect

    def recording_submit(index: int, job: Job, trial: Any = None) -> Any:
        events.append(("start", index, job_of(job, trial)))
        if index in busy and on_queued is not None:
            on_queued()
        busy.add(index)
        return submit(index, job, trial)

    def recording_collect(inflight: dict, timeout_s: float | None = None) -> Any:
        done = collect(inflight, timeout_s)
        for d in done:
            events.append(("end", d.item.worker, job_of(d.item.job, d.item.trial)))
            busy.discard(d.item.worker)
        return done

    pool.submit, pool.collect = recording_submit, recording_collect  # type: ignore[method-assign]
    return events


def idle_while_waiting(events: list[Event], workers: int) -> list[str]:
    """What the pool promises, checked on the order of the driver's events (all jobs queued
    before the first start): every worker gets a job before any job ends; a worker gets a job
    only when it is free (none waits on a busy worker's queue); and a worker that frees while a
    job still waits to start gets one before the driver sees any other job end."""
    out = []
    first_end = next((i for i, e in enumerate(events) if e[0] == "end"), len(events))
    started_first = {w for kind, w, _ in events[:first_end] if kind == "start"}
    if len(started_first) != workers:
        out.append(f"only workers {sorted(started_first)} of {workers} got a job before the first ended")
    running: dict[int, int | None] = {}
    for i, (kind, worker, what) in enumerate(events):
        if kind == "start":
            if running.get(worker) is not None:
                out.append(f"job {what} queued on worker {worker}, busy with job {running[worker]}")
            running[worker] = what
            continue
        running[worker] = None
        later = events[i + 1:]
        if not any(k == "start" for k, _, _ in later):
            continue  # no job waits
        after = next((e for e in later if e[0] == "end" or e[1] == worker), None)
        if after is None or after[0] == "end":
            out.append(f"worker {worker} idle after job {what} while a job waited, until {after}")
    return out


@pytest.mark.slow
def test_no_worker_is_idle_while_a_job_waits(local_ray: None, gated: Path) -> None:
    """A slow job (held until the eight fast ones are done) and eight fast ones: the fast ones
    all run on the other worker, one after the other, and no worker idles while one waits."""
    pool = WorkerPool(2, cpus=1, gpus=0)
    try:
        pool.warm(job(1, 0))
        deadline = time.monotonic() + 180
        while not all(pool.ready) and time.monotonic() < deadline:
            pool.poll(1.0)
        assert all(pool.ready)
        slow, fast = job(1, 0, "gated_sgd"), [job(1, s) for s in range(1, 9)]
        results: list[JobResult] = []
        fast_done: list[int] = []

        # A pool that queued a fast job behind the held one would wait for the gate: it opens at
        # once then, and the order of events fails the test below.
        events = record_events(pool, lambda j, _trial: j.seed, on_queued=gated.touch)

        def on_result(done: Job, result: JobResult) -> None:
            results.append(result)
            if done.seed != 0:
                fast_done.append(done.seed)
            if len(fast_done) == len(fast):
                gated.touch()  # the fast ones are done: the slow one may end

        run_jobs(pool, [slow, *fast], on_result)
        assert [r.state for r in results].count(JobState.COMPLETE) == 9
        assert idle_while_waiting(events, workers=2) == [], events
        # The slow job ended last; every fast job ran on the other worker, while it was held.
        slow_worker = next(w for kind, w, j in events if kind == "start" and j == 0)
        assert events[-1] == ("end", slow_worker, 0), events
        assert {w for kind, w, j in events if kind == "start" and j != 0} == {1 - slow_worker}, events
    finally:
        pool.shutdown()


class SlowFirst:
    """A search policy for the test: one slow trial (gated) enqueued first, then fast ones
    (Adam), all before the first ask."""

    def start(self, study: optuna.Study, storage_url: str, trials: int) -> str | None:
        study.enqueue_trial({"optimizer": "gated_sgd", "scheduler": "none", "grad_clip": False})
        for _ in range(trials - 1):
            study.enqueue_trial({"optimizer": "adam", "scheduler": "none", "grad_clip": False})
        return None


@pytest.mark.slow
def test_no_worker_is_idle_while_a_trial_waits_in_a_search(local_ray: None, tmp_path: Path, gated: Path) -> None:
    # adam first: the workers warm up with the space's first family, which must not be held.
    spec = load_spec("digits", trials=6, epochs=2, optimizers="adam,gated_sgd", pruner="none",
                     concurrency=2, storage=f"sqlite:///{tmp_path / 's.db'}")
    study = open_study(open_storage(spec.placement.storage), "idle", direction="maximize")
    pool = WorkerPool(2, cpus=1, gpus=0)
    events = record_events(pool, lambda _job, trial: trial.number, on_queued=gated.touch)

    def on_progress(progress: SearchProgress) -> None:
        if progress.finished_here >= 5:  # the five fast trials are told: the slow one may end
            gated.touch()

    try:
        loop = SearchLoop(study, spec=spec, storage_url=spec.placement.storage, tracking=None, pool=pool,
                          policy=SlowFirst(), on_progress=on_progress)
        told: list[int] = []
        tell = loop.book.tell

        def recording_tell(number: int, result: JobResult) -> bool:
            told.append(number)
            return tell(number, result)

        loop.book.tell = recording_tell  # type: ignore[method-assign]
        progress = loop.run()
    finally:
        pool.shutdown()
    assert progress.complete == 6
    trials = {t.number: t for t in study.trials}
    slow = next(n for n, t in trials.items() if t.params["optimizer"] == "gated_sgd")
    # All six were queued (enqueued) before the first started: no worker idles while one waits.
    assert idle_while_waiting(events, workers=2) == [], events
    assert sorted(told) == sorted(trials)
    slow_worker = next(w for kind, w, n in events if kind == "start" and n == slow)
    assert events[-1] == ("end", slow_worker, slow), events
    assert {w for kind, w, n in events if kind == "start" and n != slow} == {1 - slow_worker}, events
    # The timeline the loop keeps agrees: each trial once, on the worker it was sent to.
    assert sorted((e.number, e.worker) for e in loop.tally.timeline) == sorted(
        (n, w) for kind, w, n in events if kind == "start")
    assert all(e.started <= e.ended for e in loop.tally.timeline)
    assert all(trials[n].user_attrs["s_per_epoch"] > 0 for n in trials)
