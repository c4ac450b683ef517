"""Pruners that save compute without throwing away late bloomers.

Two guards wrap Optuna's median and Hyperband pruners:

* **warm-up**: no pruning before ``warmup`` × epochs have been trained;
* **plateau**: while the finished trials themselves were still on a plateau at this epoch
  (their spread of values at this step is tiny compared with the spread they reach at the
  end), a comparison at this step says nothing about the final value, so nothing is pruned.
  Tasks where every config sits on the same loss for a while before the good ones break
  away (long-range sequence tasks) keep their slow starters.
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.trial import FrozenTrial, TrialState

PLATEAU_RATIO = 0.1  # spread at a step below 10% of the final spread = still on the plateau
MIN_REFERENCE = 3


class GuardedPruner(BasePruner):
    """Wrap ``inner`` with a warm-up and a plateau guard (see the module docstring)."""

    def __init__(self, inner: BasePruner, *, warmup_steps: int, plateau_ratio: float = PLATEAU_RATIO) -> None:
        self.inner = inner
        self.warmup_steps = warmup_steps
        self.plateau_ratio = plateau_ratio

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step <= self.warmup_steps:
            return False
        if self._on_plateau(study, step):
            return False
        return self.inner.prune(study, trial)

    def _on_plateau(self, study: optuna.Study, step: int) -> bool:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        at_step, at_end = [], []
        for t in done:
            values = t.intermediate_values
            if step in values and values:
                at_step.append(values[step])
                at_end.append(values[max(values)])
        if len(at_step) < MIN_REFERENCE:
            return False
        spread_now = _spread(at_step)
        spread_end = _spread(at_end)
        return spread_end > 0 and spread_now < self.plateau_ratio * spread_end


def _spread(values: list[float]) -> float:
    finite = sorted(v for v in values if math.isfinite(v))
    if len(finite) < 2:
        return 0.0
    # inter-quartile-ish spread: robust to one wild trial
    lo = finite[len(finite) // 4]
    hi = finite[(3 * len(finite)) // 4 if len(finite) > 3 else -1]
    return hi - lo


def build_pruner(name: str, *, epochs: int, warmup: float) -> BasePruner:
    """``median``, ``hyperband`` or ``none``; no pruning before ``warmup`` × ``epochs``."""
    warmup_steps = int(math.floor(warmup * epochs))
    if name == "none" or epochs < 2:
        return NopPruner()
    if name == "hyperband":
        inner: BasePruner = HyperbandPruner(min_resource=max(1, warmup_steps), max_resource=epochs,
                                            reduction_factor=3)
    else:
        inner = MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    return GuardedPruner(inner, warmup_steps=warmup_steps)
