"""One trial's configuration: ``TrialConfig``, the study's ``SearchSpace`` and ``suggest_config``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from autoopt.errors import UsageError
from autoopt.space.dims import Choice, Dimension, check_space, suggest
from autoopt.space.families import Family, family_defaults
from autoopt.space.registry import family
from autoopt.space.schedules import GRAD_CLIP, SCHEDULES, WARMUP, schedule

if TYPE_CHECKING:
    import optuna

# The Optuna samplers a study may search its space with (``autoopt.study.build_sampler``), the
# default first: the study file's ``sampler``, ``--sampler`` and the builder all read this.
SAMPLERS: tuple[str, ...] = ("tpe", "random", "cmaes", "gp")
# The pruners a study may stop trials with (``autoopt.training.pruning.build_pruner``), the default
# first: the study file's ``pruner``, ``--pruner`` and the builder all read this.
PRUNERS: tuple[str, ...] = ("median", "hyperband", "none")


@dataclass
class TrialConfig:
    """Everything a trial trains with, as plain data (it crosses process boundaries)."""

    optimizer: str
    optimizer_params: dict[str, Any]
    scheduler: str = "none"
    scheduler_params: dict[str, Any] = field(default_factory=dict)
    grad_clip_norm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "optimizer_params": dict(self.optimizer_params),
                "scheduler": self.scheduler, "scheduler_params": dict(self.scheduler_params),
                "grad_clip_norm": self.grad_clip_norm}

    def flat_params(self) -> dict[str, Any]:
        """All hyperparameters as one flat dict (MLflow params, tables)."""
        flat: dict[str, Any] = {"optimizer": self.optimizer, "scheduler": self.scheduler,
                                "grad_clip_norm": self.grad_clip_norm}
        flat.update(self.optimizer_params)
        flat.update({f"scheduler.{k}": v for k, v in self.scheduler_params.items()})
        return flat


@dataclass(frozen=True)
class SearchSpace:
    """The space one study searches: its families (with the study's overrides applied),
    schedules and clipping. Immutable: it holds its own ``Family`` objects, so a study file's
    classes never enter the global registry, and later registrations do not change it.

    ``custom`` supplies families that are not registered (a study file's ``custom_optimizers``);
    other names come from ``REGISTRY``.
    """

    optimizers: tuple[str, ...]
    schedulers: tuple[str, ...] = tuple(SCHEDULES)
    grad_clip: bool = True
    overrides: Mapping[str, Mapping[str, Dimension]] = field(default_factory=dict)
    custom: Mapping[str, Family] = field(default_factory=dict)
    families: Mapping[str, Family] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fams = {}
        for name in self.optimizers:
            fam = self.custom[name] if name in self.custom else family(name)
            extra = dict(self.overrides.get(name, {}))
            unknown = [k for k in extra if k not in fam.space]
            if unknown:
                raise UsageError(f"space.{name}.{unknown[0]}: {name} has no parameter {unknown[0]}; "
                                 f"known: {', '.join(fam.space)}")
            check_space(extra, name)
            fams[name] = dataclasses.replace(fam, space={**fam.space, **extra}) if extra else fam
        for name in self.schedulers:
            schedule(name)
        object.__setattr__(self, "optimizers", tuple(self.optimizers))
        object.__setattr__(self, "schedulers", tuple(self.schedulers))
        object.__setattr__(self, "families", MappingProxyType(fams))

    def family(self, name: str) -> Family:
        """This space's family ``name`` (its overrides applied); a ``UsageError`` if not in it."""
        try:
            return self.families[name]
        except KeyError:
            raise UsageError(f"optimizer '{name}' is not in this study's space: "
                             f"{', '.join(self.optimizers)}") from None

    def family_space(self, name: str) -> dict[str, Dimension]:
        return dict(self.family(name).space)

    def default_params(self, name: str) -> dict[str, Any]:
        """The published defaults of this space's family ``name`` (``default_params``)."""
        return family_defaults(self.family(name))


def suggest_config(trial: optuna.trial.BaseTrial, space: SearchSpace) -> TrialConfig:
    """Sample one trial's configuration. Parameters are named ``family.param`` so that each
    family's conditional subspace keeps its own distributions."""
    name = suggest(trial, "optimizer", Choice(*space.optimizers))
    fam = space.family(name)
    params = {k: suggest(trial, f"{name}.{k}", d) for k, d in fam.space.items()}
    sched_name, sched_params = "none", {}
    if fam.schedulers and space.schedulers:
        sched_name = suggest(trial, "scheduler", Choice(*space.schedulers))
        sched = schedule(sched_name)
        sched_params = {k: suggest(trial, f"{sched_name}.{k}", d) for k, d in sched.space.items()}
        if sched.warmup and sched.build is not None:
            sched_params["warmup_ratio"] = suggest(trial, "warmup_ratio", WARMUP)
    clip = None
    if space.grad_clip and suggest(trial, "grad_clip", Choice(False, True)):
        clip = suggest(trial, "grad_clip_norm", GRAD_CLIP)
    return TrialConfig(name, params, sched_name, sched_params, clip)
