"""autoopt: which optimizer, with which settings and schedule, should this task train with?

>>> from autoopt import recommend
>>> rec = recommend("digits", storage="sqlite:///no-such.db", fallback="prior")
>>> rec.optimizer
'adamw'

The public API is imported lazily, so ``import autoopt`` and ``autoopt --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "tune": "autoopt.commands.tuning",
    "recommend": "autoopt.recommendation",
    "Recommendation": "autoopt.recommendation",
    "register_optimizer": "autoopt.space",
    "LogUniform": "autoopt.space",
    "Uniform": "autoopt.space",
    "IntRange": "autoopt.space",
    "Choice": "autoopt.space",
    "Fixed": "autoopt.space",
    "Task": "autoopt.tasks.base",
    "Split": "autoopt.data",
    "Preprocess": "autoopt.data",
    "UsageError": "autoopt.errors",
    "trainable": "autoopt.mark",
    "Run": "autoopt.training.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autoopt' has no attribute {name!r}")
