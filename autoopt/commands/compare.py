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

from pydantic import ValidationError

from autoopt import dispatch
from autoopt.dispatch import Job, JobResult, JobState
from autoopt.errors import UsageError
from autoopt.evidence import Stats
from autoopt.plots import comparison_curves, save_figure
from autoopt.space import TrialConfig, default_params, resolve_optimizers
from autoopt.spec import Placement, StudySpec, builtin_study_file, flag_of, read_study_file
from autoopt.tasks import check_task_name, load_task
from autoopt.tracking import CANDIDATE_TAG, FAMILY_TAG, KIND_TAG, LR_TAG, SEED_TAG, RunKind, RunRef, RunStatus, StudyRun

log = logging.getLogger(__name__)

__all__ = [
    "ComparePlan",
    "CompareRow",
    "Comparison",
    "compare_configs",
    "default_params",
    "mean_curve",
    "parse_lrs",
    "plan_compare",
    "run_compare",
    "summarize_rows",
]


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
    val: Stats
    train_loss: Stats
    test: Stats
    curve: list[float] = field(default_factory=list)
    curve_std: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    train_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, **self.config.to_dict(), "seeds": self.seeds, "val": self.val.to_dict(),
                "train_loss": self.train_loss.to_dict(), "test": self.test.to_dict(), "curve": self.curve,
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
                   results: dict[tuple[str, int], JobResult], metric: str, test_metric: str
                   ) -> list[CompareRow]:
    """Fold the per-seed results into one row per config (``test_metric`` equal to ``metric``:
    the task has no test split, and the validation metric stands in)."""
    rows = []
    for label, cfg in configs:
        runs = [results.get((label, s)) for s in seeds]
        done = [r if r is not None and r.state == JobState.COMPLETE else None for r in runs]
        curve, curve_std = mean_curve([r.history if r is not None else [] for r in runs])
        rows.append(CompareRow(
            label, cfg, seeds,
            val=Stats.of([r.value if r else None for r in done]),
            train_loss=Stats.of([r.history[-1].get("train_loss") if r and r.history else None for r in done]),
            test=Stats.of([(r.test.get(test_metric) if test_metric != metric else r.value) if r else None
                            for r in done]),
            curve=curve, curve_std=curve_std,
            failed=[f"seed {s}: {(r.reason if r else None) or 'no result'}"
                    for s, r in zip(seeds, runs, strict=True) if r is None or r.state != JobState.COMPLETE],
            train_s=sum(r.train_s for r in runs if r is not None)))
    return rows


@dataclass
class ComparePlan:
    """A validated comparison, before anything runs: where it runs (``placement``), what it
    trains (task, epochs, batch size, the rows' configs, the seeds) and the task's metric names."""

    task: str
    placement: Placement
    epochs: int
    batch_size: int | None
    configs: list[tuple[str, TrialConfig]]
    seeds: list[int]
    lrs: list[float] | None
    metric: str
    test_metric: str | None
    direction: str


def _placement(options: dict[str, Any]) -> Placement:
    """The ``Placement`` of the options that are not None; a bad one is a one-line ``UsageError``."""
    given = {k: v for k, v in options.items() if v is not None}
    try:
        return Placement(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "options"
        raise UsageError(f"{flag_of(key)}: {err['msg']}") from None


def _default_epochs(task: str) -> int:
    """The epochs of the task's study file, else the study default."""
    path = builtin_study_file(task)
    epochs = read_study_file(path).get("epochs") if path is not None else None
    return epochs if isinstance(epochs, int) and epochs > 0 else StudySpec.model_fields["epochs"].default


def plan_compare(task: str, optimizers: str | Sequence[str] = "sgd,adam,rmsprop", *,
                 lrs: Sequence[float] | None = None, seeds: int = 3, epochs: int | None = None,
                 seed: int | None = None, batch_size: int | None = None, **placement: Any) -> ComparePlan:
    """Check everything a comparison needs (families, learning rates, seeds, where it runs, the
    task's data) and return the plan; bad input is a ``UsageError``, raised before any work.

    ``placement`` are the ``autoopt.spec.Placement`` fields that say where and how to run
    (``mlflow_uri``, ``ray_address``, ``cpus_per_trial``, ``gpus_per_trial``, ``concurrency``,
    ``data_dir``); ``epochs`` defaults to the task's study file; the seeds are ``seed`` (default 0) onwards.
    """
    if seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {seeds}")
    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    check_task_name(task)
    place = _placement(placement)
    configs = compare_configs(resolve_optimizers(optimizers), lrs)
    loaded = load_task(task, place.data_dir)  # fails fast (exit 2) on missing data
    test_metric = f"test_{loaded.score}" if loaded.reports_test else None
    return ComparePlan(task, place, epochs or _default_epochs(task), batch_size, configs,
                       [(seed or 0) + i for i in range(seeds)], list(lrs) if lrs else None, loaded.metric,
                       test_metric, loaded.direction)


def compare_jobs(plan: ComparePlan, run: RunRef) -> list[Job]:
    """One job per (row, seed), each a nested MLflow run tagged ``autoopt.kind=compare``."""
    jobs = []
    for label, cfg in plan.configs:
        for s in plan.seeds:
            tags = {KIND_TAG: RunKind.COMPARE, CANDIDATE_TAG: label, FAMILY_TAG: cfg.optimizer,
                    SEED_TAG: s, LR_TAG: cfg.optimizer_params.get("lr")}
            jobs.append(Job(plan.task, plan.placement.data_dir, cfg, plan.epochs, s, plan.batch_size,
                            plan.placement.compile, evaluate_test=plan.test_metric is not None, tracking=run,
                            run_name=f"compare-{label.replace(' ', '-')}-s{s}", tags=tags))
    return jobs


def execute(plan: ComparePlan, jobs: list[Job], session: dispatch.RunSession,
            on_progress: Callable[[int, int, str], None] | None) -> dict[tuple[str, int], JobResult]:
    """Run the jobs on the session's worker pool; the results by (row, seed)."""
    results: dict[tuple[str, int], JobResult] = {}

    def on_result(job: Job, result: JobResult) -> None:
        results[(job.tags[CANDIDATE_TAG], job.seed)] = result
        if on_progress is not None:
            on_progress(len(results), len(jobs), f"{job.tags['autoopt.candidate']} seed {job.seed}")

    place = plan.placement
    pool = session.open_pool(len(jobs), concurrency=place.concurrency, cpus=place.cpus_per_trial,
                             gpus=place.gpus_per_trial)
    dispatch.run_jobs(pool, jobs, on_result)
    return results


def run_compare(task: str | ComparePlan, optimizers: str | Sequence[str] = "sgd,adam,rmsprop", *,
                lrs: Sequence[float] | None = None, seeds: int = 3, epochs: int | None = None,
                out: str | Path = "compare", on_progress: Callable[[int, int, str], None] | None = None,
                **options: Any) -> Comparison:
    """Train each family (at each lr) on ``seeds`` seeds as Ray jobs; write
    ``<out>/<task>.png`` (train loss per epoch, one line per row) and ``<out>/<task>.json``.

    ``task`` is a task name (the other arguments as in ``plan_compare``) or a ``ComparePlan``.
    ``on_progress(done, total, what)`` is called after every run.

    >>> cmp = run_compare("digits", "sgd,adam", seeds=2, epochs=2)   # doctest: +SKIP
    >>> [(r.label, round(r.val.mean, 3)) for r in cmp.rows]         # doctest: +SKIP
    [('sgd', 0.95), ('adam', 0.96)]
    """
    plan = task if isinstance(task, ComparePlan) else plan_compare(
        task, optimizers, lrs=lrs, seeds=seeds, epochs=epochs, **options)
    names = list(dict.fromkeys(cfg.optimizer for _, cfg in plan.configs))
    n_seeds = len(plan.seeds)
    params = {"task": plan.task, "optimizers": ",".join(names), "lrs": ",".join(map(str, plan.lrs or [])),
              "seeds": n_seeds, "epochs": plan.epochs}
    tracker = StudyRun(plan.placement.mlflow_uri, plan.task, "compare", params, kind=RunKind.COMPARE,
                       run_name=f"compare-{','.join(names)}")
    t0 = time.monotonic()
    with dispatch.RunSession(plan.placement.ray_address) as session:
        session.tracker = tracker  # ended FAILED or KILLED if this does not finish
        results = execute(plan, compare_jobs(plan, tracker.ref), session, on_progress)
        cmp = _compared(plan, results, tracker, out, t0)
        session.status = RunStatus.FINISHED
    return cmp


def _compared(plan: ComparePlan, results: dict[tuple[str, int], JobResult], tracker: StudyRun,
              out: str | Path, t0: float) -> Comparison:
    """The comparison of the results: its rows, its plot and JSON on disk and in MLflow."""
    n_seeds = len(plan.seeds)
    test_metric = plan.test_metric or plan.metric
    rows = summarize_rows(plan.configs, plan.seeds, results, plan.metric, test_metric)
    cmp = Comparison(plan.task, plan.metric, test_metric, plan.direction, plan.epochs, rows, run_id=tracker.run_id)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    curves = [{"label": r.label, "train_loss": r.curve, "std": r.curve_std} for r in rows if r.curve]
    fig = comparison_curves(curves, title=f"optimizer comparison: {plan.task}, train loss "
                                          f"(mean over {n_seeds} seed{'s' if n_seeds > 1 else ''})")
    stem = plan.task.replace(":", "_")
    try:
        tracker.log_figure(fig, f"compare/{stem}.png")
        tracker.log_dict(cmp.to_dict(), f"compare/{stem}.json")
        tracker.log_metrics({"compare_s": time.monotonic() - t0})
    except Exception as exc:  # the files on disk are what matters; tracking is a copy
        log.warning("could not log the comparison to MLflow: %s", exc)
    cmp.plot = save_figure(fig, folder / f"{stem}.png")
    cmp.json_path = folder / f"{stem}.json"
    cmp.json_path.write_text(json.dumps(cmp.to_dict(), indent=2) + "\n")
    return cmp
