"""Confirmation over seeds, against the tutorial's baselines.

The best trial of a search won once, on one seed. Here the top-k distinct configs and the
baselines (the tutorial's SGD, Adam and RMSprop defaults, plus tuning-free optimizers at
their defaults where the ``modern`` extra is installed) are each retrained on the same
seeds at the full epoch budget, scored on validation and test. The recommendation is the
best by mean validation metric — a baseline if one wins, so autoopt never recommends, on
its own evidence, something worse than a default.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable
from typing import Any

from autoopt.recommendation import Recommendation
from autoopt.space import FAMILIES, TrialConfig

log = logging.getLogger(__name__)

# The tutorial's defaults: constant learning rate, no schedule, no clipping.
BASELINES: dict[str, TrialConfig] = {
    "sgd_tutorial": TrialConfig("sgd", {"lr": 0.01, "momentum": 0.9}),
    "adam_tutorial": TrialConfig("adam", {"lr": 1e-3}),
    "rmsprop_tutorial": TrialConfig("rmsprop", {"lr": 1e-3}),
}
# Tuning-free optimizers at their published defaults (when the `modern` extra is installed):
# Schedule-Free AdamW at lr 0.0025, betas (0.9, 0.999), no warmup; Prodigy at lr 1.0, d_coef 1.0.
# Their registry entries' defaults, so `autoopt compare` trains the very same configs.
TUNING_FREE: dict[str, TrialConfig] = {
    f"{name}_default": TrialConfig(name, dict(FAMILIES[name].defaults)) for name in ("sfadamw", "prodigy")
}


def baselines() -> dict[str, TrialConfig]:
    """The baselines that can run here: the tutorial's three, plus the tuning-free optimizers
    at their defaults where their extra is installed."""
    out = dict(BASELINES)
    out.update({k: c for k, c in TUNING_FREE.items()
                if c.optimizer in FAMILIES and FAMILIES[c.optimizer].available()})
    return out


def top_configs(study: Any, k: int, direction: str) -> list[tuple[int, TrialConfig]]:
    """The ``k`` best complete trials with distinct configs, best first."""
    done = [t for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and t.value is not None and "config" in t.user_attrs]
    done.sort(key=lambda t: t.value, reverse=direction == "maximize")
    seen: set[str] = set()
    out = []
    for t in done:
        key = json.dumps(t.user_attrs["config"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append((t.number, TrialConfig(**t.user_attrs["config"])))
        if len(out) == k:
            break
    return out


def confirmation_seeds(base_seed: int, n: int) -> list[int]:
    """The seeds confirmation runs use: the same for every config and baseline, and apart from
    the search's seeds (``base_seed + trial number``), so no config is scored on the seed it won on."""
    return [base_seed + 10_000 + i for i in range(n)]


def summarize(values: list[float | None]) -> dict[str, Any]:
    """Mean, population std and the per-seed values (None for a seed whose run did not
    complete); ``complete`` counts the seeds that did.

    >>> summarize([0.5, None, 0.7])["mean"], summarize([0.5, None, 0.7])["complete"]
    (0.6, 2)
    """
    clean = [v for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return {"mean": None, "std": None, "values": values, "complete": 0}
    return {"mean": statistics.fmean(clean), "std": statistics.pstdev(clean) if len(clean) > 1 else 0.0,
            "values": values, "complete": len(clean)}


def rank_key(entry: dict[str, Any], direction: str, *, baseline: bool) -> tuple:
    """Sort key, best first: configs that completed on every seed before those that failed on
    some (a mean over the seeds that survived flatters them), then by mean validation metric,
    then a baseline before a tuned config it ties with (the simpler choice)."""
    val = entry["val"]
    if val["mean"] is None:
        return (2, 0.0, 1)
    all_done = val["complete"] == len(val["values"])
    sign = -1.0 if direction == "maximize" else 1.0
    # Rounded: means equal up to float noise (0.85 vs 0.8500000000000001) are a tie.
    return (0 if all_done else 1, round(sign * val["mean"], 9), 0 if baseline else 1)


def choose(table: dict[str, dict[str, Any]], candidates: list[str], bases: list[str],
           direction: str) -> tuple[str | None, str | None, str | None]:
    """(winner, best tuned config, best baseline) by mean validation metric over the seeds.

    The winner is the better of the two bests, so if a baseline is best it is the recommendation.
    """
    def best(names: list[str], baseline: bool) -> str | None:
        ok = [n for n in names if table[n]["val"]["mean"] is not None]
        return min(ok, key=lambda n: rank_key(table[n], direction, baseline=baseline), default=None)

    best_candidate, best_baseline = best(candidates, False), best(bases, True)
    ranked = [(rank_key(table[n], direction, baseline=n in bases), n)
              for n in (best_candidate, best_baseline) if n is not None]
    winner = min(ranked)[1] if ranked else None
    return winner, best_candidate, best_baseline


def improvement(table: dict[str, dict[str, Any]], winner: str, best_baseline: str | None,
                direction: str, metric: str, split: str = "test") -> dict[str, Any] | None:
    """What tuning bought over the best baseline (the one with the best mean validation metric).

    ``delta`` is the recommendation's mean ``metric`` minus the baseline's, signed so that
    positive means better (for a minimized metric such as RMSE: baseline minus recommendation);
    ``spread`` is the larger of the two standard deviations over the seeds, the scale a delta
    has to beat to mean something. 0 when a baseline is the recommendation.
    """
    if best_baseline is None:
        return None
    w, b = table[winner][split], table[best_baseline][split]
    if w["mean"] is None or b["mean"] is None:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return {"metric": metric, "delta": sign * (w["mean"] - b["mean"]),
            "spread": max(w["std"] or 0.0, b["std"] or 0.0), "versus": best_baseline,
            "recommended": w["mean"], "baseline": b["mean"]}


def confirm(spec: Any, study: Any, task: Any, pool: Any, handle: dict[str, Any], rec: Recommendation,
            *, on_progress: Callable[[Any], None] | None = None) -> Recommendation:
    """Retrain the top configs and the baselines on ``spec.confirm_seeds`` seeds (Ray jobs,
    nested MLflow runs tagged ``autoopt.kind`` = ``confirm`` or ``baseline``); return the
    recommendation with ``confirmation``, ``baselines`` and ``improvement`` filled in."""
    from autoopt.dispatch import Job, SearchProgress, run_jobs

    seeds = confirmation_seeds(spec.seed, spec.confirm_seeds)
    candidates = {f"trial_{n}": (n, cfg) for n, cfg in top_configs(study, spec.confirm_top, task.direction)}
    bases = {name: (None, cfg) for name, cfg in baselines().items()}
    entries = {**candidates, **bases}
    jobs = []
    for name, (number, cfg) in entries.items():
        kind = "baseline" if number is None else "confirm"
        for seed in seeds:
            tags = {"autoopt.study": study.study_name, "autoopt.kind": kind, "autoopt.candidate": name,
                    "autoopt.optimizer": cfg.optimizer, "autoopt.seed": seed}
            if number is not None:
                tags["autoopt.source_trial"] = number
            jobs.append(Job(spec.task, spec.data_dir, cfg, spec.epochs, seed, spec.batch_size, spec.compile,
                            evaluate_test=True, tracking=handle, run_name=f"{kind}-{name}-s{seed}",
                            tags=tags))
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in entries}
    progress = SearchProgress(total=len(jobs), last="confirming")

    def on_result(job: Any, result: dict[str, Any]) -> None:
        results[job.tags["autoopt.candidate"]][job.seed] = result
        progress.complete += 1
        progress.finished_here += 1
        progress.last = f"confirm {job.tags['autoopt.candidate']} seed {job.seed}"
        if on_progress is not None:
            on_progress(progress)

    run_jobs(pool, jobs, on_result)

    # Without a test split the comparison falls back to the validation metric.
    has_test = getattr(task, "test", None) is not None
    test_key = f"test_{task.score}" if has_test else task.metric
    table: dict[str, dict[str, Any]] = {}
    for name, (number, cfg) in entries.items():
        per_seed = [results[name].get(s, {}) for s in seeds]
        done = [r if r.get("state") == "COMPLETE" else {} for r in per_seed]
        val = [r.get("value") for r in done]
        test = [r.get("test", {}).get(test_key) for r in done] if has_test else list(val)
        table[name] = {"name": name, "trial_number": number, **cfg.to_dict(), "seeds": seeds,
                       "val": summarize(val), "test": summarize(test),
                       "failed": [r.get("reason") for r in per_seed if r.get("state") != "COMPLETE"]}

    winner, best_candidate, best_baseline = choose(table, list(candidates), list(bases), task.direction)
    if winner is None:
        log.warning("no confirmation run completed; keeping the search's best trial")
        return rec
    w = table[winner]
    log.info("confirmed: %s (val %.4f ± %.4f); best tuned %s, best baseline %s", winner, w["val"]["mean"],
             w["val"]["std"], best_candidate, best_baseline)
    chosen = TrialConfig(w["optimizer"], w["optimizer_params"], w["scheduler"], w["scheduler_params"],
                         w["grad_clip_norm"])
    extra = dict(rec.extra)
    extra.update({
        "source": "study",
        "chosen": winner,
        "chosen_kind": "baseline" if winner in bases else "tuned",
        "search_value": rec.value,
        "search_trial_number": rec.trial_number,
        "confirmation": {n: table[n] for n in candidates},
        "baselines": [{"name": n, "optimizer": table[n]["optimizer"], "params": table[n]["optimizer_params"],
                       "scheduler": table[n]["scheduler"], "val": table[n]["val"], "test": table[n]["test"]}
                      for n in bases],
        "improvement": improvement(table, winner, best_baseline, task.direction, test_key),
        test_key: w["test"]["mean"],
    })
    return Recommendation(task=rec.task, **chosen.to_dict(), metric=rec.metric, direction=rec.direction,
                          value=w["val"]["mean"], study_name=rec.study_name,
                          trial_number=w["trial_number"], extra=extra)
