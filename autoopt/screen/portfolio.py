"""Portfolio first: screen every family at its published defaults, then tune where the evidence is.

A study begins with one trial per family of its space, at the defaults ``autoopt compare``
uses (``autoopt.space.default_params``), enqueued before the sampler proposes anything.
They are ordinary trials (pruned, tracked, seen by the sampler) with the user attribute
``screen: True``. Each family is enqueued once per study, under the study's ask lock,
recorded in the study attribute ``portfolio_enqueued``: two drivers starting together, or a
resumed study, enqueue nothing twice. A ``--trials`` smaller than the portfolio screens the
families most likely to win first (``PORTFOLIO_PRIOR``), and says so.

With a prior learned from the storage's earlier studies (``autoopt.screen.prior``), a new study screens
in the prior's order, records it (study attr ``prior``), and enqueues the prior's warm starts
(trial attr ``warmstart``) once the whole portfolio is enqueued, within ``--trials``; a resumed
study keeps the order it began with.

After the screen, the search tunes the families it found (``autoopt.screen.focus``): its survivors,
at most five, each search trial's family chosen among them by a bandit per second, TPE tuning
that family's settings. A screen of fewer than six families narrows nothing: TPE sees them all.
"""

from __future__ import annotations

import inspect
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from autoopt.errors import UsageError
from autoopt.evidence import LeftOnCost
from autoopt.space import (
    GRAD_CLIP,
    PORTFOLIO_PRIOR,
    WARMUP,
    Choice,
    Dimension,
    Family,
    Fixed,
    IntRange,
    LogUniform,
    SearchSpace,
    Uniform,
    schedule,
)
from autoopt.study import SCREEN, WARMSTART, ask_lock, budget_used, full_trials
from autoopt.study.record import TrialKind, record

ENQUEUED = "portfolio_enqueued"  # study user attr: the families enqueued so far, in order
PRIOR_ATTR = "prior"  # study user attr: the prior it screened by (PriorRecord.to_dict)
WARM_ENQUEUED = "warmstart_enqueued"  # study user attr: how many of the prior's warm starts were enqueued


@dataclass(frozen=True)
class WarmStart:
    """A config the prior tries right after the screen: an earlier study's (a ``TrialConfig``
    dict) and that study's name."""

    study: str
    config: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "config": dict(self.config)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WarmStart:
        config = data.get("config")
        return cls(str(data.get("study")), config if isinstance(config, Mapping) else {})


@dataclass(frozen=True)
class PriorRecord:
    """The prior a new study screens by (``autoopt.screen.prior`` builds it): the earlier studies
    it learned from, the screen's order and the warm starts. The study keeps it as its attr
    ``prior`` (``to_dict``: ``{studies, order, warmstart}``), so a resumed study screens as it began."""

    studies: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    warmstart: tuple[WarmStart, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"studies": list(self.studies), "order": list(self.order),
                "warmstart": [w.to_dict() for w in self.warmstart]}

    @classmethod
    def of_attrs(cls, attrs: Mapping[str, Any]) -> PriorRecord | None:
        """The record a study keeps in its user attrs, or None where it keeps none; parts missing
        or of the wrong kind read as empty (an unknown family is left out where it is used)."""
        data = attrs.get(PRIOR_ATTR)
        if data is None:
            return None
        data = data if isinstance(data, Mapping) else {}
        return cls(studies=tuple(str(n) for n in data.get("studies") or ()),
                   order=tuple(n for n in data.get("order") or () if isinstance(n, str)),
                   warmstart=tuple(WarmStart.from_dict(w) for w in data.get("warmstart") or ()
                                   if isinstance(w, Mapping)))


def screening_order(optimizers: Sequence[str]) -> list[str]:
    """``optimizers`` with the most likely winners first (``PORTFOLIO_PRIOR``); families the
    prior does not know (a user's own) after them, in their given order.

    >>> screening_order(["sgd", "mine", "adamw"])
    ['adamw', 'sgd', 'mine']
    """
    rank = {name: i for i, name in enumerate(PORTFOLIO_PRIOR)}
    return sorted(optimizers, key=lambda n: (rank.get(n, len(rank)), list(optimizers).index(n)))


def class_defaults(fam: Family) -> dict[str, Any]:
    """The defaults of family ``fam``'s optimizer class, in the space's names (``betas`` as
    ``beta1``, ``beta2``, ...); empty when the class cannot be imported or inspected."""
    try:
        signature = inspect.signature(fam.load_class().__init__)
    except (UsageError, TypeError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for key, param in signature.parameters.items():
        if param.default is inspect.Parameter.empty:
            continue
        if key == "betas" and isinstance(param.default, tuple):
            out.update({f"beta{i + 1}": b for i, b in enumerate(param.default)})
        else:
            out[key] = param.default
    return out


def _fits(value: Any, dim: Dimension) -> bool:
    match dim:
        case LogUniform(low, high) | Uniform(low, high) | IntRange(low, high):
            return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
        case Choice(options):
            return value in options
    return False


def portfolio_params(name: str, space: SearchSpace) -> dict[str, Any]:
    """The parameters the search space's suggest calls ask for, so that a trial enqueued with
    them trains family ``name`` at its published defaults (no scheduler, no clipping). A
    searched parameter the defaults leave to the class gets the class's default, so the
    sampler sees what was trained."""
    dims = space.family_space(name)
    fam = space.family(name)
    values = {**class_defaults(fam), **space.default_params(name)}
    params: dict[str, Any] = {"optimizer": name}
    params.update({f"{name}.{k}": values[k] for k, dim in dims.items()
                   if not isinstance(dim, Fixed) and k in values and _fits(values[k], dim)})
    if fam.schedulers and "none" in space.schedulers:
        params["scheduler"] = "none"
    if space.grad_clip:
        params["grad_clip"] = False
    return params


def _fitted(value: Any, dim: Dimension) -> Any:
    """``value`` as a value of ``dim``: a number clamped into its range, a choice it offers; None
    when it cannot be one (a fixed dimension, a choice it does not offer, not a number)."""
    match dim:
        case LogUniform(low, high) | Uniform(low, high):
            if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
                return float(min(max(float(value), low), high))
        case IntRange(low, high):
            if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
                return int(min(max(round(value), low), high))
        case Choice(options):
            return value if value in options else None
    return None


def config_params(config: Mapping[str, Any], space: SearchSpace) -> dict[str, Any] | None:
    """The parameters the search space's suggest calls ask for, so that a trial enqueued with
    them trains ``config`` (a ``TrialConfig`` dict, e.g. an earlier study's pick) as closely as
    the space allows: numbers clamped into its ranges, values it cannot hold left to the
    sampler. None when the config's family is not in the space."""
    name = config.get("optimizer")
    if name not in space.optimizers:
        return None
    fam = space.family(name)
    params: dict[str, Any] = {"optimizer": name}
    given = config.get("optimizer_params") or {}
    for key, dim in fam.space.items():
        if key in given and (value := _fitted(given[key], dim)) is not None:
            params[f"{name}.{key}"] = value
    if fam.schedulers and space.schedulers and (config.get("scheduler") or "none") in space.schedulers:
        sched = schedule(config.get("scheduler") or "none")
        params["scheduler"] = sched.name
        sp = config.get("scheduler_params") or {}
        for key, dim in sched.space.items():
            if key in sp and (value := _fitted(sp[key], dim)) is not None:
                params[f"{sched.name}.{key}"] = value
        if sched.warmup and sched.build is not None and (value := _fitted(sp.get("warmup_ratio", 0.0), WARMUP)
                                                          ) is not None:
            params["warmup_ratio"] = value
    if space.grad_clip:
        clip = config.get("grad_clip_norm")
        params["grad_clip"] = clip is not None
        if clip is not None and (value := _fitted(clip, GRAD_CLIP)) is not None:
            params["grad_clip_norm"] = value
    return params


class PortfolioFirst:
    """The search policy of ``autoopt tune`` (``autoopt.dispatch.SearchPolicy``)."""

    def __init__(self, space: SearchSpace, *, seed: int = 0, prior: PriorRecord | None = None,
                 quick: int | None = None) -> None:
        """``prior``: the record of ``autoopt.screen.prior`` a new study screens by and keeps as its
        user attr ``prior`` (a study that has one keeps its own);
        ``quick``: screen only that many families, the first of the order (``tune --quick``)."""
        self.space, self.seed = space, seed
        self.prior, self.quick = prior, quick

    def plan(self, prior: PriorRecord | None) -> list[str]:
        """The families to screen, in order: the prior's order (families of the space only), then
        the rest of the space in the built-in order; the first ``quick`` of them with ``quick``."""
        first = [n for n in (prior.order if prior else ()) if n in self.space.optimizers]
        plan = list(dict.fromkeys(first + screening_order(self.space.optimizers)))
        return plan[:self.quick] if self.quick else plan

    def warm_starts(self, prior: PriorRecord | None) -> list[tuple[str, dict[str, Any]]]:
        """The prior's warm starts as ``(source study, params)``, those the space can hold."""
        out = []
        for entry in prior.warmstart if prior else ():
            params = config_params(entry.config, self.space)
            if params is not None:
                out.append((entry.study, params))
        return out

    def start(self, study: optuna.Study, storage_url: str, trials: int) -> str | None:
        """Enqueue the families not enqueued yet, within the budget left, then (once the whole
        portfolio is enqueued) the prior's warm starts not enqueued yet; a note when the budget
        is smaller than the portfolio. A new study records the prior it screens by; a resumed
        one keeps the order it began with."""
        with ask_lock(storage_url, study.study_name):
            attrs = study.user_attrs
            done = list(attrs.get(ENQUEUED, []))
            prior = PriorRecord.of_attrs(attrs)
            if prior is None and not done and self.prior is not None:
                prior = self.prior
                study.set_user_attr(PRIOR_ATTR, prior.to_dict())
            plan = self.plan(prior)
            room = trials - budget_used(study.get_trials(deepcopy=False))
            todo = [n for n in plan if n not in done][:max(0, room)]
            for name in todo:
                study.enqueue_trial(portfolio_params(name, self.space), user_attrs={SCREEN: True})
            if todo:
                study.set_user_attr(ENQUEUED, done + todo)
            if all(n in done + todo for n in plan):
                warmed = int(attrs.get(WARM_ENQUEUED, 0))
                warm = self.warm_starts(prior)[warmed:warmed + max(0, room - len(todo))]
                for source, params in warm:
                    study.enqueue_trial(params, user_attrs={WARMSTART: source})
                if warm:
                    study.set_user_attr(WARM_ENQUEUED, warmed + len(warm))
        screened = done + todo
        if len(screened) < len(plan):
            return (f"--trials {trials} is smaller than the portfolio of {len(plan)} families: screening the "
                    f"{len(screened)} most likely to win first ({', '.join(screened)})")
        return None


def left_on_cost(study: optuna.Study, *, epochs: int, pick_s_per_epoch: float | None, seeds: int,
                 workers: int, spent_s: float) -> list[LeftOnCost]:
    """The screened families the cost-aware screen pruned although they ranked in the best third
    of their rung (``SCREEN_ETA``): what cost alone left untrained, without a budget. Each with
    its rank at the rung it reached, its seconds per epoch (and over the pick's), and the time
    budget that would have trained it and raced it on ``seeds`` seeds (``spent_s`` plus its cost,
    whole minutes)."""
    from autoopt.training.pruning import SCREEN_ETA

    trials = study.get_trials(deepcopy=False)  # the screened ones, whole: their configs (``full_trials``)
    screen = list(full_trials(study, [t for t in trials if record(t).kind == TrialKind.SCREEN]))
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    out = []
    for t in screen:
        rec = record(t)
        spe, cfg = rec.s_per_epoch, rec.config or {}
        if t.state != TrialState.PRUNED or not t.intermediate_values or not spe:
            continue
        step = max(t.intermediate_values)
        mine = t.intermediate_values[step]
        peers = [p.intermediate_values[step] for p in screen if step in p.intermediate_values]
        rank = 1 + sum(1 for v in peers if sign * v > sign * mine)
        speeds = [s for p in screen if step in p.intermediate_values and (s := record(p).s_per_epoch)]
        slowdown = spe / statistics.median(speeds)
        if rank > max(1, len(peers) // SCREEN_ETA) or rank <= max(1, math.floor(len(peers) / (SCREEN_ETA * slowdown))):
            continue  # behind on its rung (pruned at any cost), or not for its cost
        extra = (epochs - step) * spe + seeds * epochs * spe / max(1, workers)
        out.append(LeftOnCost(family=cfg.get("optimizer", t.params.get("optimizer")), trial=t.number, epoch=step,
                              rank=rank, of=len(peers), s_per_epoch=round(spe, 4),
                              relative_to_pick=round(spe / pick_s_per_epoch, 2) if pick_s_per_epoch else None,
                              time_budget_s=60 * math.ceil((spent_s + extra) / 60)))
    return sorted(out, key=lambda d: d.rank)
