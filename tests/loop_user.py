"""A user's own training loops for the trainable door's tests (``loop_user:train``, ...): a
DataLoader over a dataset, its own Huber loss and MAE metric, a setup that leaves one marker per
call in ``LOOP_SETUP_LOG`` (so a test counts the processes that ran it)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autoopt


def setup(data_dir: Any = None) -> dict[str, TensorDataset]:
    """Once per worker process: the data, reused by every trial that worker runs."""
    log = os.environ.get("LOOP_SETUP_LOG")
    if log:
        with open(os.path.join(log, f"setup-{os.getpid()}"), "a") as fh:
            fh.write("setup\n")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=g)
    y = torch.sin(x @ torch.randn(8, 1, generator=g)) + 0.1 * torch.randn(1024, 1, generator=g)
    return {"train": TensorDataset(x[:768], y[:768]), "val": TensorDataset(x[768:896], y[768:896]),
            "test": TensorDataset(x[896:], y[896:])}


def mae(model: nn.Module, ds: TensorDataset, device: torch.device) -> float:
    xs, ys = ds.tensors
    return (model(xs.to(device)) - ys.to(device)).abs().mean().item()


@autoopt.trainable(metric="val_mae", direction="minimize", setup=setup)
def train(run: Any, data: dict[str, TensorDataset]) -> None:
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)).to(run.device)
    loader = DataLoader(data["train"], batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(run.seed))
    opt = run.optimizer(model)
    sched = run.scheduler(opt, steps_per_epoch=len(loader))
    huber = nn.HuberLoss()
    for _ in range(run.epochs):
        model.train()
        for xb, yb in loader:
            loss = huber(model(xb.to(run.device)), yb.to(run.device))
            opt.zero_grad()
            loss.backward()
            run.clip(model)
            opt.step()
            if sched is not None:
                sched.step()
        with run.evaluating(model, opt):
            run.report(val_mae=mae(model, data["val"], run.device), train_huber=loss.item())
    with run.evaluating(model, opt):
        run.report_test(mae(model, data["test"], run.device))


@autoopt.trainable(metric="val_mae", direction="minimize")
def broken(run: Any) -> None:
    raise ValueError("boom in the user's loop")
