"""Learning-rate schedules: their search spaces and how each is built; warmup and clipping ranges."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoopt.errors import UsageError
from autoopt.space.dims import Choice, Dimension, IntRange, LogUniform, Uniform

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: its search space and how it is built.

    ``build(optimizer, params, epochs, steps_per_epoch)`` returns a torch scheduler that is
    stepped once per optimizer step, except ``per_epoch`` ones (plateau), stepped once per
    epoch with the validation loss; ``epochs`` is fractional after a warmup (what is left of
    the run). ``warmup`` says whether linear warmup may be put in front.
    """

    name: str
    space: Mapping[str, Dimension]
    build: Callable[[torch.optim.Optimizer, dict[str, Any], float, int], Any] | None
    per_epoch: bool = False
    warmup: bool = True


def _step_lr(opt: torch.optim.Optimizer, p: dict[str, Any], epochs: float, steps: int) -> Any:
    from torch.optim.lr_scheduler import StepLR

    return StepLR(opt, step_size=max(1, int(p["step_epochs"] * steps)), gamma=p["gamma"])


def _cosine(opt: torch.optim.Optimizer, p: dict[str, Any], epochs: float, steps: int) -> Any:
    from torch.optim.lr_scheduler import LambdaLR

    # A factor, not CosineAnnealingLR's one absolute eta_min: each group decays to its own
    # lr x eta_min_ratio (Muon's AdamW group runs ~100x below its Muon group).
    total, floor = max(1, epochs * steps), p["eta_min_ratio"]
    return LambdaLR(opt, lambda step: (
        floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))))


def _onecycle(opt: torch.optim.Optimizer, p: dict[str, Any], epochs: float, steps: int) -> Any:
    from torch.optim.lr_scheduler import OneCycleLR

    # max_lr is the tuned lr; momentum is cycled only where every group has the key OneCycleLR
    # cycles (it reads the optimizer's defaults: Muon's mixed groups have neither there).
    key = "betas" if "betas" in opt.defaults else "momentum" if "momentum" in opt.defaults else None
    cycle = key is not None and all(key in g for g in opt.param_groups)
    return OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=max(2, math.ceil(epochs * steps)),
                      pct_start=p["pct_start"], cycle_momentum=cycle)


def _plateau(opt: torch.optim.Optimizer, p: dict[str, Any], epochs: float, steps: int) -> Any:
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    return ReduceLROnPlateau(opt, factor=p["factor"], patience=p["patience"])


def _exponential(opt: torch.optim.Optimizer, p: dict[str, Any], epochs: float, steps: int) -> Any:
    from torch.optim.lr_scheduler import ExponentialLR

    # gamma is searched per epoch (what people reason about) and applied per step.
    return ExponentialLR(opt, gamma=p["gamma"] ** (1.0 / max(1, steps)))


SCHEDULES: dict[str, Schedule] = {
    "none": Schedule("none", {}, None),
    "step": Schedule("step", {"step_epochs": IntRange(1, 5), "gamma": Uniform(0.1, 0.7)}, _step_lr),
    "cosine": Schedule("cosine", {"eta_min_ratio": LogUniform(1e-3, 0.1)}, _cosine),
    "onecycle": Schedule("onecycle", {"pct_start": Uniform(0.1, 0.4)}, _onecycle, warmup=False),
    "plateau": Schedule("plateau", {"factor": Uniform(0.1, 0.7), "patience": IntRange(0, 3)}, _plateau,
                        per_epoch=True, warmup=False),
    "exponential": Schedule("exponential", {"gamma": Uniform(0.7, 0.99)}, _exponential),
}
WARMUP = Choice(0.0, 0.05, 0.1)  # fraction of all steps spent in linear warmup
GRAD_CLIP = LogUniform(0.1, 10.0)


def schedule(name: str) -> Schedule:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise UsageError(f"unknown scheduler '{name}'; known: {', '.join(SCHEDULES)}") from None
