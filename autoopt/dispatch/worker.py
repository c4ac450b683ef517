"""The worker: a Ray actor that stays warm for a whole command and trains job after job.

It loads a task once (its data on the device), opens the study and tracking stores once,
then trains each ``Job`` with the job's own ``Family`` (it never writes the registry),
reporting every epoch to the Optuna trial (pruning works across processes) and to the
trial's MLflow run, and returns a ``JobResult``.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import importlib.metadata
import logging
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import optuna
import ray

from autoopt.dispatch.results import JobResult, JobState
from autoopt.space import Family, TrialConfig, family
from autoopt.study import load_study, open_storage, redact_logs, with_retry
from autoopt.tasks import Loaded, Task, UserLoop, load_task
from autoopt.tracking import REASON_TAG, TRACEBACK_TAG, RunRef, TrialRecorder
from autoopt.training.loop import LoopError, run_loop
from autoopt.training.pruning import ReferenceTrials, TrialReporter, build_pruner
from autoopt.training.train import Ending, TrialResult, train, warm_up

log = logging.getLogger(__name__)

_STATES = {Ending.COMPLETE: JobState.COMPLETE, Ending.PRUNED: JobState.PRUNED, Ending.DIVERGED: JobState.PRUNED}


@dataclass
class TrialRef:
    """How a worker reaches the Optuna trial it trains."""

    storage_url: str
    study_name: str
    trial_id: int
    number: int
    pruner: str
    epochs: int
    warmup: float
    # Under a time budget: when (wall clock) the trial must have ended, the search's share of the
    # budget spent. A trial whose measured seconds per epoch project its end past it is stopped.
    deadline: float | None = None


@dataclass
class Job:
    """One training run for a worker: a search trial, or a confirmation/baseline run."""

    task: str
    data_dir: str | None
    config: TrialConfig
    epochs: int
    seed: int
    batch_size: int | None = None
    compile: bool = False
    evaluate_test: bool = False
    trial: TrialRef | None = None
    tracking: RunRef | None = None
    run_name: str = "trial"
    tags: dict[str, Any] = field(default_factory=dict)
    # The config names its family only; the entry itself travels with the job, so a family
    # registered in the driver (register_optimizer, a study file's class) exists on the worker.
    family: Family | None = None

    def __post_init__(self) -> None:
        # A lookup only: making the family's modules travel by value (a change to Ray's pickler)
        # is done where the job is shipped (``WorkerPool``, through ``by_value_modules``).
        self.family = self.family or family(self.config.optimizer)

    def by_value_modules(self) -> list[str]:
        """The modules this job's family must be pickled by value from (``by_value_modules``)."""
        assert self.family is not None  # set by __post_init__
        return by_value_modules(self.family)


class TrialWorker:
    """A warm worker: tasks (with their data on the device) and study handles are cached."""

    def __init__(self, threads: int, gpu_fraction: float = 0.0) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        if self.device == "cuda" and 0 < gpu_fraction < 1:
            # Several trials share the GPU: bound this one's share of its memory.
            torch.cuda.set_per_process_memory_fraction(gpu_fraction)
        self.tasks: dict[tuple, Loaded] = {}
        self.studies: dict[tuple, optuna.Study] = {}
        self.trials_run = 0
        self.task_loads = 0
        self.setup_s = 0.0  # a user loop's setup run here, not yet handed back with a result
        redact_logs()  # this worker holds the storage and tracking URLs: keep their passwords out of its logs
        self.recorder = TrialRecorder()
        # Writes a trial's epoch reports to the study, off the training path.
        self.reports = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optuna-report")
        self.reference = ReferenceTrials()  # the finished trials, shared by this worker's decisions

    def info(self) -> dict[str, Any]:
        """Who this worker is and what it did: ``pid``, ``node``, ``device``, ``gpu_ids`` (Ray's),
        ``trials_run`` and ``task_loads`` (datasets loaded: once per task while it stays warm)."""
        return {"pid": os.getpid(), "trials_run": self.trials_run, "device": self.device,
                "node": ray.get_runtime_context().get_node_id(), "gpu_ids": list(ray.get_gpu_ids()),
                "task_loads": self.task_loads}

    def flush(self) -> None:
        self.recorder.flush()

    def reset(self) -> dict[str, Any]:
        """Forget the study before (kept warm for the next one: ``autoopt.dispatch.spares``): its
        tasks' data, its study handles, its counts and pruning reads. What the imports and torch's
        first step paid for stays."""
        self.recorder.flush()
        self.tasks.clear()
        self.studies.clear()
        self.trials_run = self.task_loads = 0
        self.setup_s = 0.0
        self.reference = ReferenceTrials()
        gc.unfreeze()  # the study's objects frozen by ``warm``: collectable again
        gc.collect()
        return self.info()

    def _task(self, job: Job, loaded: Task | None = None) -> Loaded:
        """``job``'s task on this worker's device, loaded once (or taken from ``loaded``, the
        task as the driver loaded it). A user's loop runs its setup here, once per worker: its
        data serves every trial this worker runs."""
        key = (job.task, job.data_dir, job.batch_size)
        if key not in self.tasks:
            task = loaded if loaded is not None else load_task(job.task, job.data_dir)
            if isinstance(task, UserLoop):
                self.setup_s += task.setup_s
            else:
                task = task.to(self.device)
                if job.batch_size:
                    task.batch_size = job.batch_size
            self.task_loads += 1
            self.tasks[key] = task
        return self.tasks[key]

    def _study(self, ref: TrialRef) -> optuna.Study:
        key = (ref.storage_url, ref.study_name, ref.pruner, ref.epochs, ref.warmup)
        if key not in self.studies:
            # The worker reaches the storage itself (no shared filesystem), with a pool of one.
            storage = open_storage(ref.storage_url, pool_size=1, heartbeat=False, retry=True)
            pruner = build_pruner(ref.pruner, epochs=ref.epochs, warmup=ref.warmup)
            # A sampler that samples nothing: the worker only reports, the driver samples.
            self.studies[key] = with_retry(
                lambda: load_study(storage, ref.study_name, pruner=pruner, sampler=optuna.samplers.RandomSampler()),
                what="load the study")
        return self.studies[key]

    def warm(self, job: Job, task: Task | None = None) -> dict[str, Any]:
        """Pay ``job``'s one-time costs before the first trial: its task's data on the device
        (``task``, when the driver shipped the one it loaded), its study and tracking stores
        opened, torch's first training step. Best effort: a failure here is logged, and the
        trial that meets it reports it."""
        started = time.perf_counter()
        try:
            loaded = self._task(job, task)
            if job.trial is not None:
                self._study(job.trial)
            if isinstance(loaded, Task):  # a user's loop is warmed by its setup alone
                warm_up(loaded, job.config, family=job.family)
        except Exception as exc:
            log.warning("warming up for %s failed: %s", job.task, str(exc)[:300])
        # What is loaded now lives as long as the worker: move it out of the collector's way.
        # A full collection (release_memory after each trial on a GPU, and Python's own)
        # then scans a trial's objects only: a few ms instead of a few hundred.
        gc.collect()
        gc.freeze()
        if job.tracking:
            # In the background, once the worker is ready: MLflow's import (a second or more)
            # would otherwise delay the first trial's start; the trial's run waits for it instead.
            self.recorder.warm(job.tracking.uri)
        return {**self.info(), "warm_s": time.perf_counter() - started}

    def run(self, job: Job) -> JobResult:
        """Train one job; never raises for a failing trial (the failure is the result)."""
        start = time.perf_counter()
        self.trials_run += 1
        run = (self.recorder.start(job.tracking, run_name=job.run_name, params=job.config.flat_params(), tags=job.tags)
               if job.tracking is not None and job.tracking.parent_run_id else None)
        where: dict[str, Any] = {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}
        try:
            reporter = self._reporter(job)
            task = self._task(job)
            on_epoch = self._on_epoch(job, task.metric, run, reporter)
            trained = (run_loop(task, job.config, epochs=job.epochs, seed=job.seed, device=self.device,
                                on_epoch=on_epoch, evaluate_test=job.evaluate_test, family=job.family,
                                number=job.trial.number if job.trial is not None else None)
                       if isinstance(task, UserLoop) else
                       train(task, job.config, epochs=job.epochs, seed=job.seed, family=job.family,
                             on_epoch=on_epoch, evaluate_test=job.evaluate_test, compile_model=job.compile))
            if reporter is not None:
                reporter.close()
            result = _result(trained, worker_s=time.perf_counter() - start, rss_mb=peak_rss_mb(), **where)
        except LoopError as exc:  # the user's loop broke the contract: the reason says how
            result = JobResult.failed(str(exc), worker_s=time.perf_counter() - start, rss_mb=peak_rss_mb(), **where)
        except Exception as exc:  # a bug in a user's task or loop, out of memory, ...
            result = JobResult.from_exception(exc, worker_s=time.perf_counter() - start, rss_mb=peak_rss_mb(), **where)
        if self.setup_s:  # handed back once, with the first result after the setup ran
            result = dataclasses.replace(result, setup_s=self.setup_s)
            self.setup_s = 0.0
        if run is not None:
            tags = {REASON_TAG: result.reason} if result.reason else {}
            if result.traceback:
                tags[TRACEBACK_TAG] = result.traceback[-3000:]  # the failure, readable in the UI
            self.recorder.finish(run, state=result.state, tags=tags, metrics=result.test)
        return result

    def _reporter(self, job: Job) -> TrialReporter | None:
        if job.trial is None:
            return None
        # A database that is away for a moment is waited for, not a failed trial.
        return TrialReporter(self._study(job.trial), job.trial.trial_id, job.trial.number,
                             background=self.reports, reference=self.reference,
                             retry=lambda fn, what: with_retry(fn, what=what))

    def _on_epoch(self, job: Job, metric: str, run: int | None, reporter: TrialReporter | None) -> Any:
        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool | str:
            if run is not None:
                self.recorder.log_epoch(run, epoch, metrics)
            if reporter is None:
                return False
            value = metrics[metric]
            if value != value:  # NaN: let the divergence check end the trial
                return False
            # Written in the background; the last epoch's value goes back with the result and
            # the driver records it with the tell (nothing can be pruned there).
            reporter.report(value, epoch, write=epoch < job.epochs, epoch_s=metrics.get("epoch_s"))
            late = past_deadline(job.trial, epoch, reporter.epoch_s) if job.trial is not None else None
            return late or reporter.should_prune(epoch)

        return on_epoch


def past_deadline(ref: TrialRef, epoch: int, epoch_s: list[float]) -> str | None:
    """Why a trial stops after ``epoch``: at the seconds per epoch it has taken so far, its
    remaining epochs would end past ``ref.deadline`` (the search's share of a time budget); or
    None.

    >>> ref = TrialRef("sqlite://", "s", 1, 1, "none", 8, 0.0, deadline=time.time() + 100)
    >>> past_deadline(ref, 1, [30.0]) is not None, past_deadline(ref, 1, [10.0])
    (True, None)
    """
    if ref.deadline is None or epoch >= ref.epochs or not epoch_s:
        return None
    per = statistics.fmean(epoch_s)
    end = time.time() + (ref.epochs - epoch) * per
    if end <= ref.deadline:
        return None
    return (f"stopped at epoch {epoch}: at {per:.2f}s per epoch it would end {end - ref.deadline:.0f}s after "
            "the search's share of the time budget")


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MiB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _result(trained: TrialResult, **timings: Any) -> JobResult:
    """A training run's outcome as a ``JobResult`` (diverged is pruned, with its reason)."""
    test = {f"test_{k.removeprefix('test_')}": v for k, v in trained.test.items()}
    return JobResult(_STATES[trained.status], trained.value, trained.history, test, reason=trained.reason,
                     train_s=trained.train_s, **timings)


# The packages every built-in family comes from: known without scanning the installed
# distributions, which takes a driver one and a half seconds (a user's own family alone needs it).
_BUILT_IN = frozenset({"torch", "pytorch_optimizer", __name__.partition(".")[0]})


def _installed(top: str) -> bool:
    return top in _BUILT_IN or top in sys.stdlib_module_names or top in _installed_top_levels()


@functools.cache
def _installed_top_levels() -> frozenset[str]:
    return frozenset(importlib.metadata.packages_distributions())


def by_value_modules(fam: Family) -> list[str]:
    """The modules of ``fam``'s classes that must be pickled by value to reach a worker (no side
    effect). A class from an installed package travels by reference (the worker imports it); a
    class from the user's own code (a script, a notebook, a test module) may not be importable on
    the worker."""
    out: list[str] = []
    for obj in (fam.optimizer_class, fam.split, fam.adjust):
        module = getattr(obj, "__module__", None) if obj is not None and not isinstance(obj, str) else None
        if (module and module != "__main__" and module in sys.modules and module not in out
                and not _installed(module.partition(".")[0])):
            out.append(module)
    return out
