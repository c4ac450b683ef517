"""What a task is: a model factory, three device-ready splits, a loss and a metric."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from autoopt.data import Preprocess, Split
from autoopt.direction import Direction
from autoopt.errors import UsageError

LOSSES: dict[str, tuple[str, Direction]] = {"cross_entropy": ("accuracy", "maximize"), "mse": ("rmse", "minimize")}


@dataclass
class Task:
    """A training problem autoopt tunes an optimizer for.

    ``build_model()`` returns a fresh ``nn.Module``; ``train``/``val``/``test`` hold the data
    as tensors (validation is held out from the training split; test is only used to score
    the recommendation); ``preprocess`` turns stored inputs into model inputs. Classification
    uses ``loss="cross_entropy"`` and is scored by ``val_accuracy`` (maximize); regression uses
    ``loss="mse"`` and ``val_rmse`` (minimize).

    A user's own task is a function returning a ``Task``, named ``module:function``:

    >>> import torch
    >>> from autoopt.data import Split
    >>> def my_task(data_dir=None):
    ...     x, y = torch.randn(64, 3), torch.randn(64, 1)
    ...     s = Split(x, y)
    ...     return Task("toy", lambda: torch.nn.Linear(3, 1), s, s, s, loss="mse")
    >>> my_task().metric
    'val_rmse'
    """

    name: str
    build_model: Callable[[], torch.nn.Module]
    train: Split
    val: Split
    test: Split | None = None
    loss: str = "cross_entropy"
    batch_size: int = 128
    preprocess: Preprocess = field(default_factory=lambda: Preprocess(scale=1.0))
    source: str = ""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UsageError(f"task {self.name}: unknown loss {self.loss!r}; use one of {', '.join(sorted(LOSSES))}")

    @property
    def score(self) -> str:
        """The metric's stem: ``accuracy`` or ``rmse``."""
        return LOSSES[self.loss][0]

    @property
    def metric(self) -> str:
        return f"val_{self.score}"

    @property
    def direction(self) -> Direction:
        return LOSSES[self.loss][1]

    def to(self, device: torch.device | str) -> Task:
        """The same task with its splits moved to ``device`` (once per worker)."""
        test = self.test.to(device) if self.test is not None else None
        return Task(self.name, self.build_model, self.train.to(device), self.val.to(device), test,
                    self.loss, self.batch_size, self.preprocess, self.source)
