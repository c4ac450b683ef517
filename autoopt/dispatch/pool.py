"""The pool of warm workers, and running independent jobs on it.

A worker runs one job at a time and holds no queue: the next job waits in the driver and
goes to whichever worker frees first, so no worker is idle while a job waits. Every job's
end, the normal one and a dead worker's, goes through ``WorkerPool.collect``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import ray
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

from autoopt.dispatch import spares
from autoopt.dispatch.gpus import gpus_per_trial
from autoopt.dispatch.results import JobResult
from autoopt.dispatch.worker import Job, TrialWorker
from autoopt.errors import UsageError
from autoopt.study import redact

if TYPE_CHECKING:
    import optuna

    from autoopt.tasks import Task

log = logging.getLogger(__name__)


def default_concurrency(cpus: float, gpus: float | None) -> int:
    """How many trials fit at once in what the cluster has free now (at least one; never more
    than its total holds): on a shared cluster, the other drivers' workers keep theirs. The
    workers an earlier study of this process left warm (``spares``) count as free: the pool
    takes them."""
    share = gpus if gpus is not None else gpus_per_trial(None)
    kind, need = ("GPU", share) if share > 0 else ("CPU", cpus)
    total = ray.cluster_resources().get(kind, 0.0)
    free = min(ray.available_resources().get(kind, 0.0) + spares.held(kind), total)
    return slots(free, need)


def slots(free: float, need: float) -> int:
    """Trials that fit at once in ``free`` CPUs or GPUs at ``need`` each: at least one.

    >>> slots(2, 1), slots(1, 0.25), slots(0, 1)
    (2, 4, 1)
    """
    return max(1, int(free // need)) if need > 0 else max(1, int(free))


def _count(n: float, what: str) -> str:
    """``n`` CPUs or GPUs in words, for the messages of ``check_fits``.

    >>> _count(1, "CPU"), _count(0.5, "GPU"), _count(2, "CPU")
    ('1 CPU', '0.5 GPU', '2 CPUs')
    """
    return f"{n:g} {what}{'s' if n > 1 else ''}"


def check_fits(cpus: float, gpus: float, concurrency: int | None) -> None:
    """Refuse (``UsageError``, exit 2) a request that no node of the cluster can hold (its
    workers would wait to be placed for ever), and a concurrency above the cluster's total."""
    nodes = [(float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
             for n in ray.nodes() if n.get("Alive")]
    if not any(c >= cpus and g >= gpus for c, g in nodes):
        big = max(nodes, key=lambda n: (n[1], n[0]) if gpus else n, default=(0.0, 0.0))
        asked = _count(cpus, "CPU") + (f" and {_count(gpus, 'GPU')}" if gpus else "")
        flags = f"--cpus-per-trial {cpus:g}" + (f", --gpus-per-trial {gpus:g}" if gpus else "")
        fix = ("lower --gpus-per-trial or leave it out" if gpus and not any(g >= gpus for _, g in nodes)
               else "lower --cpus-per-trial")
        raise UsageError(f"each trial asks {asked} ({flags}), but the cluster's largest node has "
                         f"{_count(big[0], 'CPU')} and {big[1]:g} GPUs; {fix}")
    if concurrency:
        total = ray.cluster_resources()
        kind, need = ("GPU", gpus) if gpus > 0 else ("CPU", cpus)
        holds = int(total.get(kind, 0.0) // need)
        if concurrency > holds:
            raise UsageError(f"--concurrency {concurrency} asks for {_count(concurrency * need, kind)} at once, but "
                             f"the cluster has {total.get(kind, 0.0):g} in all ({holds} trials at once); "
                             "lower --concurrency or leave it out")


def free_resources() -> str:
    """What the cluster has free now, of its total, in words."""
    total, free = ray.cluster_resources(), ray.available_resources()
    return (f"{free.get('CPU', 0.0):g} of {total.get('CPU', 0.0):g} CPUs and "
            f"{free.get('GPU', 0.0):g} of {total.get('GPU', 0.0):g} GPUs free")


@dataclass
class InFlight:
    """A job sent to a worker."""

    worker: int
    job: Job
    trial: optuna.trial.Trial | None = None  # the driver's trial, for search trials
    submitted: float = field(default_factory=time.monotonic)
    actor: Any = None  # the worker it was sent to (the pool may replace it meanwhile)
    started: float = field(default_factory=time.time)  # wall clock, for the record


@dataclass
class Finished:
    """A job that ended: its result, and whether its worker died under it (``lost``)."""

    item: InFlight
    result: JobResult
    lost: bool = False
    ended: float = field(default_factory=time.time)


class Pool(Protocol):
    """What the search loop asks of a pool of workers (``WorkerPool``; a fake one in tests):
    a free worker, a job sent to it, the jobs that ended, and the workers' upkeep."""

    workers: list[Any]

    @property
    def warming(self) -> bool: ...

    def warm(self, job: Job, task: Task | None = None) -> None: ...

    def free(self) -> int | None: ...

    def submit(self, index: int, job: Job, trial: optuna.trial.Trial | None = None) -> tuple[Any, InFlight]: ...

    def collect(self, inflight: dict[Any, InFlight], timeout_s: float | None = None) -> list[Finished]: ...

    def wait_ready(self, timeout_s: float) -> None: ...

    def release(self) -> int: ...

    def restore(self) -> None: ...

    def describe_wait(self) -> str: ...

    def shutdown(self) -> None: ...


class WorkerPool:
    """``size`` warm workers, each with ``cpus``/``gpus`` reserved from Ray (``gpus=None``: a
    quarter GPU where Ray sees one).

    A worker takes jobs only once Ray has placed it (it answered a ping). On a shared cluster
    the actors of a second driver may wait for resources that the first driver's workers hold;
    jobs queued on them would wait too, while the first driver waits for those very trials to
    finish before it lets its workers go: a deadlock.
    """

    MAX_START_FAILURES = 3  # workers that die before answering: past this, the cluster is broken

    def __init__(self, size: int, *, cpus: float, gpus: float | None) -> None:
        self.cpus, self.gpus = cpus, gpus if gpus is not None else gpus_per_trial(None)
        # No task events: Ray's task list (its dashboard's) is not read here, and the driver would
        # keep a buffer of them that grows with the trials run (5 MB over the first 3,000).
        self._remote = ray.remote(TrialWorker).options(num_cpus=cpus, num_gpus=self.gpus, max_restarts=0,
                                                       max_concurrency=1, enable_task_events=False)
        self.workers: list[Any] = [None] * size
        self.load = [0] * size
        self.ready = [False] * size
        self._pings: dict[ray.ObjectRef, tuple[int, Any]] = {}
        self._start_failures = 0
        self._warm_job: Job | None = None
        self._warm_task: ray.ObjectRef | None = None  # an object ref to the task the driver loaded
        self._by_value: set[str] = set()  # the user modules this pool made Ray pickle by value
        for i in range(size):
            self._start(i)

    def _start(self, index: int) -> None:
        """Start worker ``index``: one an earlier study of this process left warm, where one of
        this shape waits (``spares``; it forgets that study first), else a new one."""
        # Any: Ray types an actor's methods as the plain methods, without their ``.remote``.
        actor: Any = spares.take((self.cpus, self.gpus))
        if actor is not None:
            actor.reset.remote()  # answered before the ping below: an actor runs its calls in order
        else:
            actor = self._remote.remote(max(1, int(self.cpus)), self.gpus)
        self.workers[index], self.load[index], self.ready[index] = actor, 0, False
        ping = (actor.info.remote() if self._warm_job is None
                else actor.warm.remote(self._warm_job, self._warm_task))
        self._pings[ping] = (index, actor)

    @property
    def warming(self) -> bool:
        """Whether ``warm`` was called: workers become ready once warm."""
        return self._warm_job is not None

    def warm(self, job: Job, task: Task | None = None) -> None:
        """From now on a worker is ready only once it has paid ``job``'s one-time costs (its
        task loaded, its stores opened, torch warmed up: ``TrialWorker.warm``), so that trials
        start on warm workers; replacements started later warm up too. ``task``: the job's task
        as the driver loaded it, shipped through Ray's object store (the workers need not load
        it again). Call before the first job."""
        self._ship(job)
        self._warm_job = job
        self._warm_task = ray.put(task) if task is not None else None
        for index, actor in enumerate(self.workers):
            if actor is None:
                continue  # released: warms up when started again
            # Queued behind the actor's ping: it answers once Ray has placed the actor and it is warm.
            self.ready[index] = False
            self._pings = {ref: v for ref, v in self._pings.items() if v[1] is not actor}
            self._pings[actor.warm.remote(job, self._warm_task)] = (index, actor)

    def poll(self, timeout_s: float = 0.0) -> None:
        """Mark the workers Ray has placed since the last call as ready (waits up to
        ``timeout_s`` for one when none is ready yet)."""
        if not self._pings:
            return
        # Wake at the first worker ready (not once all are, or at the timeout), then take the
        # others that are ready too.
        done, _ = ray.wait(list(self._pings), num_returns=1, timeout=timeout_s)
        if done and len(self._pings) > 1:
            done, _ = ray.wait(list(self._pings), num_returns=len(self._pings), timeout=0)
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
        on), only if that actor is still the one at ``index``."""
        if dead is not None and self.workers[index] is not dead:
            return
        with contextlib.suppress(Exception):
            ray.kill(self.workers[index])
        self._start(index)

    def free(self) -> int | None:
        """A ready worker with nothing to do, or None."""
        self.poll()
        return next((i for i, w in enumerate(self.workers)
                     if w is not None and self.ready[i] and self.load[i] == 0), None)

    def release(self) -> int:
        """Kill the workers with nothing to do, placed or still waiting to be (their resources go
        back to the cluster, for other drivers); ``restore`` starts them again. Returns how many."""
        idle = [i for i, w in enumerate(self.workers) if w is not None and self.load[i] == 0]
        # What their trials recorded to MLflow is written before they go.
        flushes = [self.workers[i].flush.remote() for i in idle if self.ready[i]]
        try:
            ray.get(flushes, timeout=120)
        except Exception as exc:
            log.warning("could not flush a worker's tracking: %s", exc)
        for index in idle:
            actor = self.workers[index]
            self._pings = {ref: v for ref, v in self._pings.items() if v[1] is not actor}
            with contextlib.suppress(Exception):
                ray.kill(actor)
            self.workers[index], self.ready[index] = None, False
        if idle:
            log.info("released %d idle workers", len(idle))
        return len(idle)

    def restore(self) -> None:
        """Start again the workers ``release`` let go (they warm up before they take a job)."""
        for index, actor in enumerate(self.workers):
            if actor is None:
                self._start(index)

    def describe_wait(self) -> str:
        """What the workers wait for, in one line: what each asks and what the cluster has free."""
        return (f"each worker asks {self.cpus:g} CPU and {self.gpus:g} GPU; the cluster has {free_resources()} "
                "(other drivers hold the rest)")

    def submit(self, index: int, job: Job, trial: optuna.trial.Trial | None = None) -> tuple[ray.ObjectRef, InFlight]:
        """Send ``job`` to idle worker ``index``."""
        self._ship(job)
        self.load[index] += 1
        actor = self.workers[index]
        return actor.run.remote(job), InFlight(index, job, trial, actor=actor)

    def _ship(self, job: Job) -> None:
        """Make the user modules ``job``'s family comes from travel by value (once per module):
        the one place a job changes Ray's pickler, right before it is sent."""
        for module in job.by_value_modules():
            if module not in self._by_value:
                ray.cloudpickle.register_pickle_by_value(sys.modules[module])
                self._by_value.add(module)

    def collect(self, inflight: dict[ray.ObjectRef, InFlight], timeout_s: float | None = None) -> list[Finished]:
        """Wait up to ``timeout_s`` for jobs of ``inflight`` to end; take them out of it and
        return their results. A dead worker is replaced, its job's result is a failure marked
        ``lost`` (the caller decides whether to run it again)."""
        if not inflight:
            return []
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=timeout_s)
        out = []
        for ref in ready:
            item = inflight.pop(ref)
            self._done(item)
            try:
                out.append(Finished(item, ray.get(ref)))
            except (RayActorError, WorkerCrashedError) as exc:
                # The worker died mid-job (killed, out of host memory).
                self.replace(item.worker, item.actor)
                out.append(Finished(item, JobResult.failed(f"worker died: {str(exc)[:250]}"), lost=True))
            except RayTaskError as exc:
                out.append(Finished(item, JobResult.failed(redact(str(exc).splitlines()[0])[:300])))
        return out

    def _done(self, item: InFlight) -> None:
        if self.workers[item.worker] is item.actor:  # not replaced since
            self.load[item.worker] = max(0, self.load[item.worker] - 1)

    def flush(self) -> None:
        # Only placed workers: a flush queued on one still waiting for resources would wait with it.
        refs = [w.flush.remote() for w, ready in zip(self.workers, self.ready, strict=True) if w is not None and ready]
        try:
            ray.get(refs, timeout=120)
        except Exception as exc:
            log.warning("could not flush a worker's tracking: %s", exc)

    def shutdown(self, keep: bool = False) -> None:
        """Kill the workers and wait until they are gone: ray.kill returns at once, and a worker
        still alive could open an MLflow run after the driver closed the orphans. With ``keep``
        (the study ended and its Ray stays up), the idle workers are kept warm for the next
        study of this process instead (``spares``; their writes were flushed; one still warming
        up is kept too: it is ready sooner than a new one)."""
        idle = [w for w, load in zip(self.workers, self.load, strict=True) if w is not None and load == 0]
        kept = idle if keep else []
        spares.keep(kept, (self.cpus, self.gpus))
        alive = [w for w in self.workers if w is not None and all(w is not k for k in kept)]
        self.workers = [None] * len(self.workers)
        self.ready = [False] * len(self.workers)  # nothing to flush on them any more: they are gone
        spares.stop(alive)


def run_jobs(pool: WorkerPool, jobs: list[Job], on_result: Callable[[Job, JobResult], None]) -> None:
    """Run independent jobs (confirmation, baselines, comparisons) on the pool, each on the
    first worker that frees; a dead worker's job runs once more on a fresh worker."""
    pool.restore()  # a search that had nothing left to run released its idle workers
    queue = list(jobs)
    retried: set[int] = set()
    inflight: dict[ray.ObjectRef, InFlight] = {}
    while queue or inflight:
        while queue and (w := pool.free()) is not None:
            ref, item = pool.submit(w, queue.pop(0))
            inflight[ref] = item
        if not inflight:  # no worker placed yet (another driver holds the cluster): wait for one
            pool.wait_ready(5.0)
            continue
        # With jobs waiting, look up now and then for workers Ray placed meanwhile.
        for done in pool.collect(inflight, timeout_s=1.0 if queue else None):
            if done.lost and id(done.item.job) not in retried:
                retried.add(id(done.item.job))
                queue.insert(0, done.item.job)
                continue
            on_result(done.item.job, done.result)
