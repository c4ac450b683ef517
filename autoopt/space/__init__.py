"""THE registry: optimizer families, schedulers, gradient clipping and their search space.

One table (``FAMILIES``) maps a family name to its optimizer class, its conditional
search space and its protocol (whether it takes a scheduler, whether it needs
``optimizer.train()``/``optimizer.eval()``, whether it splits the parameters). The same
table feeds ``suggest_config`` (Optuna), ``build_optimizer`` (trials and ``recommend()``),
``autoopt tasks``/docs and the tests that loop over every family. Adding an optimizer is
one entry, or one call to ``register_optimizer``.

The package, by job:

* ``dims``: the search dimensions (``LogUniform``, ``Choice``, ...), read from YAML and checked;
* ``families``: ``Family`` (class, space, protocol, published defaults) and ``make_family``;
* ``builtin``: the built-in families and ``PORTFOLIO_PRIOR``;
* ``registry``: ``REGISTRY``, ``family``, ``preset``, ``default_params``, ``resolve_optimizers``;
* ``schedules``: the learning-rate schedules, warmup and clipping ranges;
* ``config``: ``TrialConfig``, a study's ``SearchSpace`` and ``suggest_config``;
* ``builders``: ``build_optimizer`` and ``build_scheduler``.

>>> import torch
>>> model = torch.nn.Linear(4, 2)
>>> opt = build_optimizer(model, "sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True})
>>> type(opt).__name__
'SGD'
"""

from __future__ import annotations

from autoopt.space.builders import build_optimizer, build_scheduler, optimizer_kwargs, param_groups
from autoopt.space.builtin import PORTFOLIO_PRIOR, muon_hidden_params
from autoopt.space.config import PRUNERS, SAMPLERS, SearchSpace, TrialConfig, suggest_config
from autoopt.space.dims import (
    Choice,
    Dimension,
    Fixed,
    IntRange,
    LogUniform,
    Uniform,
    check_dimension,
    check_space,
    default_of,
    parse_dimension,
    suggest,
)
from autoopt.space.families import PRESETS, Family, family_defaults, make_family
from autoopt.space.registry import (
    FAMILIES,
    REGISTRY,
    Registry,
    default_params,
    family,
    preset,
    register_optimizer,
    resolve_optimizers,
)
from autoopt.space.schedules import GRAD_CLIP, SCHEDULES, WARMUP, Schedule, schedule

__all__ = [
    "FAMILIES", "GRAD_CLIP", "PORTFOLIO_PRIOR", "PRESETS", "PRUNERS", "REGISTRY", "SAMPLERS", "SCHEDULES", "WARMUP",
    "Choice", "Dimension", "Family", "Fixed", "IntRange", "LogUniform", "Registry", "Schedule", "SearchSpace",
    "TrialConfig", "Uniform", "build_optimizer", "build_scheduler", "check_dimension", "check_space", "default_of",
    "default_params", "family", "family_defaults", "make_family", "muon_hidden_params", "optimizer_kwargs",
    "param_groups", "parse_dimension", "preset", "register_optimizer", "resolve_optimizers", "schedule", "suggest",
    "suggest_config",
]
