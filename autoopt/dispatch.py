"""Ray: warm workers and the driver's ask/tell loop. The only module that imports ray.

Each worker is a Ray actor that lives for the whole ``tune``: it loads the task once (data
on its device), then trains trial after trial, reporting every epoch to the Optuna trial
(so pruning works across processes) and to its MLflow run. The driver asks Optuna for
trials, keeps every worker busy (one trial running and one queued, so a worker never waits
for the driver), tells Optuna the results and sends heartbeats for the trials in flight.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

from autoopt.space import TrialConfig

log = logging.getLogger(__name__)

QUEUE_PER_WORKER = 2  # one running, one waiting on the worker: no idle gap between trials
REFRESH_S = 0.5  # the progress display reads the study at most this often while trials run


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
    tracking: dict[str, Any] | None = None
    run_name: str = "trial"
    tags: dict[str, Any] = field(default_factory=dict)
    # The config names its family only; the entry itself travels with the job, so a family
    # registered in the driver (register_optimizer, a study file's class) exists on the worker.
    family: Any = None

    def __post_init__(self) -> None:
        if self.family is None:
            self.family = shippable_family(self.config.optimizer)


class TrialWorker:
    """A warm worker: tasks (with their data on the device) and study handles are cached."""

    def __init__(self, threads: int, gpu_fraction: float = 0.0) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        if self.device == "cuda" and 0 < gpu_fraction < 1:
            # Several trials share the GPU: bound this one's share of its memory.
            torch.cuda.set_per_process_memory_fraction(gpu_fraction)
        self.tasks: dict[tuple, Any] = {}
        self.studies: dict[tuple, Any] = {}
        self.trials_run = 0
        self.task_loads = 0
        from autoopt.study import redact_logs
        from autoopt.tracking import TrialRecorder

        redact_logs()  # this worker holds the storage and tracking URLs: keep their passwords out of its logs

        self.recorder = TrialRecorder()
        # Writes a trial's epoch reports to the study, off the training path.
        self.reports = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optuna-report")
        from autoopt.pruning import ReferenceTrials

        self.reference = ReferenceTrials()  # the finished trials, shared by this worker's decisions

    def info(self) -> dict[str, Any]:
        """Who this worker is and what it did: ``pid``, ``node``, ``device``, ``gpu_ids`` (Ray's),
        ``trials_run`` and ``task_loads`` (datasets loaded: once per task while it stays warm)."""
        return {"pid": os.getpid(), "trials_run": self.trials_run, "device": self.device,
                "node": ray.get_runtime_context().get_node_id(), "gpu_ids": list(ray.get_gpu_ids()),
                "task_loads": self.task_loads}

    def flush(self) -> None:
        self.recorder.flush()

    def _task(self, job: Job) -> Any:
        key = (job.task, job.data_dir, job.batch_size)
        if key not in self.tasks:
            from autoopt.tasks import load_task

            task = load_task(job.task, job.data_dir).to(self.device)
            self.task_loads += 1
            if job.batch_size:
                task.batch_size = job.batch_size
            self.tasks[key] = task
        return self.tasks[key]

    def _study(self, ref: TrialRef) -> Any:
        import optuna

        from autoopt.study import build_pruner, open_storage, with_retry

        key = (ref.storage_url, ref.study_name, ref.pruner, ref.epochs, ref.warmup)
        if key not in self.studies:
            # The worker reaches the storage itself (no shared filesystem), with a pool of one.
            storage = open_storage(ref.storage_url, pool_size=1, heartbeat=False, retry=True)
            pruner = build_pruner(ref.pruner, epochs=ref.epochs, warmup=ref.warmup)
            # A sampler that samples nothing: the worker only reports, the driver samples.
            self.studies[key] = with_retry(
                lambda: optuna.load_study(study_name=ref.study_name, storage=storage, pruner=pruner,
                                          sampler=optuna.samplers.RandomSampler()),
                what="load the study")
        return self.studies[key]

    def warm(self, job: Job) -> dict[str, Any]:
        """Pay ``job``'s one-time costs before the first trial: its task's data on the device,
        its study and tracking stores opened, torch's first training step. Best effort: a
        failure here is logged, and the trial that meets it reports it."""
        from autoopt.train import warm_up

        started = time.perf_counter()
        try:
            task = self._task(job)
            if job.trial is not None:
                self._study(job.trial)
            if job.tracking:
                self.recorder.warm(job.tracking["uri"])
            warm_up(task, job.config)
        except Exception as exc:
            log.warning("warming up for %s failed: %s", job.task, str(exc)[:300])
        # What is loaded now lives as long as the worker: move it out of the collector's way.
        # A full collection (release_memory after each trial on a GPU, and Python's own)
        # then scans a trial's objects only: a few ms instead of a few hundred.
        gc.collect()
        gc.freeze()
        return {**self.info(), "warm_s": time.perf_counter() - started}

    def run(self, job: Job) -> dict[str, Any]:
        """Train one job; never raises for a failing trial (the error is returned)."""
        from autoopt.pruning import TrialReporter
        from autoopt.space import FAMILIES
        from autoopt.study import redact, with_retry
        from autoopt.train import train

        start = time.perf_counter()
        self.trials_run += 1
        if job.family is not None and FAMILIES.get(job.family.name) != job.family:
            FAMILIES[job.family.name] = job.family
        handle = dict(job.tracking) if job.tracking else None
        if handle is not None:
            self.recorder.start(handle, run_name=job.run_name, params=job.config.flat_params(), tags=job.tags)
        trial: Any = None

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            if handle is not None:
                self.recorder.log_epoch(handle, epoch, metrics)
            if trial is None:
                return False
            value = metrics[task.metric]
            if value != value:  # NaN: let the divergence check end the trial
                return False
            # Written in the background; the last epoch's value goes back with the result and
            # the driver records it with the tell (nothing can be pruned there).
            trial.report(value, epoch, write=epoch < job.epochs)
            return trial.should_prune(epoch)

        try:
            if job.trial is not None:
                # A database that is away for a moment is waited for, not a failed trial.
                trial = TrialReporter(self._study(job.trial), job.trial.trial_id, job.trial.number,
                                      background=self.reports, reference=self.reference,
                                      retry=lambda fn, what: with_retry(fn, what=what))
            task = self._task(job)
            result = train(task, job.config, epochs=job.epochs, seed=job.seed, on_epoch=on_epoch,
                           evaluate_test=job.evaluate_test, compile_model=job.compile).to_dict()
            if trial is not None:
                trial.close()
        except Exception as exc:  # a bug in a user's task, out of memory, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result = {"status": "fail", "reason": redact(f"{type(exc).__name__}: {first}")[:500],
                      "traceback": redact(traceback.format_exc())[-4000:], "history": [], "train_s": 0.0,
                      "test": {}, "value": None}
        state = {"complete": "COMPLETE", "pruned": "PRUNED", "diverged": "PRUNED",
                 "fail": "FAIL"}[result["status"]]
        if handle is not None:
            tags = {"autoopt.reason": result["reason"]} if result.get("reason") else {}
            if result.get("traceback"):
                tags["autoopt.traceback"] = result["traceback"][-3000:]  # the failure, readable in the UI
            test = {f"test_{k.removeprefix('test_')}": v for k, v in result["test"].items()}
            self.recorder.finish(handle, state=state, tags=tags, metrics=test)
        result["state"] = state
        result["worker_s"] = time.perf_counter() - start
        result["pid"] = os.getpid()
        result["node"] = ray.get_runtime_context().get_node_id()
        return result


@functools.cache  # scanning the installed distributions takes about a second
def _installed_top_levels() -> frozenset[str]:
    import importlib.metadata

    return frozenset(importlib.metadata.packages_distributions()) | frozenset(sys.stdlib_module_names)


def shippable_family(name: str) -> Any:
    """The registry entry of family ``name``, ready to travel to a worker.

    A class from an installed package travels by reference (the worker imports it); a class
    from the user's own code (a script, a notebook, a test module) may not be importable on the
    worker, so its module is pickled by value.
    """
    from autoopt.space import family

    fam = family(name)
    for obj in (fam.optimizer_class, fam.split, fam.adjust):
        module = getattr(obj, "__module__", None) if obj is not None and not isinstance(obj, str) else None
        if (module and module != "__main__" and module in sys.modules
                and module.partition(".")[0] not in _installed_top_levels()):
            ray.cloudpickle.register_pickle_by_value(sys.modules[module])
    return fam


def compact_history(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per-epoch losses, metrics and lr, rounded: small enough to keep as a trial attribute."""
    return [{k: round(float(v), 6) for k, v in h.items() if k != "epoch_s"} for h in history]


@dataclass
class InFlight:
    worker: int
    job: Job
    trial: Any = None  # the driver's optuna.trial.Trial for search trials
    submitted: float = field(default_factory=time.monotonic)
    actor: Any = None  # the worker it was sent to (the pool may replace it meanwhile)


def start_ray(address: str | None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Join ``address`` or start a local Ray sized to this machine. Returns True when this
    call started it (and so should stop it)."""
    if ray.is_initialized():
        return False
    from autoopt.errors import UsageError

    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": False, "configure_logging": True}
    if address:
        _token_auth_for(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(f"cannot join the Ray cluster at {address} ({str(exc).splitlines()[0][:200]}); "
                             "check --ray-address or RAY_ADDRESS") from None
        return True
    # Workers must import a user's `module:function` from the folder tune runs in.
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    # address="local": always a fresh in-process cluster, never one some `ray start` left running.
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus,
             runtime_env={"env_vars": {"PYTHONPATH": path}}, **kwargs)
    return True


def _token_auth_for(address: str) -> None:
    """Present a Ray auth token when joining ``address`` where its head expects one.

    A head from ``ray start --head`` turns token authentication on whenever a token exists
    (``~/.ray/auth_token``, which any local ``ray.init`` creates), but a driver joining by an
    explicit address never does, and fails with "Failed to connect". Turn it on (as Ray does
    for ``address="auto"``) when the user gave a token (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``), or when the head runs on this machine and so read the same token
    file: the local token is never sent to another host. An explicit ``RAY_AUTH_MODE`` wins.
    A head without authentication ignores the token.
    """
    if "RAY_AUTH_MODE" in os.environ or address.startswith("ray://") or address == "auto":
        return
    given = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    local = (Path.home() / ".ray" / "auth_token").exists() and _on_this_machine(address.rsplit(":", 1)[0])
    if not (given or local):
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except ImportError:  # a Ray without token authentication: nothing to turn on
        pass


def _on_this_machine(host: str) -> bool:
    """Whether ``host`` names one of this machine's addresses (it can be bound to)."""
    import socket

    try:
        ip = socket.gethostbyname(host.strip("[]"))
        with socket.socket() as probe:
            probe.bind((ip, 0))
        return True
    except OSError:
        return False


def stop_ray() -> None:
    ray.shutdown()


class WorkerPool:
    """``size`` warm workers, each with ``cpus``/``gpus`` reserved from Ray.

    A worker takes jobs only once Ray has placed it (it answered a ping). On a shared cluster
    the actors of a second driver may wait for resources that the first driver's workers hold;
    jobs queued on them would wait too, while the first driver waits for those very trials to
    finish before it lets its workers go: a deadlock.
    """

    MAX_START_FAILURES = 3  # workers that die before answering: past this, the cluster is broken

    def __init__(self, size: int, *, cpus: float, gpus: float) -> None:
        self.cpus, self.gpus = cpus, gpus
        self._remote = ray.remote(TrialWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0,
                                                       max_concurrency=1)
        self.workers: list[Any] = []
        self.load = [0] * size
        self.ready = [False] * size
        self._pings: dict[ray.ObjectRef, tuple[int, Any]] = {}
        self._start_failures = 0
        self._warm_job: Job | None = None
        for i in range(size):
            self.workers.append(None)
            self._start(i)

    def _new(self) -> Any:
        return self._remote.remote(max(1, int(self.cpus)), self.gpus)

    def _start(self, index: int) -> None:
        actor = self._new()
        self.workers[index], self.load[index], self.ready[index] = actor, 0, False
        ping = actor.info.remote() if self._warm_job is None else actor.warm.remote(self._warm_job)
        self._pings[ping] = (index, actor)

    def warm(self, job: Job) -> None:
        """From now on a worker is ready only once it has paid ``job``'s one-time costs (its
        task loaded, its stores opened, torch warmed up: ``TrialWorker.warm``), so that trials
        start on warm workers; replacements started later warm up too. Call before the first
        job."""
        self._warm_job = job
        for index, actor in enumerate(self.workers):
            # Queued behind the actor's ping: it answers once Ray has placed the actor and it is warm.
            self.ready[index] = False
            self._pings = {ref: v for ref, v in self._pings.items() if v[1] is not actor}
            self._pings[actor.warm.remote(job)] = (index, actor)

    def poll(self, timeout_s: float = 0.0) -> None:
        """Mark the workers Ray has placed since the last call as ready (waits up to
        ``timeout_s`` for one when none is ready yet)."""
        if not self._pings:
            return
        done, _ = ray.wait(list(self._pings), num_returns=len(self._pings), timeout=timeout_s)
        for ref in done:
            index, actor = self._pings.pop(ref)
            if self.workers[index] is not actor:
                continue  # replaced meanwhile
            try:
                ray.get(ref)
                self.ready[index] = True
            except (RayActorError, WorkerCrashedError, RayTaskError) as exc:
                self._start_failures += 1
                if self._start_failures > self.MAX_START_FAILURES:
                    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                    raise RuntimeError(f"Ray workers die as they start: {first}") from None
                log.warning("a worker died as it started; starting another: %s", str(exc)[:200])
                self._start(index)

    def wait_ready(self, timeout_s: float) -> None:
        """Nothing to wait on but workers Ray has not placed yet: wait for one (or ``timeout_s``)."""
        if self._pings:
            self.poll(timeout_s)
        else:
            time.sleep(min(timeout_s, 1.0))

    def replace(self, index: int, dead: Any = None) -> None:
        """Start a fresh worker in place of a dead one. With ``dead`` (the actor a failed job ran
        on), only if that actor is still the one at ``index``: the jobs queued behind a dead
        worker fail too, and must not replace its replacement."""
        if dead is not None and self.workers[index] is not dead:
            return
        with contextlib.suppress(Exception):
            ray.kill(self.workers[index])
        self._start(index)

    def free(self) -> int | None:
        """The least-loaded ready worker that can take another job, or None."""
        self.poll()
        ready = [i for i in range(len(self.workers)) if self.ready[i]]
        best = min(ready, key=lambda i: self.load[i], default=None)
        if best is None or self.load[best] >= QUEUE_PER_WORKER:
            return None
        return best

    def submit(self, index: int, job: Job) -> ray.ObjectRef:
        self.load[index] += 1
        return self.workers[index].run.remote(job)

    def done(self, index: int, actor: Any = None) -> None:
        """A job of worker ``index`` ended (``actor``: the worker it ran on, when it may have been
        replaced since)."""
        if actor is not None and self.workers[index] is not actor:
            return
        self.load[index] = max(0, self.load[index] - 1)

    def flush(self) -> None:
        # Only placed workers: a flush queued on one still waiting for resources would wait with it.
        refs = [w.flush.remote() for w, ready in zip(self.workers, self.ready, strict=True) if ready]
        try:
            ray.get(refs, timeout=120)
        except Exception as exc:
            log.warning("could not flush a worker's tracking: %s", exc)

    def info(self) -> list[dict[str, Any]]:
        return ray.get([w.info.remote() for w in self.workers])

    def shutdown(self) -> None:
        """Kill the workers and wait until they are gone: ray.kill returns at once, and a worker
        still alive could open an MLflow run after the driver closed the orphans."""
        for w in self.workers:
            with contextlib.suppress(Exception):
                ray.kill(w)
        for w in self.workers:
            with contextlib.suppress(Exception):  # RayActorError: it is dead, as wanted
                ray.get(w.__ray_ready__.remote(), timeout=10)


def default_concurrency(cpus: float, gpus: float) -> int:
    """How many trials fit at once in the cluster's resources."""
    res = ray.cluster_resources()
    if gpus > 0:
        return max(1, int(res.get("GPU", 0) // gpus))
    return max(1, int(res.get("CPU", 1) // cpus))


def run_jobs(pool: WorkerPool, jobs: list[Job], on_result: Callable[[Job, dict[str, Any]], None]) -> None:
    """Run independent jobs (confirmation, baselines, comparisons) on the pool; a dead worker's
    job is retried once on a fresh worker."""
    queue = list(jobs)
    retried: set[int] = set()
    inflight: dict[ray.ObjectRef, InFlight] = {}
    while queue or inflight:
        while queue and (w := pool.free()) is not None:
            job = queue.pop(0)
            inflight[pool.submit(w, job)] = InFlight(w, job, actor=pool.workers[w])
        if not inflight:  # no worker placed yet (another driver holds the cluster): wait for one
            pool.wait_ready(5.0)
            continue
        ready, _ = ray.wait(list(inflight), num_returns=1)
        for ref in ready:
            item = inflight.pop(ref)
            pool.done(item.worker, item.actor)
            try:
                result = ray.get(ref)
            except (RayActorError, WorkerCrashedError) as exc:
                pool.replace(item.worker, item.actor)
                if id(item.job) not in retried:
                    retried.add(id(item.job))
                    queue.append(item.job)
                    continue
                result = {"status": "fail", "state": "FAIL", "reason": f"worker died: {exc}"[:300],
                          "history": [], "test": {}, "value": None, "train_s": 0.0}
            except RayTaskError as exc:
                result = {"status": "fail", "state": "FAIL", "reason": str(exc).splitlines()[0][:300],
                          "history": [], "test": {}, "value": None, "train_s": 0.0}
            on_result(item.job, result)


@dataclass
class SearchProgress:
    """What the progress display shows; updated after every event of the search."""

    total: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    best: float | None = None
    best_trial: int | None = None
    started: float = field(default_factory=time.monotonic)
    finished_here: int = 0
    last: str = ""

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed

    def eta_s(self) -> float | None:
        if self.finished_here == 0:
            return None
        per = (time.monotonic() - self.started) / self.finished_here
        return max(0.0, (self.total - self.done) * per)


Progress = Callable[[SearchProgress], None]


def _refresh(progress: SearchProgress, study: Any) -> None:
    from autoopt.study import counts

    trials = study.get_trials(deepcopy=False)
    c = counts(trials)
    progress.complete, progress.pruned = c["complete"], c["pruned"]
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    progress.failed = sum(1 for t in trials if t.state.name == "FAIL" and t.number not in retried)
    progress.running = c["running"]
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    if done:
        pick = max if study.direction.name == "MAXIMIZE" else min
        best = pick(done, key=lambda t: t.value)
        progress.best, progress.best_trial = best.value, best.number


def _warm_config(name: str) -> TrialConfig:
    """A config of family ``name`` to warm a worker up with (its defaults, or a small lr)."""
    from autoopt.space import family

    return TrialConfig(name, dict(getattr(family(name), "defaults", None) or {"lr": 1e-3}))


def run_search(study: Any, *, spec: Any, storage_url: str, tracking: dict[str, Any] | None,
               pool: WorkerPool, on_progress: Progress | None = None) -> SearchProgress:
    """Ask, dispatch, tell until the study holds ``spec.trials`` trials (counting those of
    other drivers and those already finished), or ``spec.timeout_s`` passes.

    Ctrl-C fails the trials in flight and re-queues them (the study stays resumable), then
    re-raises ``KeyboardInterrupt``.
    """
    from autoopt.space import suggest_config
    from autoopt.study import (
        HEARTBEAT_S,
        ask_lock,
        budget_used,
        build_sampler,
        counts,
        fail_stale,
        is_unreachable,
        redact,
        retry_trial,
        trials_snapshot,
        with_retry,
    )

    space = spec.search_space()
    storage = study._storage
    progress = SearchProgress(total=spec.trials)
    inflight: dict[ray.ObjectRef, InFlight] = {}
    owned: dict[int, Any] = {}  # trials this driver asked and has not told yet
    deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
    last_beat = 0.0
    exhausted = False

    last_read = [0.0]

    def notify(event: str) -> None:
        progress.last = event
        # Short trials finish several times a second: read the study for the display at most
        # every REFRESH_S while trials are in flight (the last one always reads).
        if not inflight or time.monotonic() - last_read[0] >= REFRESH_S:
            with_retry(lambda: _refresh(progress, study), what="read the study")
            last_read[0] = time.monotonic()
        if on_progress is not None:
            on_progress(progress)

    def ask() -> Any:
        with ask_lock(storage_url, study.study_name):
            trials = study.get_trials(deepcopy=False)
            waiting = any(t.state.name == "WAITING" for t in trials)
            if not waiting and budget_used(trials) >= spec.trials:
                return None
            trial = study.ask()
            # At once: a trial without any heartbeat is only failed after 2 x GRACE_S.
            storage.record_heartbeat(trial._trial_id)
        return trial

    def prepare(trial: Any) -> Any:
        # A sampler seeded by the trial's number (unique in the study): two drivers started
        # together with the same --seed would otherwise propose the same configs, and one
        # driver stays reproducible. Samplers keep their state in the study, so a fresh one per
        # trial loses nothing; it samples lazily, at the first suggest below.
        study.sampler = build_sampler(spec.sampler, spec.seed + trial.number)
        # Idempotent (a suggested parameter is stored once), so a retry after a dropped
        # connection gives the same config. One read of the trials for the whole sampling.
        with trials_snapshot(study):
            config = suggest_config(trial, space)
        trial.set_user_attr("config", config.to_dict())
        retried = "failed_trial" in storage.get_trial_system_attrs(trial._trial_id)
        if retried and trial.user_attrs.get("reason"):
            trial.set_user_attr("reason", None)  # inherited from the failed attempt it retries
        return config

    def submit(worker: int) -> bool:
        # One read of the trials (under the ask lock) serves the budget check and the sampling.
        with trials_snapshot(study):
            trial = with_retry(ask, what="ask for a trial")
            if trial is None:
                return False
            owned[trial.number] = trial
            config = with_retry(lambda: prepare(trial), what="store a trial's config")
        ref = TrialRef(storage_url, study.study_name, trial._trial_id, trial.number, spec.pruner,
                       spec.epochs, spec.pruner_warmup)
        tags = {"autoopt.study": study.study_name, "autoopt.trial_number": trial.number,
                "autoopt.optimizer": config.optimizer, "autoopt.kind": "trial", "autoopt.state": "RUNNING"}
        job = Job(spec.task, spec.data_dir, config, spec.epochs, spec.seed + trial.number, spec.batch_size,
                  spec.compile, trial=ref, tracking=tracking, run_name=f"trial-{trial.number}", tags=tags)
        inflight[pool.submit(worker, job)] = InFlight(worker, job, trial, actor=pool.workers[worker])
        return True

    def tell(item: InFlight, result: dict[str, Any]) -> bool:
        """Record a result; False when the trial was already finished (failed as stale by a
        driver that took this one for dead). An unreachable database raises, to be retried."""
        from optuna.trial import TrialState

        trial = item.trial
        try:
            if result.get("reason"):
                trial.set_user_attr("reason", result["reason"])
            trial.set_user_attr("train_s", round(result.get("train_s", 0.0), 4))
            if result.get("pid"):  # which worker ran it: for a crash, find its node's logs
                trial.set_user_attr("worker", {"node": result.get("node"), "pid": result["pid"]})
            trial.set_user_attr("history", compact_history(result.get("history") or []))  # for reports
            if result["state"] == "COMPLETE":
                # The worker leaves the last epoch's report to this tell: it spares the trial a
                # round trip at its end, and no pruner acts on the last epoch.
                trial.report(result["value"], len(result.get("history") or ()) or 1)
                study.tell(trial, result["value"])
            elif result["state"] == "PRUNED":
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, state=TrialState.FAIL)
        except Exception as exc:
            if is_unreachable(exc):
                raise
            log.warning("could not record trial %d: %s", trial.number, exc)
            owned.pop(trial.number, None)
            return False
        owned.pop(trial.number, None)
        return True

    if spec.gpus_per_trial and not spec.ray_address and not ray.cluster_resources().get("GPU"):
        # Our own local Ray has no GPU to give: the workers would wait for one forever.
        from autoopt.errors import UsageError

        raise UsageError(f"--gpus-per-trial {spec.gpus_per_trial:g}: Ray sees no GPU on this machine; "
                         "leave --gpus-per-trial out to train on the CPUs")
    try:
        # Workers warm up (task data, stores, torch) while the driver starts; each takes
        # trials once warm.
        pool.warm(Job(spec.task, spec.data_dir, _warm_config(spec.optimizers[0]), spec.epochs, spec.seed,
                      spec.batch_size, spec.compile, tracking=tracking,
                      trial=TrialRef(storage_url, study.study_name, -1, -1, spec.pruner, spec.epochs,
                                     spec.pruner_warmup)))
        notify("start")
        while True:
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_S:
                for item in inflight.values():
                    with_retry(lambda i=item: storage.record_heartbeat(i.trial._trial_id), what="heartbeat")
                with_retry(lambda: fail_stale(study), what="fail stale trials")
                last_beat = now
            if deadline is not None and now >= deadline:
                exhausted = True
            while not exhausted and (w := pool.free()) is not None:
                if not submit(w):
                    exhausted = True
            if not inflight:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                trials = with_retry(lambda: study.get_trials(deepcopy=False), what="read the study")
                c = counts(trials)
                if budget_used(trials) >= spec.trials and c["running"] == 0 and c["waiting"] == 0:
                    break
                with_retry(lambda: _refresh(progress, study), what="read the study")
                if exhausted:
                    # Trials of another driver (or of a dead one, until their heartbeat goes
                    # stale and they are re-queued) are still running: wait, so the study ends
                    # complete and no re-queued trial is left behind.
                    time.sleep(1.0)
                else:
                    pool.wait_ready(HEARTBEAT_S)  # none of our workers is placed yet
                exhausted = False
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=HEARTBEAT_S)
            for ref in ready:
                item = inflight.pop(ref)
                pool.done(item.worker, item.actor)
                try:
                    result = ray.get(ref)
                except (RayActorError, WorkerCrashedError) as exc:
                    # The worker died mid-trial (killed, out of host memory): fail and re-queue.
                    # Trials queued behind it on the same worker land here too.
                    log.warning("worker died during trial %d: %s", item.trial.number, str(exc)[:200])
                    pool.replace(item.worker, item.actor)
                    lost = {"state": "FAIL", "reason": "worker died during the trial"}
                    if with_retry(lambda i=item, r=lost: tell(i, r), what="record a trial"):
                        with_retry(lambda i=item: retry_trial(study, i.trial.number), what="re-queue a trial")
                    notify(f"trial {item.trial.number} lost its worker; re-queued")
                    continue
                except RayTaskError as exc:
                    result = {"state": "FAIL", "reason": redact(str(exc).splitlines()[0])[:300]}
                with_retry(lambda i=item, r=result: tell(i, r), what="record a trial")
                progress.finished_here += 1
                notify(f"trial {item.trial.number} {result['state'].lower()}")
    except KeyboardInterrupt:
        # `owned`, not `inflight`: Ctrl-C may land between asking a trial and submitting it.
        _interrupt(study, list(owned.values()), pool)
        raise
    return progress


def _interrupt(study: Any, trials: list[Any], pool: WorkerPool) -> None:
    """Ctrl-C: fail the trials in flight and re-queue them, so running the command again
    finishes exactly the remainder."""
    from optuna.trial import TrialState

    from autoopt.study import retry_trial

    pool.shutdown()
    for trial in trials:
        try:
            trial.set_user_attr("reason", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            retry_trial(study, trial.number)
        except Exception as exc:
            log.warning("could not re-queue trial %d: %s", trial.number, exc)
