"""Ray: warm workers, the pool, and the driver's search. The only package that imports ray.

* ``session``: join a Ray cluster (with its auth token) or start a local one; stop it.
* ``worker``: ``TrialWorker``, the Ray actor that stays warm (a task's data on its device,
  the stores open) and trains ``Job`` after ``Job`` with the job's own optimizer family.
* ``pool``: ``WorkerPool`` (one job per worker at a time, the next one waiting in the driver
  for whichever worker frees first) and ``run_jobs`` for independent jobs.
* ``results``: ``JobResult`` and ``JobState``, what every job gives back.
* ``trials``: ``TrialBook``, the one owner of a search trial's life in a driver (asked, placed,
  running, told, re-queued) and of every move between those states.
* ``costs``: ``SearchCosts``, a trial's expected seconds and the budget's verdict on it.
* ``search``: ``SearchLoop``, the ask/prepare/submit/tell loop of ``autoopt tune``.
"""

from autoopt.dispatch.gpus import GPU_PACK, gpus_per_trial, resolve_gpus
from autoopt.dispatch.pool import InFlight, WorkerPool, default_concurrency, run_jobs
from autoopt.dispatch.results import JobResult, JobState, compact_history
from autoopt.dispatch.search import (
    Progress,
    SearchLoop,
    SearchPolicy,
    SearchProgress,
    SearchStart,
    begin_search,
    warm_job,
)
from autoopt.dispatch.session import RunSession, start_ray, stop_ray
from autoopt.dispatch.trials import Life, TrialBook
from autoopt.dispatch.worker import Job, TrialRef, TrialWorker, shippable_family

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
    "shippable_family",
    "start_ray",
    "stop_ray",
    "warm_job",
]
