"""The Ray session: join a cluster (with its auth token) or start a local Ray; stop it. And a
command's run session (``RunSession``): Ray, the worker pool and the MLflow parent run, closed
together, in order, whatever ends the work."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from autoopt.base.background import GATE_ENV, new_gate
from autoopt.dispatch import spares
from autoopt.errors import UsageError

if TYPE_CHECKING:
    from autoopt.dispatch.pool import WorkerPool
    from autoopt.tracking import RunStatus, StudyRun


# What a local Ray's worker processes import as they start, before they are given an actor.
PRELOADED = ("autoopt.dispatch.preload",)


def start_ray(address: str | None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Join ``address`` or start a local Ray sized to this machine. Returns True when this
    call started it (and so should stop it)."""
    if ray.is_initialized():
        return False
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
    # Workers must import a user's `module:function` from the folder tune runs in: they inherit
    # the environment of the raylet, which inherits this process's. (Not a job runtime_env: Ray
    # would then start fresh worker processes for the actors instead of its prestarted ones.)
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    # Ray's notice that the cluster it starts for this command uses token auth: not the user's to act on.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path
    # The gate this Ray's worker processes warm up at (``first_alone``): this cluster's own.
    _gates.append(new_gate())
    os.environ[GATE_ENV] = _gates[-1]
    try:
        # address="local": always a fresh in-process cluster, never one some `ray start` left
        # running. Its prestarted worker processes import the worker's modules (torch, Optuna)
        # while the driver still starts up, so a worker is warm seconds sooner.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus,
                 _system_config={"preload_python_modules": list(PRELOADED)}, **kwargs)
    finally:
        os.environ.pop(GATE_ENV, None)
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before
    return True


_gates: list[str] = []  # the warm-up gates of the Rays this process started


def stop_ray() -> None:
    """Stop the workers earlier studies left warm (``spares``), then Ray."""
    try:
        if ray.is_initialized():
            spares.release()
        ray.shutdown()
    finally:
        while _gates:
            with contextlib.suppress(OSError):
                os.remove(_gates.pop())


class RunSession:
    """What one command (``tune``, ``compare``; ``bench`` through ``tune``) holds while it runs:
    Ray (joined, or started here and so stopped here), the worker pool and the MLflow parent run.

    On leaving, whatever ended the work: the pool's workers finish writing their runs (``flush``;
    not when ``flush_pool`` was turned off, as for a storage that went away: they would wait for
    it) and stop, or, where the work ended normally and Ray stays up after the session (the
    caller's ``ray.init``), stay warm a while for the next study (``spares``); the ``on_close``
    callbacks run (closing what dead trials left open); the parent
    run ends ``FINISHED`` where the body set ``status`` so, ``KILLED`` on Ctrl-C, else ``FAILED``;
    then Ray stops, if this session started it.

    >>> with RunSession(None) as session:                      # doctest: +SKIP
    ...     pool = session.open_pool(8, concurrency=2, cpus=1, gpus=0)
    ...     session.status = "FINISHED"
    """

    def __init__(self, ray_address: str | None) -> None:
        self.ray_address = ray_address
        self.started_ray = False
        self.pool: WorkerPool | None = None
        self.tracker: StudyRun | None = None
        self.status: RunStatus | None = None  # FINISHED where the body says so
        self.flush_pool = True
        self.on_close: list[Callable[[], None]] = []

    def __enter__(self) -> RunSession:
        self.started_ray = start_ray(self.ray_address)
        return self

    def open_pool(self, jobs: int, *, concurrency: int | None, cpus: float, gpus: float | None) -> WorkerPool:
        """The worker pool: ``concurrency`` workers, or as many as the cluster has free now (at
        least one), and never more than there are ``jobs``. A request no node can hold, or a
        concurrency above the cluster's total, is refused (``UsageError``) before any worker starts."""
        from autoopt.dispatch.gpus import gpus_per_trial
        from autoopt.dispatch.pool import WorkerPool, check_fits, default_concurrency

        check_fits(cpus, gpus if gpus is not None else gpus_per_trial(None), concurrency)
        size = concurrency or default_concurrency(cpus, gpus)
        self.pool = WorkerPool(max(1, min(size, jobs)), cpus=cpus, gpus=gpus)
        return self.pool

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if self.pool is not None:
                if self.flush_pool:
                    self.pool.flush()
                self.pool.shutdown(keep=kind is None and self.flush_pool and not self.started_ray)
            for close in self.on_close:
                close()
            if self.tracker is not None:
                self.tracker.finish(self._ending(kind))
        finally:
            if self.started_ray:
                stop_ray()

    def _ending(self, kind: type[BaseException] | None) -> RunStatus:
        """The parent run's status: KILLED on Ctrl-C, FAILED on another exception or where the
        body did not say FINISHED."""
        from autoopt.tracking import RunStatus  # here: this module imports no more than Ray

        if kind is not None:
            return RunStatus.KILLED if issubclass(kind, KeyboardInterrupt) else RunStatus.FAILED
        return self.status or RunStatus.FAILED


def _token_auth_for(address: str) -> None:
    """Present a Ray auth token when joining ``address`` where its head expects one.

    A head from ``ray start --head`` turns token authentication on whenever a token exists
    (``~/.ray/auth_token``, which any local ``ray.init`` creates), but a driver joining by an
    explicit address never does, and fails with "Failed to connect". Turn it on (as Ray does
    for ``address="auto"``) when the user gave a token (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``), or when the head runs on this machine and so read the same token
    file: the local token is never sent to another host. An explicit ``RAY_AUTH_MODE`` wins.
    A head without authentication ignores the token.

    Ray's public switch is the ``RAY_AUTH_MODE`` environment variable, but Ray reads it once,
    when it is imported; a driver that imported Ray before (a notebook, a test) would not see
    it. Ray's own helper re-reads it: the one private Ray name autoopt uses (ray is pinned to
    the tested minor version, and ``tests/test_dispatch.py`` fails loudly if it moves).
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
    except ImportError:  # a Ray without token authentication: nothing to turn on
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _on_this_machine(host: str) -> bool:
    """Whether ``host`` names one of this machine's addresses (it can be bound to)."""
    try:
        ip = socket.gethostbyname(host.strip("[]"))
        with socket.socket() as probe:
            probe.bind((ip, 0))
        return True
    except OSError:
        return False
