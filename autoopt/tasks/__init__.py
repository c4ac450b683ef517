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

from autoopt.catalog import BUILTIN, SOURCES, check_task_name, one_line, resolve_function
from autoopt.data import Split
from autoopt.errors import UsageError
from autoopt.mark import marked
from autoopt.tasks.base import LOSSES, Task
from autoopt.tasks.loop import UserLoop, load_loop

__all__ = ["BUILTIN", "Loaded", "Task", "UserLoop", "check_task", "check_task_name", "default_data_dir",
           "load_task"]

# What a task name loads: a Task (tensors, autoopt's loop) or a UserLoop (the user's own loop).
Loaded = Task | UserLoop


def default_data_dir() -> Path:
    return Path(os.environ.get("AUTOOPT_DATA") or Path.home() / ".cache" / "autoopt" / "data")


def load_task(name: str, data_dir: Path | str | None = None) -> Loaded:
    """Build a task by name: ``digits``, ``mnist``, ``cifar10`` or ``module:function``.

    A ``module:function`` marked ``@autoopt.trainable`` is the user's own loop: its ``setup``
    runs here (``UserLoop``). Any other is called with the data folder (``fn(data_dir)``) and
    returns a ``Task``. Whatever goes wrong in a user's function (an exception, something that
    is not a ``Task``, splits whose x and y differ in length, an unknown loss, a setup that
    raises) is a one-line ``UsageError``.
    """
    root = Path(data_dir) if data_dir else default_data_dir()
    check_task_name(name)
    if name in BUILTIN:
        return _builtin(name)[1](root)
    fn = resolve_function(name)
    mark = marked(fn)
    if mark is not None:
        return load_loop(name, fn, mark, root)
    try:
        task = fn(root)
    except UsageError as exc:
        raise UsageError(f"task '{name}': {exc}") from None
    except Exception as exc:
        raise UsageError(f"task '{name}': {name.replace(':', '.')}(data_dir) raised {type(exc).__name__}: "
                         f"{one_line(exc)}; fix the task function") from None
    check_task(task, name)
    return task


def check_task(task: object, name: str) -> None:
    """Refuse a task no trial could train: not a ``Task``, a split that is not a ``Split`` or
    whose x and y differ in length, an unknown loss."""
    if not isinstance(task, Task):
        raise UsageError(f"task '{name}' returned {type(task).__name__}, not an autoopt Task, and is not marked "
                         "@autoopt.trainable; return Task(name, build_model, train, val, test), or mark your "
                         "training function @autoopt.trainable(metric=..., direction=...)")
    if task.loss not in LOSSES:
        raise UsageError(f"task '{name}': unknown loss {task.loss!r}; use one of {', '.join(sorted(LOSSES))}")
    for split_name in ("train", "val", "test"):
        split = getattr(task, split_name)
        if split is None and split_name == "test":
            continue
        if not isinstance(split, Split):
            raise UsageError(f"task '{name}': {split_name} is {type(split).__name__}, not an autoopt Split; "
                             "wrap the tensors as Split(x, y)")
        if len(split.x) != len(split.y) or len(split) == 0:
            raise UsageError(f"task '{name}': the {split_name} split has {len(split.x)} inputs and "
                             f"{len(split.y)} targets; give x and y the same, non-zero number of rows")
    if not callable(task.build_model):
        raise UsageError(f"task '{name}': build_model must be a function returning a torch module")


def _builtin(name: str) -> tuple[Any, Callable[..., Task]]:
    """A built-in task's module and loader: ``module`` (its ``load``) or ``module:function``."""
    module_name, _, fn = BUILTIN[name].partition(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, fn or "load")


def task_sources() -> dict[str, str]:
    """Where each built-in task's data comes from (``autoopt tasks``), without importing a task."""
    return dict(SOURCES)
