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
# Tuning-free optimizers at their defaults (when the `modern` extra is installed).
TUNING_FREE: dict[str, TrialConfig] = {
    "sfadamw_default": TrialConfig("sfadamw", {"lr": 0.0025}),
    "prodigy_default": TrialConfig("prodigy", {"lr": 1.0}),
}


def baselines() -> dict[str, TrialConfig]:
    """The baselines that can run here."""
    out = dict(BASELINES)
    out.update({k: c for k, c in TUNING_FREE.items() if c.optimizer in FAMILIES and FAMILIES[c.optimizer].available()})
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


def summarize(values: list[float]) -> dict[str, Any]:
    clean = [v for v in values if v is not None]
    if not clean:
        return {"mean": None, "std": None, "values": values}
    return {"mean": statistics.fmean(clean), "std": statistics.pstdev(clean) if len(clean) > 1 else 0.0,
            "values": values}


def confirm(spec: Any, study: Any, task: Any, pool: Any, handle: dict[str, Any], rec: Recommendation,
            *, on_progress: Callable[[Any], None] | None = None) -> Recommendation:
    """Retrain the top configs and the baselines on ``spec.confirm_seeds`` seeds; return the
    recommendation with ``confirmation``, ``baselines`` and ``improvement`` filled in."""
    from autoopt.dispatch import Job, SearchProgress, run_jobs

    seeds = [spec.seed + 10_000 + i for i in range(spec.confirm_seeds)]
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
                            evaluate_test=True, tracking=handle, run_name=f"{kind}-{name}-s{seed}", tags=tags))
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

    test_key = f"test_{task.score}"
    table: dict[str, dict[str, Any]] = {}
    for name, (number, cfg) in entries.items():
        per_seed = [results[name].get(s, {}) for s in seeds]
        val = [r.get("value") if r.get("state") == "COMPLETE" else None for r in per_seed]
        test = [r.get("test", {}).get(test_key) if r.get("state") == "COMPLETE" else None for r in per_seed]
        table[name] = {"name": name, "trial_number": number, **cfg.to_dict(), "seeds": seeds,
                       "val": summarize(val), "test": summarize(test)}

    better = (lambda a, b: a > b) if task.direction == "maximize" else (lambda a, b: a < b)

    def best_of(names: list[str]) -> str | None:
        pick = None
        for n in names:
            m = table[n]["val"]["mean"]
            if m is not None and (pick is None or better(m, table[pick]["val"]["mean"])):
                pick = n
        return pick

    best_candidate = best_of(list(candidates))
    best_baseline = best_of(list(bases))
    winner = best_of([n for n in (best_candidate, best_baseline) if n])
    if winner is None:
        log.warning("no confirmation run completed; keeping the search's best trial")
        return rec
    w = table[winner]
    chosen = TrialConfig(w["optimizer"], w["optimizer_params"], w["scheduler"], w["scheduler_params"],
                         w["grad_clip_norm"])
    improvement = None
    if best_baseline is not None:
        b = table[best_baseline]
        if w["test"]["mean"] is not None and b["test"]["mean"] is not None:
            sign = 1 if task.direction == "maximize" else -1
            improvement = {"metric": test_key, "delta": sign * (w["test"]["mean"] - b["test"]["mean"]),
                           "spread": max(w["test"]["std"] or 0.0, b["test"]["std"] or 0.0),
                           "versus": best_baseline}
    extra = dict(rec.extra)
    extra.update({
        "source": "study",
        "chosen": winner,
        "search_value": rec.value,
        "confirmation": {n: table[n] for n in candidates},
        "baselines": [{"name": n, "optimizer": table[n]["optimizer"], "params": table[n]["optimizer_params"],
                       "val": table[n]["val"], "test": table[n]["test"]} for n in bases],
        "improvement": improvement,
        test_key: w["test"]["mean"],
    })
    return Recommendation(task=rec.task, **chosen.to_dict(), metric=rec.metric, direction=rec.direction,
                          value=w["val"]["mean"], study_name=rec.study_name,
                          trial_number=w["trial_number"], extra=extra)
