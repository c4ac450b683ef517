"""Tasks: the built-in ones and a user's own ``module:function``.

>>> sorted(BUILTIN)
['cifar10', 'digits', 'mnist']
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

from autoopt.errors import UsageError
from autoopt.tasks.base import Task

BUILTIN: dict[str, str] = {
    "digits": "autoopt.tasks.digits",
    "mnist": "autoopt.tasks.mnist",
    "cifar10": "autoopt.tasks.cifar10",
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
        return importlib.import_module(BUILTIN[name]).load(root)
    task = _resolve_function(name)(root)
    if not isinstance(task, Task):
        raise UsageError(f"task '{name}' returned {type(task).__name__}, not an autoopt Task")
    return task


def task_sources() -> dict[str, str]:
    """Where each built-in task's data comes from (``autoopt tasks``)."""
    return {n: importlib.import_module(m).SOURCE for n, m in BUILTIN.items()}
