"""Tasks: the built-in ones and a user's own ``module:function``.

>>> sorted(BUILTIN)
['cifar10', 'digits', 'digits_lstm', 'mnist', 'mnist_lstm']
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoopt.errors import UsageError
from autoopt.tasks.base import Task

BUILTIN: dict[str, str] = {
    "digits": "autoopt.tasks.digits",
    "mnist": "autoopt.tasks.mnist",
    "cifar10": "autoopt.tasks.cifar10",
    # module:function where one module builds several tasks
    "digits_lstm": "autoopt.tasks.sequence:load_digits",
    "mnist_lstm": "autoopt.tasks.sequence:load_mnist",
}

__all__ = ["BUILTIN", "Task", "check_task_name", "default_data_dir", "load_task"]


def default_data_dir() -> Path:
    return Path(os.environ.get("AUTOOPT_DATA") or Path.home() / ".cache" / "autoopt" / "data")


def check_task_name(name: str) -> str:
    """Check a task name without loading data: built-in, or an importable ``module:function``."""
    if name in BUILTIN:
        return name
    if ":" in name:
        _resolve_function(name)
        return name
    raise UsageError(f"unknown task '{name}'; known tasks: {', '.join(sorted(BUILTIN))}, or module:function")


def _resolve_function(name: str) -> Callable[..., Task]:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"task '{name}': cannot import module {module_name} ({exc}); "
                         "is it on PYTHONPATH?") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UsageError(f"task '{name}': {module_name} has no function {attr}")
    return fn


def load_task(name: str, data_dir: Path | str | None = None) -> Task:
    """Build a task by name: ``digits``, ``mnist``, ``cifar10`` or ``module:function``.

    A ``module:function`` is called with the data folder (``fn(data_dir)``) and returns a ``Task``.
    """
    root = Path(data_dir) if data_dir else default_data_dir()
    check_task_name(name)
    if name in BUILTIN:
        return _builtin(name)[1](root)
    task = _resolve_function(name)(root)
    if not isinstance(task, Task):
        raise UsageError(f"task '{name}' returned {type(task).__name__}, not an autoopt Task")
    return task


def _builtin(name: str) -> tuple[Any, Callable[..., Task]]:
    """A built-in task's module and loader: ``module`` (its ``load``) or ``module:function``."""
    module_name, _, fn = BUILTIN[name].partition(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, fn or "load")


def task_sources() -> dict[str, str]:
    """Where each built-in task's data comes from (``autoopt tasks``)."""
    sources = {}
    for name in BUILTIN:
        module = _builtin(name)[0]
        sources[name] = getattr(module, "SOURCES", {}).get(name, module.SOURCE)
    return sources
