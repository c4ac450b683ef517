"""A user's own task: regression on scikit-learn's diabetes data (442 patients, 10 features,
offline), scored by ``val_rmse`` (minimize).

Run it with the folder holding this file on PYTHONPATH (on a cluster, on every worker's too)::

    PYTHONPATH=examples autoopt tune --task regression_task:task --trials 20 --epochs 30

``autoopt`` calls ``task(data_dir)``; ``data_dir`` is ``--data-dir`` (unused here: the data ships
with scikit-learn).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoopt import Preprocess, Split, Task


def _standardise(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (x - ref.mean(0)) / ref.std(0).clamp_min(1e-8)


def task(data_dir: Path | None = None) -> Task:
    """Three splits (train 60%, validation 20%, test 20%), a small MLP and the MSE loss."""
    from sklearn.datasets import load_diabetes

    x_all, y_all = load_diabetes(return_X_y=True)
    x = torch.tensor(x_all, dtype=torch.float32)
    y = torch.tensor(y_all, dtype=torch.float32).unsqueeze(1)  # (N, 1): one target per row
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    n_train, n_val = int(0.6 * len(x)), int(0.2 * len(x))
    train_x = x[:n_train]
    # Features standardised with the training rows' statistics, targets scaled to ~unit size.
    x = _standardise(x, train_x)
    y = (y - y[:n_train].mean()) / y[:n_train].std()
    train = Split(x[:n_train], y[:n_train])
    val = Split(x[n_train:n_train + n_val], y[n_train:n_train + n_val])
    test = Split(x[n_train + n_val:], y[n_train + n_val:])

    def build_model() -> nn.Module:
        return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))

    # The inputs are already scaled floats: Preprocess(scale=1.0) passes them through as they are.
    return Task("diabetes", build_model, train, val, test, loss="mse", batch_size=32,
                preprocess=Preprocess(scale=1.0), source="scikit-learn's bundled diabetes data (offline)")
