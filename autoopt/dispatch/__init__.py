"""Ray: warm workers, the pool, and the driver's search. The only package that imports ray.

* ``session``: join a Ray cluster (with its auth token) or start a local one; stop it.
* ``worker``: ``TrialWorker``, the Ray actor that stays warm (a task's data on its device,
  the stores open) and trains ``Job`` after ``Job`` with the job's own optimizer family.
* ``pool``: ``WorkerPool`` (one job per worker at a time, the next one waiting in the driver
  for whichever worker frees first) and ``run_jobs`` for independent jobs.
* ``spares``: the warm workers a finished study left for the next study of the same process
  (where Ray stays up after it), for a minute.
* ``results``: ``JobResult`` and ``JobState``, what every job gives back.
* ``trials``: ``TrialBook``, the one owner of a search trial's life in a driver (asked, placed,
  running, told, re-queued) and of every move between those states.
* ``costs``: ``SearchCosts``, a trial's expected seconds and the budget's verdict on it.
* ``search``: ``SearchLoop``, the ask/prepare/submit/tell loop of ``autoopt tune``, in parts:
  ``asking`` (``TrialAsker``: a trial asked, sampled and made a job for a free worker),
  ``jobs`` (``JobFactory``: what a worker is sent), ``upkeep`` (``Upkeep``: heartbeats, stale
  trials, re-queues, workers released or placed again), ``display`` (``SearchDisplay``: the
  progress and the starved driver's line), ``tally`` (``SearchTally``: what the search spent),
  all reading one injected ``clock`` (``Clock``, ``Deadline``) and a ``Pool``.

The names below are imported when first used: ``autoopt.dispatch.session`` (Ray's start, which
the CLI begins before it loads torch) imports no more than Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoopt.dispatch.gpus import GPU_PACK, gpus_per_trial, resolve_gpus
    from autoopt.dispatch.jobs import warm_job
    from autoopt.dispatch.pool import InFlight, WorkerPool, default_concurrency, run_jobs
    from autoopt.dispatch.results import JobResult, JobState, compact_history
    from autoopt.dispatch.search import (
        Progress,
        SearchLoop,
        SearchPolicy,
        SearchProgress,
        SearchStart,
        begin_search,
    )
    from autoopt.dispatch.session import RunSession, start_ray, stop_ray
    from autoopt.dispatch.trials import Life, TrialBook
    from autoopt.dispatch.worker import Job, TrialRef, TrialWorker

_WHERE = {
    "GPU_PACK": "gpus",
    "gpus_per_trial": "gpus",
    "resolve_gpus": "gpus",
    "InFlight": "pool",
    "WorkerPool": "pool",
    "default_concurrency": "pool",
    "run_jobs": "pool",
    "JobResult": "results",
    "JobState": "results",
    "compact_history": "results",
    "Progress": "search",
    "SearchLoop": "search",
    "SearchPolicy": "search",
    "SearchProgress": "search",
    "SearchStart": "search",
    "begin_search": "search",
    "warm_job": "jobs",
    "RunSession": "session",
    "start_ray": "session",
    "stop_ray": "session",
    "Life": "trials",
    "TrialBook": "trials",
    "Job": "worker",
    "TrialRef": "worker",
    "TrialWorker": "worker",
}

__all__ = [
    "GPU_PACK",
    "InFlight",
    "Job",
    "JobResult",
    "JobState",
    "Life",
    "Progress",
    "RunSession",
    "SearchLoop",
    "SearchPolicy",
    "SearchProgress",
    "SearchStart",
    "TrialBook",
    "TrialRef",
    "TrialWorker",
    "WorkerPool",
    "begin_search",
    "compact_history",
    "default_concurrency",
    "gpus_per_trial",
    "resolve_gpus",
    "run_jobs",
    "start_ray",
    "stop_ray",
    "warm_job",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'autoopt.dispatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"autoopt.dispatch.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
