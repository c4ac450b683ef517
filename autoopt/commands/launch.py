"""How ``autoopt tune`` starts: the quick checks, then Ray started while the study is prepared.

A typo in a built-in task's name, the time budget, or an unreachable storage or MLflow named on
the command line is refused before Ray starts (``quick_checks``). Then Ray starts on the calling
thread (its processes live as long as the thread that started them) while, on another, the spec
is loaded, checked (``preflight``; once Ray is up, that the cluster can hold its trials) and the
study prepared (``tuning.prepare``: the study opened, MLflow's parent run begun); Ray's prestarted
workers import torch meanwhile. Bad input found there stops Ray again, with nothing created.

Light at import (the standard library only): the CLI imports it before torch, Ray or MLflow.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoopt.commands.tuning import Prepared

# CLI parameter -> spec key, where they differ.
RENAMED = {"timeout": "timeout_s", "study": "study_name", "out_dir": "out", "compile_model": "compile"}


def launch(options: dict[str, Any], run: Callable[..., None]) -> None:
    """Check ``options`` (the ``tune`` command's, by name), start Ray, prepare the study, then
    ``run(prepared, restart_ray=...)``; Ray started here is stopped here."""
    from autoopt.dispatch.session import start_ray, stop_ray  # Ray alone, not torch

    quick_checks(options.get("task"), options.get("study_file"), options.get("time_budget"),
                 options.get("storage"), options.get("mlflow_uri"))
    address = options.get("ray_address") or os.environ.get("RAY_ADDRESS") or None
    ray_up = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoopt-check") as background:
        checking = background.submit(checked_spec, options, ray_up, address)
        try:
            started = start_ray(address)
        finally:
            ray_up.set()
        try:
            prepared = checking.result()
            run(prepared, restart_ray=started and prepared.spec.placement.ray_address != address)
        finally:
            if started:
                stop_ray()


def quick_checks(task: str | None, study_file: str | None, time_budget: str | None, storage: str | None,
                 mlflow_uri: str | None) -> None:
    """What ``tune`` checks before Ray starts, as ``load_spec`` and ``preflight`` would (nothing
    created): a built-in task's name, the time budget, and the storage and MLflow named on the
    command line or in the environment."""
    from autoopt.catalog import check_task_name

    if task and not study_file and ":" not in task:
        check_task_name(task)
    if time_budget is not None:
        from autoopt.budget import check_budget, parse_duration

        check_budget(parse_duration(time_budget))
    if study_file:
        return  # it may name other stores: preflight checks them
    from autoopt.study import absolute_sqlite, check_storage
    from autoopt.tracking import check_tracking

    storage = storage or os.environ.get("AUTOOPT_STORAGE")
    mlflow_uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if storage:
        check_storage(absolute_sqlite(storage))
    if mlflow_uri:
        check_tracking(mlflow_uri)


def checked_spec(options: dict[str, Any], ray_up: threading.Event, address: str | None) -> Prepared:
    """The spec from the command's options, checked (``preflight``: the task, GPUs, storage and
    MLflow; then, once Ray is up, that the cluster can hold its trials), before anything is
    created; then its study opened and MLflow's parent run begun (``prepare``)."""
    from autoopt.base.background import give_way
    from autoopt.commands.tuning import check_placement, preflight, prepare
    from autoopt.spec import load_spec

    give_way()  # Ray's start and its workers' warm-up come first; the study is ready long before them
    options = dict(options)
    task, study_file = options.pop("task"), options.pop("study_file")
    spec = load_spec(task, study_file, **spec_keys(options))
    checked = preflight(spec)
    ray_up.wait()
    if spec.placement.ray_address == address:
        check_placement(spec)  # on the Ray joined early; another cluster is checked when joined
    return prepare(spec, checked)


def spec_keys(options: dict[str, Any]) -> dict[str, Any]:
    """The CLI's values under the spec's keys (enums as their values)."""
    from enum import Enum

    return {RENAMED.get(k, k): (v.value if isinstance(v, Enum) else v) for k, v in options.items()}
