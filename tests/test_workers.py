"""Trials that cost only their training: warm workers reused across trials (the dataset loaded
once per worker), four trials packed on one GPU with --gpus-per-trial 0.25 (logical GPUs
declared to a real local Ray), and a driver that samples only what a trial uses."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
import torch
from conftest import own_ray, refused

from autoopt.commands.tuning import run
from autoopt.dispatch import Job, JobResult, JobState, WorkerPool, default_concurrency, run_jobs, spares
from autoopt.space import TrialConfig, suggest_config
from autoopt.spec import load_spec
from autoopt.study import GroupTPESampler, open_storage, open_study, trials_snapshot
from autoopt.tracking import StudyRun, TrialRecorder

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def gpu_ray() -> Iterator[None]:
    """A real local Ray declaring four CPUs and one GPU (a logical one: the scheduling is what
    is tested, the trials train on the CPU)."""
    own_ray()
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield
    ray.shutdown()


def digits_job(seed: int) -> Job:
    return Job("digits", None, TrialConfig("sgd", {"lr": 0.05, "momentum": 0.9}), 1, seed)


def wait_ready(pool: WorkerPool, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(pool.ready) and time.monotonic() < deadline:
        pool.poll(1.0)
    assert all(pool.ready), "workers were not placed"


@pytest.mark.slow
def infos(pool: WorkerPool) -> list[dict[str, Any]]:
    """What each of the pool's workers says of itself (``TrialWorker.info``)."""
    return ray.get([w.info.remote() for w in pool.workers if w is not None])


def test_a_study_runs_its_trials_on_concurrency_workers(gpu_ray: None, workdir: Path) -> None:
    spec = load_spec("digits", trials=4, epochs=1, concurrency=2, confirm=False,
                     storage=f"sqlite:///{workdir / 'autoopt.db'}",
                     mlflow_uri=f"sqlite:///{workdir / 'mlflow.db'}",
                     out=str(workdir / "recommendations"))
    run(spec)
    study = optuna.load_study(study_name="digits", storage=spec.placement.storage)
    trials = [t for t in study.trials if t.state.is_finished()]
    assert len(trials) == 4
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    # 4 trials, 2 warm workers: no process per trial (a worker placed late on a loaded machine
    # may find its partner has already taken all four)
    assert 1 <= len(pids) <= 2
    assert all(t.user_attrs["train_s"] > 0 for t in trials)


@pytest.mark.slow
def test_warm_workers_load_the_dataset_once_and_take_trial_after_trial(gpu_ray: None) -> None:
    pool = WorkerPool(2, cpus=1, gpus=0)
    try:
        pool.warm(digits_job(0))
        wait_ready(pool)
        assert [w["task_loads"] for w in infos(pool)] == [1, 1]  # loaded while warming, before any trial
        results: list[JobResult] = []
        run_jobs(pool, [digits_job(seed) for seed in range(6)], lambda _job, result: results.append(result))
        assert [r.state for r in results] == [JobState.COMPLETE] * 6
        assert all(r.s_per_epoch and r.s_per_epoch > 0 for r in results)
        info = infos(pool)
        assert {r.pid for r in results} == {w["pid"] for w in info}
        assert sum(w["trials_run"] for w in info) == 6 and all(w["trials_run"] >= 2 for w in info)
        assert [w["task_loads"] for w in info] == [1, 1]  # still once per worker
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_a_quarter_gpu_per_trial_packs_four_trials_on_one_gpu(gpu_ray: None) -> None:
    assert default_concurrency(1.0, 0.25) == 4
    pool = WorkerPool(4, cpus=1, gpus=0.25)
    extra = None
    try:
        wait_ready(pool)
        info = infos(pool)
        assert len({w["pid"] for w in info}) == 4
        assert all(len(w["gpu_ids"]) == 1 for w in info) and len({str(w["gpu_ids"][0]) for w in info}) == 1
        assert ray.available_resources().get("GPU", 0.0) == pytest.approx(0.0)  # the GPU is full
        # The default concurrency is what is free now (at least one), not the cluster's total: a
        # second driver here would get one worker, placed when one of these leaves.
        assert default_concurrency(1.0, 0.25) == 1 and default_concurrency(1.0, 0.0) == 1
        # A fifth quarter does not fit until one of the four leaves.
        extra = WorkerPool(1, cpus=0.01, gpus=0.25)
        extra.poll(3.0)
        assert extra.ready == [False]
        # Four trials at once, one per worker.
        results: list[JobResult] = []
        run_jobs(pool, [digits_job(seed) for seed in range(4)], lambda _job, result: results.append(result))
        assert len({r.pid for r in results}) == 4
        ray.kill(pool.workers[0])
        wait_ready(extra)
    finally:
        pool.shutdown()
        if extra is not None:
            extra.shutdown()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpus_per_trial_without_a_gpu_is_bad_input_not_a_hang(workdir: Path, local_ray: None,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # The entry point in this process, on the session's Ray (no GPU either): what it proves is
    # the check's, not a fresh process's start-up.
    line = refused(capsys, "tune", "--task", "digits", "--trials", "1", "--epochs", "1", "--gpus-per-trial", "0.25",
                   "--no-confirm", folder=workdir)
    assert "--gpus-per-trial 0.25: there is no GPU on this machine" in line


def test_the_driver_samples_only_the_groups_a_trial_uses(tmp_path: Path) -> None:
    """Past its startup trials, every parameter a trial uses that the finished trials know comes
    from the multivariate TPE model of its group, sampled only when the trial asks for it; none
    falls back to independent sampling. (What autoopt guarantees; what TPE then proposes is
    Optuna's business.)"""
    import math

    spec = load_spec("digits", trials=30, epochs=1, optimizers="classic")
    space = spec.search_space()
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=False)
    study = open_study(storage, "s", direction="maximize")
    startup = 10
    modelled = 0
    for number in range(30):
        sampler = GroupTPESampler(multivariate=True, group=True, constant_liar=True, seed=number,
                                  n_startup_trials=startup)
        relative: list[dict[str, object]] = []  # what TPE's model proposed, one group per call
        independent: list[str] = []  # the parameters sampled without the model
        known: dict[str, object] = {}  # the relative search space: what the finished trials know

        def sample_relative(study_: optuna.Study, trial_: object, group: dict, tpe=sampler.tpe,
                            out=relative) -> dict:
            values = type(tpe).sample_relative(tpe, study_, trial_, group)
            out.append(values)
            return values

        def infer(study_: optuna.Study, trial_: object, sampler=sampler, out=known) -> dict:
            space_ = type(sampler).infer_relative_search_space(sampler, study_, trial_)
            out.update(space_)
            return space_

        def sample_independent(study_: optuna.Study, trial_: object, name: str, dist: object,
                               sampler=sampler, out=independent) -> object:
            out.append(name)
            return type(sampler).sample_independent(sampler, study_, trial_, name, dist)

        sampler.tpe.sample_relative = sample_relative  # type: ignore[method-assign]
        sampler.infer_relative_search_space = infer  # type: ignore[method-assign]
        sampler.sample_independent = sample_independent  # type: ignore[method-assign]
        study.sampler = sampler
        trial = study.ask()
        with trials_snapshot(study):
            config = suggest_config(trial, space)
        assert config.optimizer in spec.optimizers
        frozen = study.get_trials(deepcopy=False)[-1]
        if number >= startup:  # TPE proper
            groups = trial.relative_params
            sampled = len(groups._values)
            assert 0 < sampled < len(groups._groups), (sampled, len(groups._groups))
            assert len(relative) == sampled  # one model call per group used, none for the others
            from_model = {name: value for values in relative for name, value in values.items()}
            used_known = {name for name in frozen.params if name in known}
            assert "optimizer" in used_known  # every finished trial has one: its choice is the model's
            assert not used_known & set(independent), (used_known & set(independent), number)
            # ... and the trial holds exactly what the model proposed for them.
            assert {name: frozen.params[name] for name in used_known} == {
                name: from_model[name] for name in used_known}
            modelled += len(used_known)
        else:  # startup: random, as TPE's startup is
            assert set(independent) == set(frozen.params), number
        # A made-up score that prefers adam with a mid lr, for the model to have something to fit.
        lr = config.optimizer_params.get("lr", 1.0)
        study.tell(trial, (config.optimizer == "adam") + 1.0 / (1.0 + abs(math.log10(lr) + 3)))
    assert modelled >= 20  # each of the 20 trials past the startup had at least its optimizer modelled


@pytest.mark.slow
def test_tracking_batches_a_trials_writes_and_loses_none(workdir: Path) -> None:
    import mlflow

    parent = StudyRun(f"sqlite:///{workdir / 'mlflow.db'}", "digits", "s", {"trials": 2})
    recorder = TrialRecorder(write_every_s=0.3)
    client = mlflow.MlflowClient(tracking_uri=parent.uri)

    def metric_steps(run_id: str) -> list[int]:
        return [m.step for m in client.get_metric_history(run_id, "val_accuracy")]

    def waited(condition: Callable[[], object], bound_s: float) -> float:
        """Seconds until ``condition()`` holds; fails once ``bound_s`` have passed without it."""
        start = time.monotonic()
        while not condition():
            assert time.monotonic() - start < bound_s, f"not within {bound_s}s"
            time.sleep(0.01)
        return time.monotonic() - start

    slow = recorder.start(parent.ref, run_name="trial-0", params={"lr": 0.1}, tags={"autoopt.trial_number": 0})
    # The run is created at once (one write: a running trial shows in the UI) ...
    created_s = waited(lambda: recorder.run_id(slow), 10.0)
    slow_id = recorder.run_id(slow)
    assert slow_id is not None
    # ... and its epochs follow at most write_every_s late (plus the write and this read).
    recorder.log_epoch(slow, 1, {"val_accuracy": 0.5, "lr": 0.1})
    waited(lambda: metric_steps(slow_id), recorder.write_every_s + max(1.0, 2 * created_s))
    assert client.get_run(slow_id).info.status == "RUNNING" and metric_steps(slow_id) == [1]
    quick = recorder.start(parent.ref, run_name="trial-1", params={"lr": 0.2}, tags={"autoopt.trial_number": 1})
    for epoch in (1, 2, 3):
        recorder.log_epoch(quick, epoch, {"val_accuracy": 0.1 * epoch, "lr": 0.2})
    recorder.finish(quick, state="FAIL", tags={"autoopt.reason": "diverged"})
    recorder.log_epoch(slow, 2, {"val_accuracy": 0.6, "lr": 0.1})
    recorder.finish(slow, state="COMPLETE", tags={}, metrics={"test_accuracy": 0.7})
    recorder.flush()
    done = {r.info.run_name: r for r in client.search_runs([parent.experiment_id],
                                                          f"tags.`mlflow.parentRunId` = '{parent.run_id}'")}
    assert done["trial-0"].info.status == "FINISHED" and done["trial-1"].info.status == "FAILED"
    assert done["trial-0"].data.params == {"lr": "0.1"} and done["trial-1"].data.params == {"lr": "0.2"}
    assert done["trial-0"].info.run_id == slow_id
    assert metric_steps(slow_id) == [1, 2] and metric_steps(done["trial-1"].info.run_id) == [1, 2, 3]
    assert done["trial-0"].data.metrics["test_accuracy"] == 0.7
    assert done["trial-1"].data.tags["autoopt.state"] == "FAIL"
    assert done["trial-1"].data.tags["autoopt.reason"] == "diverged"


FRESH_WORKER = """
import logging, sys
from autoopt.tracking import RunRef, TrialRecorder
logging.basicConfig(level=logging.WARNING)
ref = RunRef(sys.argv[1], sys.argv[2], sys.argv[3])  # the driver's parent run
recorder = TrialRecorder(write_every_s=0.0)
recorder.warm(ref.uri)  # MLflow's import starts in the background ...
for n in range(3):  # ... while the first trials' runs are written at once
    key = recorder.start(ref, run_name=f"trial-{n}", params={"lr": 0.1}, tags={"autoopt.trial_number": n})
    recorder.log_epoch(key, 1, {"val_accuracy": 0.5})
    recorder.finish(key, state="COMPLETE", tags={})
recorder.flush()
"""


@pytest.mark.slow
def test_a_fresh_workers_first_runs_are_written_while_mlflow_imports(workdir: Path) -> None:
    """A worker's recorder imports MLflow in the background (``warm``) while its writer thread
    writes the first trials' runs: the two imports once deadlocked in MLflow's module locks, and
    every write of that worker failed ("partially initialized module 'mlflow'")."""
    import subprocess
    import sys

    import mlflow

    parent = StudyRun(f"sqlite:///{workdir / 'mlflow.db'}", "digits", "fresh", {})
    ref = parent.ref
    proc = subprocess.run([sys.executable, "-c", FRESH_WORKER, ref.uri, str(ref.experiment_id), str(ref.parent_run_id)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "failed" not in proc.stderr and "could not be opened" not in proc.stderr, proc.stderr[-2000:]
    client = mlflow.MlflowClient(tracking_uri=ref.uri)
    runs = client.search_runs([str(ref.experiment_id)], f"tags.`mlflow.parentRunId` = '{ref.parent_run_id}'")
    assert sorted(r.info.run_name for r in runs) == ["trial-0", "trial-1", "trial-2"]
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_a_pool_takes_the_workers_a_finished_one_kept_and_they_forgot_its_study(local_ray: None) -> None:
    spares.release()  # none kept by the tests before
    first = WorkerPool(2, cpus=1, gpus=0)
    first.warm(digits_job(0))
    wait_ready(first)
    before = infos(first)
    assert [w["task_loads"] for w in before] == [1, 1]
    first.shutdown(keep=True)  # a study that ended, its Ray staying up: its workers wait warm
    assert first.workers == [None, None] and spares.held("CPU") == 2
    # What they hold counts as free: the next pool takes it.
    assert default_concurrency(1.0, 0.0) == int(ray.cluster_resources()["CPU"])
    second = WorkerPool(2, cpus=1, gpus=0)
    try:
        assert spares.held("CPU") == 0
        wait_ready(second)
        after = infos(second)
        assert {w["pid"] for w in after} == {w["pid"] for w in before}  # the same processes, no new start
        assert [(w["task_loads"], w["trials_run"]) for w in after] == [(0, 0), (0, 0)]  # nothing of the first
        results: list[JobResult] = []
        run_jobs(second, [digits_job(1)], lambda _job, result: results.append(result))
        assert [r.state for r in results] == [JobState.COMPLETE]
    finally:
        second.shutdown(keep=True)
    # A pool of another shape starts its own, and the kept ones stop: it would wait for their CPUs.
    other = WorkerPool(1, cpus=0.5, gpus=0)
    wait_ready(other, timeout_s=30)
    [actor] = other.workers
    assert infos(other)[0]["pid"] not in {w["pid"] for w in before} and spares.held("CPU") == 0
    # Kept, and taken by no pool: stopped after the linger, its CPUs back.
    other.workers = [None]
    spares.keep([actor], (0.5, 0.0), linger_s=0.5)
    assert spares.held("CPU") == 0.5
    deadline = time.monotonic() + 30
    while spares.held("CPU") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spares.held("CPU") == 0
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.info.remote(), timeout=30)
    total = ray.cluster_resources()["CPU"]
    while ray.available_resources().get("CPU", 0.0) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0.0) == total  # every CPU back


@pytest.mark.slow
def test_a_second_study_in_the_process_trains_on_the_first_ones_warm_workers(workdir: Path, local_ray: None) -> None:
    """A notebook or pipeline that keeps its Ray up between ``tune`` calls: the second study
    starts no worker process of its own (one worker each: the first's trials all ran on it)."""
    import autoopt

    spares.release()
    pids = []
    for name in ("first", "second"):
        autoopt.tune("digits", study_name=name, trials=2, epochs=1, concurrency=1, confirm=False,
                     storage=f"sqlite:///{workdir / 'autoopt.db'}", mlflow_uri=f"sqlite:///{workdir / 'mlflow.db'}",
                     out=str(workdir / "recommendations"))
        trials = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'autoopt.db'}").trials
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
        pids.append({t.user_attrs["worker"]["pid"] for t in trials})
    assert len(pids[0]) == 1 and pids[1] == pids[0], pids
    assert spares.held("CPU") == 1  # kept again, for a third ...
    assert spares.release() == 1 and spares.held("CPU") == 0  # ... unless let go (stop_ray does)
