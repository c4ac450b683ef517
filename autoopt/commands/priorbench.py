"""Leave one task out: does the prior learned from the storage's earlier studies pay on a task
it has not seen?

For each task, its own study is run once into a shared storage (the earlier studies). Then each
task in turn is held out: a fresh study of it runs with the prior drawn from the *other* tasks'
studies (``prior=<their names>``) and without any (``prior=none``), under the same time budget,
on the same seeds (``seed`` s for both, so their confirmation runs are paired), each in its own
copy of the storage. Per held-out task it reports, paired over the seeds:

* ``time_to_default_s``: seconds from the command's start until a trial first reported a
  validation metric at least as good as the best published default's (the best baseline's
  confirmed validation mean in the task's own earlier study); None when no trial did within the
  budget;
* ``test``: the recommendation's test metric (the pick's, after its confirmation), and the
  paired difference prior - none, signed so that positive is better.

>>> rows = leave_one_task_out(["digits", "digits_lstm"], seeds=3, budget_s=60)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoopt.base.direction import better, sign
from autoopt.decide.verdict import paired

if TYPE_CHECKING:
    from autoopt.recommendation import Recommendation

log = logging.getLogger(__name__)


def _study_name(task: str) -> str:
    return task.replace(":", "_")


def _tune(task: str, *, folder: Path, storage: Path, study: str, budget_s: float, seed: int,
          prior: str) -> tuple[float, Recommendation]:
    """One ``autoopt tune`` run in-process; (its start, wall clock; its recommendation)."""
    from autoopt.commands.tuning import run
    from autoopt.spec import load_spec

    spec = load_spec(task, None, storage=f"sqlite:///{storage}", mlflow_uri=f"sqlite:///{folder / 'mlflow.db'}",
                     out=str(folder / "recommendations"), study_name=study, time_budget=budget_s, seed=seed,
                     prior=prior, trials=500)
    started = time.time()
    rec = run(spec, since=started)
    return started, rec


def _best_default(storage: Path, study: str) -> tuple[float, str]:
    """The best published default's confirmed validation mean in ``study`` and its direction."""
    from autoopt.recommendation import Recommendation, load_stored

    data = load_stored(f"sqlite:///{storage}", study)
    if data is None:
        raise RuntimeError(f"study {study} stored no recommendation")
    rec = Recommendation.from_dict(data)
    means = [b.val.mean for b in rec.baselines if b.val.mean is not None]
    if not means:
        raise RuntimeError(f"study {study} confirmed no baseline")
    return (max(means) if rec.direction == "maximize" else min(means)), rec.direction


def time_to_target(storage: Path, study: str, since: float, target: float, direction: str) -> float | None:
    """Seconds from ``since`` until a trial of ``study`` first reported a value at least as good as
    ``target`` (at any epoch: a pruned trial's reports count), or None."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.load_study(study_name=study, storage=f"sqlite:///{storage}")
    times = []
    for t in s.get_trials(deepcopy=False):
        values = [*t.intermediate_values.values(), *([t.value] if t.value is not None else [])]
        if t.datetime_complete is None or not values:
            continue
        if any(v == target or better(v, target, direction) for v in values):
            times.append(t.datetime_complete.timestamp() - since)
    return min(times) if times else None


def _test_metric(rec: Recommendation) -> float | None:
    """The recommendation's confirmed test metric (``test_accuracy``, ``test_rmse``), or None."""
    return rec.held_out if rec.held_out_key.startswith("test_") else None


def leave_one_task_out(tasks: Sequence[str], *, seeds: int = 3, budget_s: float = 60.0,
                       source_budget_s: float = 120.0, folder: str | Path = "loto",
                       on_progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run the measurement (see the module docstring); one row per held-out task."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "earlier.db"
    say = on_progress or (lambda _: None)
    names = {task: _study_name(task) for task in tasks}
    for task in tasks:
        say(f"earlier study of {task}")
        _tune(task, folder=folder, storage=base, study=names[task], budget_s=source_budget_s, seed=0, prior="none")
    rows = []
    for held in tasks:
        target, direction = _best_default(base, names[held])
        others = ",".join(names[t] for t in tasks if t != held)
        runs: dict[str, list[dict[str, Any]]] = {"prior": [], "none": []}
        for seed in range(1, seeds + 1):
            for cond, prior in (("prior", others), ("none", "none")):
                say(f"{held}: {cond}, seed {seed}")
                storage = folder / f"{names[held]}-{cond}-{seed}.db"
                shutil.copyfile(base, storage)
                study = f"heldout-{names[held]}-{cond}-{seed}"
                started, rec = _tune(held, folder=folder, storage=storage, study=study, budget_s=budget_s,
                                     seed=seed, prior=prior)
                runs[cond].append({"seed": seed, "optimizer": rec.optimizer, "test": _test_metric(rec),
                                   "time_to_default_s": time_to_target(storage, study, started, target, direction)})
        rows.append(_row(held, target, direction, budget_s, runs))
    return rows


def _row(task: str, target: float, direction: str, budget_s: float,
         runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """A held-out task's figures, paired over seeds: a run that never reached the target counts as
    the whole budget (so the ratio is a lower bound on the prior's gain there)."""
    def reach(r: dict[str, Any]) -> float:
        return r["time_to_default_s"] if r["time_to_default_s"] is not None else budget_s

    with_prior, without = runs["prior"], runs["none"]
    test_a = [r["test"] for r in with_prior]
    test_b = [r["test"] for r in without]
    diff = paired(test_a, test_b, direction)
    return {"task": task, "target": target, "direction": direction, "budget_s": budget_s,
            "time_to_default_s": {"prior": [r["time_to_default_s"] for r in with_prior],
                                  "none": [r["time_to_default_s"] for r in without]},
            "median_time_ratio": statistics.median(reach(a) / max(reach(b), 1e-9)
                                                  for a, b in zip(with_prior, without, strict=True)),
            "test": {"prior": test_a, "none": test_b},
            "test_paired": {"mean": diff.mean, "ci95": diff.ci95, "verdict": diff.verdict,
                            "sign": sign(direction)},
            "picks": {"prior": [r["optimizer"] for r in with_prior], "none": [r["optimizer"] for r in without]}}


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table for a note: per held-out task, time to the best default's metric and the pick's test."""
    def fmt(v: float | None, digits: int = 1) -> str:
        return "never" if v is None else f"{v:.{digits}f}"

    lines = ["| held-out task | target (best default, val) | time to it: prior (s) | time to it: none (s) | "
             "median ratio | test: prior | test: none | paired prior - none |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        t = r["time_to_default_s"]
        tp = r["test_paired"]
        ci = tp["ci95"]
        mean_test = {k: statistics.fmean([v for v in vals if v is not None]) if any(v is not None for v in vals)
                     else None for k, vals in r["test"].items()}
        lines.append(
            f"| {r['task']} | {r['target']:.4f} | {', '.join(fmt(v) for v in t['prior'])} | "
            f"{', '.join(fmt(v) for v in t['none'])} | {r['median_time_ratio']:.2f} | "
            f"{fmt(mean_test['prior'], 4)} | {fmt(mean_test['none'], 4)} | "
            f"{fmt(tp['mean'], 4)} [{fmt(ci[0] if ci else None, 4)}, {fmt(ci[1] if ci else None, 4)}] "
            f"{tp['verdict']} |")
    return "\n".join(lines)
