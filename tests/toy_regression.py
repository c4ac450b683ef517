"""A small regression task no study file tunes, for trying autoopt as a new user would:
``toy_regression:task`` (an MLP fits a smooth function of 8 inputs with noise; ``val_rmse``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoopt.data import Preprocess, Split
from autoopt.tasks.base import Task


def _data(n: int, gen: torch.Generator) -> Split:
    x = torch.randn(n, 8, generator=gen)
    y = torch.sin(2 * x[:, :1]) * x[:, 1:2] + 0.5 * x[:, 2:3] ** 2 - x[:, 3:4] * x[:, 4:5]
    return Split(x, y + 0.1 * torch.randn(n, 1, generator=gen))


def task(data_dir: Path | None = None) -> Task:
    gen = torch.Generator().manual_seed(0)
    return Task("toy_regression", lambda: nn.Sequential(nn.Linear(8, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(),
                                                        nn.Linear(64, 1)),
                _data(2048, gen), _data(512, gen), _data(512, gen), loss="mse", batch_size=128,
                preprocess=Preprocess(scale=1.0))
