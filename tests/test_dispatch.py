"""The dispatch package: typed job results, and no worker idle while a job waits (the next job
waits in the driver, not on a busy worker's queue), on a real local Ray."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
import torch

from autoopt.dispatch import Job, JobResult, JobState, SearchLoop, WorkerPool, run_jobs
from autoopt.dispatch.session import _token_auth_for
from autoopt.space import REGISTRY, TrialConfig, register_optimizer
from autoopt.spec import load_spec
from autoopt.study import open_storage, open_study

TOLERANCE_S = 0.5  # a result's way back to the driver and the next job's way out
SLOW_STEP_S = 0.4


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


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


def job(epochs: int, seed: int) -> Job:
    return Job("digits", None, TrialConfig("sgd", {"lr": 0.05, "momentum": 0.9}), epochs, seed)


def idle_while_waiting(runs: list[tuple[int, float, float]], t0: float | None = None) -> list[str]:
    """Each job (worker, start, end; all queued at ``t0``) against each worker's idle spans (from
    ``t0``, or from its first job when a worker may still have been warming up then): a worker
    that sat idle while a job still waited to start."""
    out = []
    workers = {pid for pid, _, _ in runs}
    for pid in workers:
        spans = sorted((s, e) for p, s, e in runs if p == pid)
        idle, free_from = [], spans[0][0] if t0 is None else t0
        for s, e in spans:
            idle.append((free_from, s))
            free_from = e
        idle.append((free_from, float("inf")))
        for _, start, _ in runs:
            for a, b in idle:
                overlap = min(b, start) - a
                if overlap > TOLERANCE_S:
                    out.append(f"worker {pid} idle {overlap:.2f}s while a job waited to start")
    return out


@pytest.mark.slow
def test_no_worker_is_idle_while_a_job_waits(cluster: None) -> None:
    pool = WorkerPool(2, cpus=1, gpus=0)
    try:
        pool.warm(job(1, 0))
        deadline = time.monotonic() + 180
        while not all(pool.ready) and time.monotonic() < deadline:
            pool.poll(1.0)
        assert all(pool.ready)
        slow, fast = job(40, 0), [job(1, s) for s in range(1, 9)]
        runs: list[tuple[int, float, float]] = []
        results: list[JobResult] = []

        def on_result(_job: Job, result: JobResult) -> None:
            end = time.time()
            runs.append((result.pid, end - result.worker_s, end))
            results.append(result)

        t0 = time.time()
        run_jobs(pool, [slow, *fast], on_result)
        assert [r.state for r in results].count(JobState.COMPLETE) == 9
        slow_pid = next(r.pid for r in results if len(r.history) == 40)
        slow_s = next(r.worker_s for r in results if len(r.history) == 40)
        fast_s = sum(r.worker_s for r in results if len(r.history) == 1)
        assert slow_s > fast_s + 2 * TOLERANCE_S, (slow_s, fast_s)  # the test can tell a queued job
        # Every fast job ran on the other worker, while the slow one trained.
        assert [r.pid for r in results if len(r.history) == 1].count(slow_pid) == 0
        assert idle_while_waiting(runs, t0) == []
    finally:
        pool.shutdown()


class SleepySGD(torch.optim.SGD):
    """SGD that takes SLOW_STEP_S more per step: a trial many times slower than Adam's."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        time.sleep(SLOW_STEP_S)
        return super().step(closure)


class SlowFirst:
    """A search policy for the test: one slow trial enqueued first, then fast ones (Adam), all
    before the first ask."""

    def start(self, study: optuna.Study, storage_url: str, trials: int) -> str | None:
        study.enqueue_trial({"optimizer": "sleepy_sgd", "scheduler": "none", "grad_clip": False})
        for _ in range(trials - 1):
            study.enqueue_trial({"optimizer": "adam", "scheduler": "none", "grad_clip": False})
        return None

    def steer(self, study: optuna.Study, trials: list) -> str | None:
        return None


@pytest.mark.slow
def test_no_worker_is_idle_while_a_trial_waits_in_a_search(cluster: None, tmp_path: Path) -> None:
    register_optimizer("sleepy_sgd", SleepySGD, {"lr": 0.05}, replace=True)
    try:  # registered for this test only: later tests see the built-in families alone
        spec = load_spec("digits", trials=6, epochs=2, optimizers="sleepy_sgd,adam", pruner="none",
                         concurrency=2, storage=f"sqlite:///{tmp_path / 's.db'}")
        study = open_study(open_storage(spec.placement.storage), "idle", direction="maximize")
        pool = WorkerPool(2, cpus=1, gpus=0)
        try:
            loop = SearchLoop(study, spec=spec, storage_url=spec.placement.storage, tracking=None, pool=pool,
                              policy=SlowFirst())
            progress = loop.run()
        finally:
            pool.shutdown()
    finally:
        REGISTRY.unregister("sleepy_sgd")
    assert progress.complete == 6
    trials = {t.number: t for t in study.trials}
    slow = next(n for n, t in trials.items() if t.params["optimizer"] == "sleepy_sgd")
    spans = {e["number"]: (e["worker"], e["started"], e["ended"]) for e in loop.timeline}
    slow_s = spans[slow][2] - spans[slow][1]
    fast_s = sum(e - s for n, (_, s, e) in spans.items() if n != slow)
    assert slow_s > fast_s / 2 + 2 * TOLERANCE_S, (slow_s, fast_s)  # a trial queued behind it would show
    # All six were queued (enqueued) before the first started: no worker idles while one waits.
    assert idle_while_waiting(list(spans.values())) == []
    assert all(trials[n].user_attrs["s_per_epoch"] > 0 for n in spans)
