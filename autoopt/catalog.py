"""The built-in tasks as light data: their names, where their data comes from, and the check of
a task name. The standard library only (no torch), so ``autoopt tasks`` and ``autoopt
recommend`` answer at once; ``autoopt.tasks`` re-exports these and builds the tasks.

>>> sorted(BUILTIN) == sorted(SOURCES)
True
>>> check_task_name("digits")
'digits'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from autoopt.errors import UsageError

# The default Optuna storage (``--storage``, ``AUTOOPT_STORAGE``).
DEFAULT_STORAGE = "sqlite:///autoopt.db"

BUILTIN: dict[str, str] = {
    "digits": "autoopt.tasks.digits",
    "mnist": "autoopt.tasks.mnist",
    "cifar10": "autoopt.tasks.cifar10",
    # module:function where one module builds several tasks
    "digits_lstm": "autoopt.tasks.sequence:load_digits",
    "mnist_lstm": "autoopt.tasks.sequence:load_mnist",
}

# Where each built-in task's data comes from (``autoopt tasks``, ``Task.source``).
SOURCES: dict[str, str] = {
    "digits": "scikit-learn's bundled 8x8 digits (offline)",
    "mnist": "torchvision MNIST (IDX files, downloaded into the data folder)",
    "cifar10": "torchvision CIFAR-10 (python pickle batches, downloaded into the data folder)",
    "digits_lstm": "scikit-learn's bundled 8x8 digits (offline), 8 rows of 8 pixels read by an LSTM",
    "mnist_lstm": "torchvision MNIST (IDX files, downloaded into the data folder), 28 rows read by an LSTM",
}


def check_task_name(name: str) -> str:
    """Check a task name without loading data: built-in, or an importable ``module:function``."""
    if name in BUILTIN:
        return name
    if ":" in name:
        resolve_function(name)
        return name
    raise UsageError(f"unknown task '{name}'; known tasks: {', '.join(sorted(BUILTIN))}, or module:function")


def resolve_function(name: str) -> Callable[..., Any]:
    """The function of a ``module:function`` task; whatever stops importing it is a one-line
    ``UsageError`` naming the fix."""
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise UsageError(f"task '{name}': no module named {module_name}; put its folder on PYTHONPATH "
                             "(on a cluster: on every node)") from None
        raise UsageError(f"task '{name}': {module_name} imports {missing}, which is not installed; "
                         f"install it (pip install {missing.partition('.')[0]})") from None
    except SyntaxError as exc:
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else module_name
        raise UsageError(f"task '{name}': {module_name} has a syntax error ({where}: {exc.msg}); fix the file"
                         ) from None
    except Exception as exc:
        raise UsageError(f"task '{name}': importing {module_name} raised {type(exc).__name__}: "
                         f"{one_line(exc)}; fix the module") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UsageError(f"task '{name}': {module_name} has no function {attr}; name it as module:function")
    return fn


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most 200 characters."""
    text = " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "")
