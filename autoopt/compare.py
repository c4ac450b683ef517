"""``autoopt compare``: the tutorial's optimizer comparison, and its learning-rate exercise.

No search: each family trains at its default settings (``Family.defaults``: the tutorial's
or torch's or the paper's), or at each learning rate of ``lrs``, with a constant learning
rate, on ``seeds`` seeds. Every (family, lr, seed) is a job on the Ray workers and a nested
MLflow run under one parent run. The result is a table (final validation metric, final train
loss, test metric: mean ± std over seeds) and the train-loss curves on one axis.

>>> [label for label, _ in compare_configs(["sgd", "adam"])]
['sgd', 'adam']
>>> [label for label, _ in compare_configs(["adam"], lrs=[0.1, 0.001])]
['adam lr=0.1', 'adam lr=0.001']
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoopt.confirm import summarize
from autoopt.errors import UsageError
from autoopt.space import Fixed, TrialConfig, default_of, family

log = logging.getLogger(__name__)


def default_params(name: str) -> dict[str, Any]:
    """The fixed settings family ``name`` is compared at: its fixed dimensions, then its
    ``defaults`` (torch or paper defaults); a family without defaults (a user's own) trains at
    its class's defaults with the representative ``lr`` of its space.

    >>> default_params("sgd")
    {'lr': 0.01, 'momentum': 0.9}
    """
    fam = family(name)
    params = {k: d.value for k, d in fam.space.items() if isinstance(d, Fixed)}
    if fam.defaults:
        params.update(fam.defaults)
    elif "lr" not in params:
        params["lr"] = default_of(fam.space["lr"])
    return params


def compare_configs(optimizers: Sequence[str], lrs: Sequence[float] | None = None
                    ) -> list[tuple[str, TrialConfig]]:
    """(row label, config) for each family, or each (family, lr) with ``lrs``. Constant
    learning rate, no clipping: what the tutorial compares."""
    out = []
    for name in optimizers:
        base = default_params(name)
        if not lrs:
            out.append((name, TrialConfig(name, base)))
            continue
        for lr in lrs:
            if not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
                raise UsageError(f"--lrs: every learning rate must be a positive number, got {lr!r}")
            out.append((f"{name} lr={lr:g}", TrialConfig(name, {**base, "lr": float(lr)})))
    return out


def parse_lrs(text: str | None) -> list[float] | None:
    """``"0.1,0.01"`` -> ``[0.1, 0.01]``; bad input is a ``UsageError``."""
    if not text:
        return None
    try:
        lrs = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--lrs: give comma-separated numbers such as 0.1,0.01,0.001; got {text!r}"
                         ) from None
    if not lrs or any(not (v > 0 and math.isfinite(v)) for v in lrs):
        raise UsageError(f"--lrs: learning rates must be positive numbers; got {text!r}")
    return lrs


@dataclass
class CompareRow:
    """One row of the comparison: a family (at one lr) over its seeds."""

    label: str
    config: TrialConfig
    seeds: list[int]
    val: dict[str, Any]
    train_loss: dict[str, Any]
    test: dict[str, Any]
    curve: list[float] = field(default_factory=list)
    curve_std: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    train_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, **self.config.to_dict(), "seeds": self.seeds, "val": self.val,
                "train_loss": self.train_loss, "test": self.test, "curve": self.curve,
                "curve_std": self.curve_std, "failed": self.failed, "train_s": self.train_s}


@dataclass
class Comparison:
    """The whole comparison: rows in the order asked, the metric names, where the plot and the
    JSON went, and the MLflow parent run."""

    task: str
    metric: str
    test_metric: str
    direction: str
    epochs: int
    rows: list[CompareRow]
    plot: Path | None = None
    json_path: Path | None = None
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "metric": self.metric, "test_metric": self.test_metric,
                "direction": self.direction, "epochs": self.epochs, "run_id": self.run_id,
                "rows": [r.to_dict() for r in self.rows]}


def mean_curve(histories: list[list[dict[str, float]]], key: str = "train_loss"
               ) -> tuple[list[float], list[float]]:
    """Per-epoch mean and std of ``key`` over runs, over the runs that reached each epoch and
    stayed finite (a diverged run stops contributing where it blew up)."""
    length = max((len(h) for h in histories), default=0)
    mean, std = [], []
    for i in range(length):
        values = [h[i][key] for h in histories if i < len(h) and math.isfinite(h[i].get(key, math.nan))]
        if not values:
            break
        mean.append(statistics.fmean(values))
        std.append(statistics.pstdev(values) if len(values) > 1 else 0.0)
    return mean, std


def summarize_rows(configs: list[tuple[str, TrialConfig]], seeds: list[int],
                   results: dict[tuple[str, int], dict[str, Any]], metric: str, test_metric: str
                   ) -> list[CompareRow]:
    """Fold the per-seed results into one row per config (``test_metric`` equal to ``metric``:
    the task has no test split, and the validation metric stands in)."""
    rows = []
    for label, cfg in configs:
        runs = [results.get((label, s), {}) for s in seeds]
        done = [r if r.get("state") == "COMPLETE" else {} for r in runs]
        histories = [r.get("history") or [] for r in runs]
        curve, curve_std = mean_curve(histories)
        rows.append(CompareRow(
            label, cfg, seeds,
            val=summarize([r.get("value") for r in done]),
            train_loss=summarize([r["history"][-1]["train_loss"] if r.get("history") else None
                                  for r in done]),
            test=summarize([r.get("test", {}).get(test_metric) if test_metric != metric else r.get("value")
                            for r in done]),
            curve=curve, curve_std=curve_std,
            failed=[f"seed {s}: {r.get('reason') or 'no result'}" for s, r in zip(seeds, runs, strict=True)
                    if r.get("state") != "COMPLETE"],
            train_s=sum(r.get("train_s") or 0.0 for r in runs)))
    return rows


@dataclass
class ComparePlan:
    """A validated comparison, before anything runs: the spec (where and how), the rows'
    configs, the seeds, and the task's metric names."""

    spec: Any
    configs: list[tuple[str, TrialConfig]]
    seeds: list[int]
    lrs: list[float] | None
    metric: str
    test_metric: str | None
    direction: str


def plan_compare(task: str, optimizers: str | Sequence[str] = "sgd,adam,rmsprop", *,
                 lrs: Sequence[float] | None = None, seeds: int = 3, epochs: int | None = None,
                 **options: Any) -> ComparePlan:
    """Check everything a comparison needs (families, their extras, learning rates, seeds, the
    task's data) and return the plan; bad input is a ``UsageError``, raised before any work.

    ``options`` are the study options that say where and how to run (``seed``, ``mlflow_uri``,
    ``ray_address``, ``cpus_per_trial``, ``gpus_per_trial``, ``concurrency``, ``data_dir``,
    ``batch_size``); ``epochs`` defaults to the task's study file.
    """
    from autoopt.spec import load_spec
    from autoopt.tasks import load_task

    if seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {seeds}")
    names = ",".join(optimizers) if not isinstance(optimizers, str) else optimizers
    spec = load_spec(task, optimizers=names, epochs=epochs, **options)
    configs = compare_configs(spec.optimizers, lrs)
    loaded = load_task(spec.task, spec.data_dir)  # fails fast (exit 2) on missing data
    test_metric = f"test_{loaded.score}" if loaded.test is not None else None
    return ComparePlan(spec, configs, [spec.seed + i for i in range(seeds)], list(lrs) if lrs else None,
                       loaded.metric, test_metric, loaded.direction)


def run_compare(task: str | ComparePlan, optimizers: str | Sequence[str] = "sgd,adam,rmsprop", *,
                lrs: Sequence[float] | None = None, seeds: int = 3, epochs: int | None = None,
                out: str | Path = "compare", on_progress: Callable[[int, int, str], None] | None = None,
                **options: Any) -> Comparison:
    """Train each family (at each lr) on ``seeds`` seeds as Ray jobs; write
    ``<out>/<task>.png`` (train loss per epoch, one line per row) and ``<out>/<task>.json``.

    ``task`` is a task name (the other arguments as in ``plan_compare``) or a ``ComparePlan``.
    ``on_progress(done, total, what)`` is called after every run.

    >>> cmp = run_compare("digits", "sgd,adam", seeds=2, epochs=2)   # doctest: +SKIP
    >>> [(r.label, round(r.val["mean"], 3)) for r in cmp.rows]         # doctest: +SKIP
    [('sgd', 0.95), ('adam', 0.96)]
    """
    from autoopt import dispatch
    from autoopt.report import comparison_curves, save_figure
    from autoopt.tracking import StudyRun

    plan = task if isinstance(task, ComparePlan) else plan_compare(
        task, optimizers, lrs=lrs, seeds=seeds, epochs=epochs, **options)
    spec, configs, seed_list, lrs = plan.spec, plan.configs, plan.seeds, plan.lrs
    seeds = len(seed_list)
    has_test = plan.test_metric is not None
    test_metric = plan.test_metric or plan.metric
    params = {"task": spec.task, "optimizers": ",".join(spec.optimizers),
              "lrs": ",".join(map(str, lrs or [])), "seeds": seeds, "epochs": spec.epochs}
    tracker = StudyRun(spec.mlflow_uri, spec.task, "compare", params, kind="compare",
                       run_name=f"compare-{','.join(spec.optimizers)}")
    handle = {"uri": tracker.uri, "experiment_id": tracker.experiment_id, "parent_run_id": tracker.run_id}
    jobs = []
    for label, cfg in configs:
        for s in seed_list:
            tags = {"autoopt.kind": "compare", "autoopt.candidate": label, "autoopt.optimizer": cfg.optimizer,
                    "autoopt.seed": s, "autoopt.lr": cfg.optimizer_params.get("lr")}
            jobs.append(dispatch.Job(spec.task, spec.data_dir, cfg, spec.epochs, s, spec.batch_size,
                                     spec.compile, evaluate_test=has_test, tracking=handle,
                                     run_name=f"compare-{label.replace(' ', '-')}-s{s}", tags=tags))
    results: dict[tuple[str, int], dict[str, Any]] = {}

    def on_result(job: Any, result: dict[str, Any]) -> None:
        results[(job.tags["autoopt.candidate"], job.seed)] = result
        if on_progress is not None:
            on_progress(len(results), len(jobs), f"{job.tags['autoopt.candidate']} seed {job.seed}")

    t0 = time.monotonic()
    started_ray = dispatch.start_ray(spec.ray_address)
    pool = None
    status = "FAILED"
    try:
        size = spec.concurrency or dispatch.default_concurrency(spec.cpus_per_trial, spec.gpus_per_trial)
        pool = dispatch.WorkerPool(max(1, min(size, len(jobs))), cpus=spec.cpus_per_trial,
                                   gpus=spec.gpus_per_trial)
        dispatch.run_jobs(pool, jobs, on_result)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if pool is not None:
            pool.flush()
            pool.shutdown()
        if started_ray:
            dispatch.stop_ray()
        if status != "FINISHED":
            tracker.finish(status)

    rows = summarize_rows(configs, seed_list, results, plan.metric, test_metric)
    cmp = Comparison(spec.task, plan.metric, test_metric, plan.direction, spec.epochs, rows,
                     run_id=tracker.run_id)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    curves = [{"label": r.label, "train_loss": r.curve, "std": r.curve_std} for r in rows if r.curve]
    fig = comparison_curves(curves, title=f"optimizer comparison: {spec.task}, train loss "
                                          f"(mean over {seeds} seed{'s' if seeds > 1 else ''})")
    stem = spec.task.replace(":", "_")
    try:
        tracker.log_figure(fig, f"compare/{stem}.png")
        tracker.log_dict(cmp.to_dict(), f"compare/{stem}.json")
        tracker.log_metrics({"compare_s": time.monotonic() - t0})
    except Exception as exc:  # the files on disk are what matters; tracking is a copy
        log.warning("could not log the comparison to MLflow: %s", exc)
    cmp.plot = save_figure(fig, folder / f"{stem}.png")
    cmp.json_path = folder / f"{stem}.json"
    cmp.json_path.write_text(json.dumps(cmp.to_dict(), indent=2) + "\n")
    tracker.finish("FINISHED")
    return cmp
