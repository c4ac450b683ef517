"""The Ray session: join a cluster (with its auth token) or start a local Ray; stop it."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import ray

from autoopt.errors import UsageError


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
    # Workers must import a user's `module:function` from the folder tune runs in.
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    # address="local": always a fresh in-process cluster, never one some `ray start` left running.
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus,
             runtime_env={"env_vars": {"PYTHONPATH": path}}, **kwargs)
    return True


def stop_ray() -> None:
    ray.shutdown()


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
