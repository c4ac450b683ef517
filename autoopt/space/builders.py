"""Builders: the optimizer and the scheduler of a trial (used by trials and by ``recommend()``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autoopt.space.families import Family, ModelOrParams
from autoopt.space.registry import family
from autoopt.space.schedules import schedule

if TYPE_CHECKING:
    import torch


def param_groups(model_or_params: ModelOrParams, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with no weight decay on biases and normalisation weights (ndim < 2)."""
    params = model_or_params.parameters() if hasattr(model_or_params, "parameters") else model_or_params
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def optimizer_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """Turn searched names into constructor arguments (``beta1``, ``beta2`` -> ``betas``)."""
    kwargs = dict(params)
    betas = [kwargs.pop(k) for k in ("beta1", "beta2", "beta3") if k in kwargs]
    if betas:
        kwargs["betas"] = tuple(betas)
    return kwargs


def build_optimizer(model_or_params: ModelOrParams, name: str | Family, params: Mapping[str, Any]
                    ) -> torch.optim.Optimizer:
    """Build family ``name`` (a registered name, or a ``Family``) with ``params`` on a module
    (preferred) or an iterable of parameters."""
    fam = name if isinstance(name, Family) else family(name)
    params = fam.adjust(dict(params)) if fam.adjust else dict(params)
    cls = fam.load_class()
    kwargs = optimizer_kwargs(params)
    if fam.split is not None:
        return cls(fam.split(model_or_params, kwargs), **{k: v for k, v in kwargs.items()
                                                           if k != "weight_decay"})
    wd = kwargs.pop("weight_decay", 0.0)
    return cls(param_groups(model_or_params, wd), **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, params: Mapping[str, Any], *, epochs: int,
                    steps_per_epoch: int) -> Any:
    """Build schedule ``name``; ``None`` for ``none``. Step it once per optimizer step, except
    ``plateau``: once per epoch with the validation loss (``Schedule.per_epoch``)."""
    sched = schedule(name)
    if sched.build is None:
        return None
    from torch.optim.lr_scheduler import LinearLR, SequentialLR

    warm_steps = int(params.get("warmup_ratio", 0.0) * epochs * steps_per_epoch) if sched.warmup else 0
    if warm_steps < 1:
        return sched.build(optimizer, dict(params), epochs, steps_per_epoch)
    # The main schedule spans what is left after warmup, so cosine still reaches its floor.
    main = sched.build(optimizer, dict(params), epochs - warm_steps / steps_per_epoch, steps_per_epoch)
    warm = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warm_steps)
    return SequentialLR(optimizer, [warm, main], milestones=[warm_steps])
