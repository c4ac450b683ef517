"""A made-up task with a loss plateau, for the pruning tests: ``late_bloomer:task``.

The model is a point on a designed loss landscape, trained by the real optimizers through
``autoopt.training.train`` (regression, so the metric is ``val_rmse``, lower is better):

* a **well** holds a shortcut coordinate ``s``; a large learning rate throws ``s`` over the
  rim into the **shortcut**, which takes the loss from 1.0 to 0.64 (rmse 0.8) at once and then
  starves the other coordinate: those configs *start fast, then stall*;
* the **plateau**: the loss is almost flat along ``d`` for a stretch, then falls to 0. Only a
  steady push crosses it in time, which is what a small learning rate with momentum gives;
  momentum also rings in the well at first, so those configs look slightly *worse* than
  the rest for the first epochs: the *late bloomers*;
* small learning rates without enough momentum never leave the plateau (rmse 1.0).

>>> from autoopt.space import TrialConfig
>>> from autoopt.training.train import train
>>> def rmse(lr, momentum):
...     result = train(task(), TrialConfig("sgd", {"lr": lr, "momentum": momentum}), epochs=EPOCHS)
...     return [round(h["val_rmse"], 2) for h in result.history]
>>> rmse(0.3, 0.9)[:3], rmse(0.3, 0.9)[-1]   # starts fast, stalls
([0.8, 0.8, 0.8], 0.8)
>>> rmse(0.15, 0.9)[:3], rmse(0.15, 0.9)[-1]  # sits on the plateau, then solves it
([1.09, 1.0, 1.01], 0.0)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoopt.data import Preprocess, Split
from autoopt.tasks.base import Task

EPOCHS = 12
STEPS_PER_EPOCH = 8
K = 20.0  # curvature of the well: SGD throws s over the rim when lr * K > 2 (1 + momentum)
S0 = 0.1  # where s starts, inside the well
RIM, RIM_WIDTH = 1.0, 0.2
SHORTCUT = 0.36  # the shortcut's gain: loss 1 -> 0.64
SLOPE = 0.01  # of the plateau along d
PLATEAU, DROP_WIDTH = 1.0, 0.5


def _smooth(u: torch.Tensor) -> torch.Tensor:
    u = u.clamp(0.0, 1.0)
    return u * u * (3 - 2 * u)


class Landscape(nn.Module):
    """Two coordinates, ``s`` (shortcut) and ``d`` (plateau); the output is the loss's root,
    so that the mean squared error against zero targets is the loss itself."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(S0))
        self.d = nn.Parameter(torch.tensor(0.0))

    def loss(self) -> torch.Tensor:
        shortcut = _smooth((self.s.abs() - RIM) / RIM_WIDTH)  # 0 in the well, 1 beyond its rim
        drop = _smooth((self.d - PLATEAU) / DROP_WIDTH)
        solved = (1 - drop) * SLOPE * self.d.clamp(max=PLATEAU) + drop  # exactly 1 past the drop
        well = 0.5 * K * self.s ** 2 * (1 - shortcut)
        # The well matters only until the task is solved; the shortcut blocks solving it.
        return well * (1 - solved) + (1 - SHORTCUT * shortcut) * (1 - solved * (1 - shortcut)) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.loss() + 1e-12).sqrt().expand(len(x), 1)


def task(data_dir: Path | None = None) -> Task:
    """The task (inputs and targets are zeros: the landscape is the whole problem)."""
    x = torch.zeros(8 * STEPS_PER_EPOCH, 1)
    y = torch.zeros(8 * STEPS_PER_EPOCH, 1)
    return Task("late_bloomer", Landscape, Split(x, y), Split(x[:8], y[:8]), loss="mse", batch_size=8,
                preprocess=Preprocess(scale=1.0))


# Configs of the tests' studies, in the order they run: a few that stall or start fast, then
# the rest mixed. (learning rate, momentum) -> what it does.
CONFIGS = [
    (0.05, 0.5),   # never leaves the plateau
    (0.3, 0.9),    # starts fast, stalls
    (0.1, 0.5),    # plateau
    (0.3, 0.5),    # starts fast, stalls
    (0.05, 0.8),   # plateau
    (0.15, 0.9),   # late bloomer: breaks away at epoch 6
    (0.3, 0.8),    # starts fast, stalls
    (0.1, 0.95),   # late bloomer: epoch 6
    (0.1, 0.8),    # plateau
    (0.05, 0.95),  # late bloomer: epoch 9
    (0.3, 0.95),   # starts fast, stalls
    (0.05, 0.9),   # plateau
    (0.1, 0.9),    # late bloomer: epoch 9
    (0.15, 0.5),   # rings, ends on the plateau
    (0.15, 0.95),  # late bloomer
    (0.15, 0.8),   # the latest bloomer: epoch 11
]
