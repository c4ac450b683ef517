"""The dispatch package: typed job results, and no worker idle while a job waits (the next job
waits in the driver, not on a busy worker's queue), on a real local Ray."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import ray

from autoopt.dispatch import Job, JobResult, JobState, WorkerPool, run_jobs
from autoopt.dispatch.session import _token_auth_for
from autoopt.space import TrialConfig

TOLERANCE_S = 0.5  # a result's way back to the driver and the next job's way out


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


def idle_while_waiting(runs: list[tuple[int, float, float]], t0: float) -> list[str]:
    """Each job (worker pid, start, end; all queued at ``t0``) against each worker's idle spans:
    a worker that sat idle while a job still waited to start."""
    out = []
    workers = {pid for pid, _, _ in runs}
    for pid in workers:
        spans = sorted((s, e) for p, s, e in runs if p == pid)
        idle, free_from = [], t0
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
