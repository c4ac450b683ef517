"""Warm workers kept between the studies of one process, for a while.

A process that keeps its Ray up between studies (a notebook or a pipeline that called
``ray.init()`` itself, then runs ``tune`` or ``compare`` several times) would otherwise start
new worker processes for every study, each paying torch's import and first step again (seconds
of CPU each). Instead a study that ended normally leaves its idle, flushed workers here
(``keep``), and the next pool of the same shape (CPUs and GPUs per worker) on the same Ray takes
them (``take``): they forget the study before (``TrialWorker.reset``) and warm up for the new
one. A worker no pool takes within ``LINGER_S`` seconds is stopped and its CPUs go back to the
cluster; ``release`` stops them all at once (``stop_ray`` does, before Ray stops).

Where a command started Ray itself (``autoopt tune``), Ray stops with it and nothing is kept.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

log = logging.getLogger(__name__)

LINGER_S = 60.0  # how long a kept worker waits for the next study before it is stopped

Shape = tuple[float, float]  # CPUs and GPUs per worker


@dataclass(frozen=True)
class _Kept:
    actor: Any
    shape: Shape
    ray_id: tuple[str, str]  # the Ray it lives on (``_ray_id``)
    since: float  # time.monotonic() when it was kept


_lock = threading.Lock()
_kept: list[_Kept] = []


def _ray_id() -> tuple[str, str]:
    """This process's connection to Ray: its node and job (a new ``ray.init`` gives a new pair,
    and the actors of the one before are gone)."""
    context = ray.get_runtime_context()
    return context.get_node_id(), context.get_job_id()


def keep(actors: list[Any], shape: Shape, linger_s: float = LINGER_S) -> None:
    """Keep ``actors`` (idle, their writes flushed) for the next pool of ``shape``, for
    ``linger_s`` seconds."""
    if not actors:
        return
    here, now = _ray_id(), time.monotonic()
    with _lock:
        _kept.extend(_Kept(actor, shape, here, now) for actor in actors)
    timer = threading.Timer(linger_s, _expire, kwargs={"linger_s": linger_s})
    timer.daemon = True
    timer.name = "autoopt-spares"
    timer.start()


def take(shape: Shape) -> Any | None:
    """A kept worker of ``shape`` on this process's Ray, or None. The kept workers of other
    shapes are stopped: they hold CPUs that the new workers this pool starts would wait for."""
    if not _kept:
        return None
    with _lock:
        _current()
        other = [k for k in _kept if k.shape != shape]
        _kept[:] = [k for k in _kept if k.shape == shape]
        taken = _kept.pop(0).actor if _kept else None
    stop([k.actor for k in other])
    return taken


def held(kind: str) -> float:
    """The CPUs (``kind="CPU"``) or GPUs the kept workers hold on this process's Ray: free for
    the next pool, which takes them."""
    if not _kept:
        return 0.0
    with _lock:
        _current()
        return sum(k.shape[0 if kind == "CPU" else 1] for k in _kept)


def release() -> int:
    """Stop every kept worker now; returns how many."""
    with _lock:
        _current()
        gone, _kept[:] = list(_kept), []
    stop([k.actor for k in gone])
    return len(gone)


def _current() -> None:
    """Forget the workers of a Ray stopped since they were kept: they are gone with it. Call
    with ``_lock`` held."""
    here = _ray_id() if ray.is_initialized() else None
    _kept[:] = [k for k in _kept if k.ray_id == here]


def _expire(linger_s: float) -> None:
    """Stop the workers kept for ``linger_s`` or longer (on a timer's thread: the process may be
    stopping or starting Ray meanwhile, and then there is nothing to stop)."""
    cutoff = time.monotonic() - linger_s + 0.05
    try:
        with _lock:
            _current()
            old = [k for k in _kept if k.since <= cutoff]
            _kept[:] = [k for k in _kept if k.since > cutoff]
        stop([k.actor for k in old])
    except Exception as exc:
        log.debug("kept workers not stopped: %s", exc)


def stop(actors: list[Any]) -> None:
    """Kill ``actors`` and wait until they are gone (``ray.kill`` returns at once): every worker
    the driver lets go, kept or not (``WorkerPool.shutdown``)."""
    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)
    for actor in actors:
        with contextlib.suppress(Exception):  # RayActorError: it is dead, as wanted
            ray.get(actor.__ray_ready__.remote(), timeout=10)
