"""What a task is: a model factory, three device-ready splits, a loss and a metric."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from autoopt.base.direction import Direction
from autoopt.data import Preprocess, Split
from autoopt.errors import UsageError

# Each loss's usual score (the metric's stem) and its direction.
LOSSES: dict[str, tuple[str, Direction]] = {"cross_entropy": ("accuracy", "maximize"), "mse": ("rmse", "minimize")}
BY_LOSS = "loss"  # the score of a task judged by its validation loss itself (minimize)


@dataclass
class Task:
    """A training problem autoopt tunes an optimizer for.

    ``build_model()`` returns a fresh ``nn.Module``; ``train``/``val``/``test`` hold the data
    as tensors (validation is held out from the training split; test is only used to score
    the recommendation); ``preprocess`` turns stored inputs into model inputs. Classification
    uses ``loss="cross_entropy"`` and is scored by ``val_accuracy`` (maximize); regression uses
    ``loss="mse"`` and ``val_rmse`` (minimize). A task judged by its loss itself (a language
    model: cross-entropy, reported with its perplexity) says ``score="loss"``, so that it is
    tuned on what it is judged by: ``val_loss`` (minimize). ``score`` holds the metric's stem
    (``accuracy``, ``rmse`` or ``loss``); left empty, it is the loss's usual one.

    A user's own task is a function returning a ``Task``, named ``module:function``:

    >>> import torch
    >>> from autoopt.data import Split
    >>> def my_task(data_dir=None):
    ...     x, y = torch.randn(64, 3), torch.randn(64, 1)
    ...     s = Split(x, y)
    ...     return Task("toy", lambda: torch.nn.Linear(3, 1), s, s, s, loss="mse")
    >>> my_task().metric
    'val_rmse'
    >>> s = Split(torch.randn(8, 3), torch.randint(0, 5, (8,)))
    >>> by_loss = Task("by_loss", lambda: torch.nn.Linear(3, 5), s, s, score="loss")
    >>> by_loss.score, by_loss.metric, by_loss.direction
    ('loss', 'val_loss', 'minimize')
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
    score: str = ""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UsageError(f"task {self.name}: unknown loss {self.loss!r}; use one of {', '.join(sorted(LOSSES))}")
        usual = LOSSES[self.loss][0]
        self.score = self.score or usual
        if self.score not in (usual, BY_LOSS):
            raise UsageError(f"task {self.name}: unknown score {self.score!r} for loss {self.loss}; "
                             f"use {usual!r} or {BY_LOSS!r}")

    @property
    def metric(self) -> str:
        """The validation metric trials are scored by: ``val_`` and the score."""
        return f"val_{self.score}"

    @property
    def direction(self) -> Direction:
        """Whether the metric improves up (an accuracy) or down (an error or a loss)."""
        return "minimize" if self.score == BY_LOSS else LOSSES[self.loss][1]

    @property
    def reports_test(self) -> bool:
        """Whether a confirmation run reports a test score (the task has a test split)."""
        return self.test is not None

    def to(self, device: torch.device | str) -> Task:
        """The same task with its splits moved to ``device`` (once per worker)."""
        test = self.test.to(device) if self.test is not None else None
        return Task(self.name, self.build_model, self.train.to(device), self.val.to(device), test,
                    self.loss, self.batch_size, self.preprocess, self.source, self.score)
