"""``@autoopt.trainable``: the mark that makes a user's own training function a task.

A marked function trains one trial in the user's own loop (any DataLoader, loss, metric,
precision); ``autoopt tune --task module:function`` finds the mark and calls the function in
each trial on a warm worker (``autoopt.training.loop``). The mark is checked where it is
written: a bad direction is refused at the decorator, before any command runs.

>>> @trainable(metric="val_mae", direction="minimize")
... def train(run):
...     run.report(val_mae=0.5)
>>> marked(train).metric, marked(train).direction
('val_mae', 'minimize')
>>> marked(len) is None
True

Light at import (the standard library only): ``import autoopt`` in a user's module stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from autoopt.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])
ATTR = "__autoopt_trainable__"
DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class Trainable:
    """What the mark declares: the metric ``run.report`` must give every epoch, its direction,
    and ``setup(data_dir)``, run once per worker process (its result is the function's second
    argument)."""

    metric: str
    direction: str
    setup: Callable[..., Any] | None = None

    @property
    def score(self) -> str:
        """The metric's stem: ``val_mae`` -> ``mae`` (the test score is ``test_<stem>``)."""
        return self.metric.removeprefix("val_")


def trainable(metric: str = "val_loss", direction: str = "minimize",
              setup: Callable[..., Any] | None = None) -> Callable[[F], F]:
    """Mark ``fn(run)`` (or ``fn(run, data)`` with a ``setup``) as one trial of the user's own
    loop, judged by ``metric`` in ``direction``. The function is returned unchanged (callable
    as before, picklable by reference); bad arguments are a ``UsageError`` naming the fix.

    >>> trainable(metric="val_loss", direction="sideways")
    Traceback (most recent call last):
    ...
    autoopt.errors.UsageError: trainable: direction 'sideways' is neither 'maximize' nor 'minimize'
    """
    if direction not in DIRECTIONS:
        raise UsageError(f"trainable: direction {direction!r} is neither 'maximize' nor 'minimize'")
    if not isinstance(metric, str) or not metric.isidentifier():
        raise UsageError(f"trainable: metric {metric!r} must be a name run.report takes as a keyword, "
                         "such as 'val_loss'")
    if setup is not None and not callable(setup):
        raise UsageError(f"trainable: setup is {type(setup).__name__}, not a function of the data folder")
    mark = Trainable(metric, direction, setup)

    def wrap(fn: F) -> F:
        if not callable(fn):
            raise UsageError(f"trainable: marks a function, not {type(fn).__name__}")
        setattr(fn, ATTR, mark)
        return fn

    return wrap


def marked(fn: object) -> Trainable | None:
    """The mark on ``fn``, or None for an unmarked function."""
    mark = getattr(fn, ATTR, None)
    return mark if isinstance(mark, Trainable) else None
