"""Plots and a one-minute summary of a finished study (``autoopt report``).

Every plotting function takes plain inputs (an Optuna study, the recommendation dict, a
list of curves) and returns a matplotlib ``Figure``, so tests can check what a figure shows
and ``write_report`` can save it. Figures are drawn off-screen (Agg).

>>> fig = comparison_curves([{"label": "sgd lr=0.01", "train_loss": [2.0, 1.0, 0.5]}], title="demo")
>>> [line.get_label() for line in fig.axes[0].get_lines()]
['sgd lr=0.01']
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoopt import tracking
from autoopt.base.direction import better
from autoopt.base.redact import mask_url
from autoopt.errors import UsageError
from autoopt.evidence import Entry, Improvement, Stats
from autoopt.plots import DPI, FIGSIZE, comparison_curves, optimization_history, save_figure
from autoopt.plots import figure as _figure
from autoopt.plots import integer_ticks as _integer_ticks
from autoopt.plots import note as _note
from autoopt.plots import pyplot as _pyplot
from autoopt.recommendation import STUDY_ATTR, Recommendation
from autoopt.spec import DEFAULT_STORAGE, DEFAULT_TRACKING
from autoopt.study import absolute_sqlite, counts, load_existing_study, open_storage, sqlite_path
from autoopt.study.record import record

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)

__all__ = ["DPI", "FIGSIZE", "PLOTS", "Report", "comparison_curves", "confirmation_plot", "loss_curves",
           "lr_vs_metric", "optimization_history", "param_importances", "pareto_plot", "save_figure",
           "summary_markdown", "write_report"]

MIN_IMPORTANCE_TRIALS = 4  # fewer complete trials than this and an importance estimate is noise
# fANOVA's forest grows about with the square of the trials (here: 6 s at 100, 24 s at 200, 90 s
# at 400); above this many complete trials the report ranks by PED-ANOVA (Optuna's, linear).
FANOVA_MAX_TRIALS = 150
LOSS_CURVE_FAMILIES = 6  # more pairs of lines than this on one axis cannot be told apart


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]


def _value(trial: FrozenTrial) -> float:
    """A complete trial's value (``_complete`` keeps only trials that have one)."""
    assert trial.value is not None, f"trial {trial.number} has no value"
    return trial.value


def _maximize(study: optuna.Study) -> bool:
    return study.direction.name == "MAXIMIZE"


def _metric(study: optuna.Study) -> str:
    return study.user_attrs.get("metric", "objective")


def _family_of(trial: FrozenTrial) -> str | None:
    return record(trial).family or trial.params.get("optimizer")


def family_colors(families: Iterable[str]) -> dict[str, Any]:
    """One colour per family, the same in every figure of a report."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(sorted(set(families)))}


def best_per_family(study: optuna.Study) -> dict[str, FrozenTrial]:
    """Each optimizer family's best complete trial."""
    maximize = _maximize(study)
    best: dict[str, FrozenTrial] = {}
    for t in _complete(study):
        fam = _family_of(t)
        if fam is None:
            continue
        if fam not in best or (_value(t) > _value(best[fam]) if maximize else _value(t) < _value(best[fam])):
            best[fam] = t
    return dict(sorted(best.items()))


# --- figures ------------------------------------------------------------------------------------

def importance_study(study: optuna.Study) -> optuna.Study:
    """An in-memory study over what every trial has, whatever its family: ``optimizer``, ``lr``,
    ``scheduler`` and ``grad_clip``. The study's own parameters are conditional
    (``adam.lr`` exists only for Adam trials), so importance over them would see only the
    few parameters all trials share."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    rows = []
    for t in _complete(study):
        config = record(t).config
        if not config:
            continue
        lr = config["optimizer_params"].get("lr")
        rows.append(({"optimizer": config["optimizer"], "scheduler": config["scheduler"],
                      "grad_clip": config["grad_clip_norm"] is not None},
                     float(lr) if isinstance(lr, int | float) and lr > 0 else None, t.value))
    derived = optuna.create_study(direction=study.direction)
    lrs = [lr for _, lr, _ in rows if lr is not None]
    use_lr = len(set(lrs)) > 1 and len(lrs) == len(rows)
    # A parameter that never varied explains nothing: leave it out rather than rank it 0.
    choices = {k: sorted({str(c[k]) for c, _, _ in rows}) for k in ("optimizer", "scheduler", "grad_clip")}
    varied = [k for k, v in choices.items() if len(v) > 1]
    for cats, lr, value in rows:
        params: dict[str, Any] = {k: str(cats[k]) for k in varied}
        dists: dict[str, Any] = {k: CategoricalDistribution(choices[k]) for k in varied}
        if use_lr:
            params["lr"] = lr
            dists["lr"] = FloatDistribution(min(lrs), max(lrs), log=True)
        derived.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    return derived


def importance_methods(n: int) -> tuple[str, ...]:
    """The importance evaluators tried, in order, for ``n`` complete trials: fANOVA up to
    ``FANOVA_MAX_TRIALS`` (PED-ANOVA if it fails), PED-ANOVA alone above."""
    return ("Fanova", "PedAnova") if n <= FANOVA_MAX_TRIALS else ("PedAnova",)


def param_importances(study: optuna.Study) -> tuple[Any, dict[str, float]]:
    """A bar chart of parameter importances (``importance_methods``: Optuna's fANOVA, or
    PED-ANOVA for a large study or where fANOVA fails) and the importances themselves. With
    fewer than ``MIN_IMPORTANCE_TRIALS`` complete trials the figure says so instead and the
    dict is empty."""
    import optuna

    fig, ax = _figure()
    n = len(_complete(study))
    ax.set_title(f"parameter importances: {study.study_name}")
    if n < MIN_IMPORTANCE_TRIALS:
        _note(ax, f"{n} complete trial(s): at least {MIN_IMPORTANCE_TRIALS} are needed to estimate "
                  "parameter importances; run more trials")
        fig.tight_layout()
        return fig, {}
    derived = importance_study(study)
    importances: dict[str, float] = {}
    method = ""
    evaluators: dict[str, Callable[[], Any]] = {"Fanova": lambda: optuna.importance.FanovaImportanceEvaluator(seed=0),
                                                "PedAnova": optuna.importance.PedAnovaImportanceEvaluator}
    for evaluator in (evaluators[name]() for name in importance_methods(n)):
        try:
            importances = {k: float(v) for k, v in
                           optuna.importance.get_param_importances(derived, evaluator=evaluator).items()}
            method = type(evaluator).__name__.removesuffix("ImportanceEvaluator")
            break
        except Exception as exc:  # e.g. every parameter took a single value
            log.info("importance with %s failed: %s", type(evaluator).__name__, exc)
    if not importances:
        _note(ax, "no parameter varied across the complete trials: nothing to rank")
        fig.tight_layout()
        return fig, {}
    names = list(importances)[::-1]  # most important on top
    ax.barh(names, [importances[k] for k in names], color="tab:blue")
    ax.set_xlabel(f"importance for {_metric(study)} ({method}, {n} trials)")
    fig.tight_layout()
    return fig, importances


def loss_curves(study: optuna.Study) -> Any:
    """Per epoch, the train loss (solid) and validation loss (dashed) of the best trial of each
    of the ``LOSS_CURVE_FAMILIES`` best families, on one axis: the tutorial's comparison figure,
    after tuning. The families left out (more than fit, or no stored history) are named on the plot."""
    fig, ax = _figure()
    ranked = sorted(best_per_family(study).items(), key=lambda kv: _value(kv[1]), reverse=_maximize(study))
    with_history = [(f, t) for f, t in ranked if record(t).history]
    best = dict(with_history[:LOSS_CURVE_FAMILIES])
    dropped = [f for f, _ in ranked if f not in best]
    colors = family_colors(best)
    for fam, t in best.items():
        history = record(t).history
        epochs = list(range(1, len(history) + 1))
        ax.plot(epochs, [h.get("train_loss", math.nan) for h in history], color=colors[fam],
                label=f"{fam} (#{t.number}) train")
        ax.plot(epochs, [h.get("val_loss", math.nan) for h in history], color=colors[fam], linestyle="--",
                label=f"{fam} (#{t.number}) val")
    ax.set_title("best loss curve per optimizer family")
    if not best:
        _note(ax, "no complete trial with a stored per-epoch history")
    else:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend(fontsize="x-small", ncol=2)
    if best and dropped:
        ax.text(0.01, 0.01, f"not drawn (only the {len(best)} best families fit): {', '.join(dropped)}",
                transform=ax.transAxes, fontsize="x-small", color="0.3", va="bottom", wrap=True)
    fig.tight_layout()
    return fig


def lr_vs_metric(study: optuna.Study) -> Any:
    """Learning rate (log axis) against the final metric, one colour per family; pruned trials
    as crosses of their family's colour at their last reported value."""
    fig, ax = _figure()
    by_family: dict[str, list[tuple[float, float]]] = {}
    pruned: dict[str, list[tuple[float, float]]] = {}
    for t in study.get_trials(deepcopy=False):
        config, lr = (rec := record(t)).config, rec.lr
        if not config or lr is None or lr <= 0:
            continue
        if t.state.name == "COMPLETE" and t.value is not None:
            by_family.setdefault(config["optimizer"], []).append((lr, t.value))
        elif t.state.name == "PRUNED" and t.intermediate_values:
            last = t.intermediate_values[max(t.intermediate_values)]
            if math.isfinite(last):
                pruned.setdefault(config["optimizer"], []).append((lr, last))
    colors = family_colors([*by_family, *pruned])
    for fam in sorted(by_family):
        xs, ys = zip(*by_family[fam], strict=True)
        ax.scatter(xs, ys, color=colors[fam], label=fam, s=28, alpha=0.85)
    for fam in sorted(pruned):
        xs, ys = zip(*pruned[fam], strict=True)
        ax.scatter(xs, ys, color=colors[fam], marker="x", s=22, alpha=0.6,
                   label=f"{fam} (pruned)" if fam not in by_family else "_pruned")
    ax.set_title(f"learning rate vs {_metric(study)}")
    if not by_family and not pruned:
        _note(ax, "no trial with a learning rate finished")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"{_metric(study)} (x: pruned, last reported)" if pruned else _metric(study))
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class Shown:
    """A confirmed config (``kind`` tuned) or baseline, as the report shows it."""

    kind: str
    entry: Entry

    @property
    def name(self) -> str:
        return self.entry.name


def confirmation_entries(rec: Recommendation | None) -> list[Shown]:
    """The confirmed configs, then the baselines, of a recommendation."""
    if rec is None:
        return []
    return ([Shown("tuned", e) for e in rec.confirmation.values()]
            + [Shown("baseline", b) for b in rec.baselines])


def confirmation_plot(rec: Recommendation | None) -> Any:
    """Mean ± std over the seeds of the validation and test metric for each confirmed config
    and baseline, one row each (names read horizontally); baselines on a grey band; the
    recommendation's label is marked with a star."""
    from matplotlib.patches import Patch

    fig, ax = _figure()
    entries = [e for e in confirmation_entries(rec) if e.entry.val.mean is not None]
    ax.set_title("confirmation over seeds: tuned configs vs baselines")
    if not entries:
        _note(ax, "no confirmation in this recommendation (tuned with --no-confirm?)")
        fig.tight_layout()
        return fig
    ys = list(range(len(entries)))[::-1]  # the first entry on top
    assert rec is not None  # entries come from it
    test_name = rec.held_out_key
    for offset, key, label, color in ((0.12, "val", rec.metric, "tab:blue"),
                                      (-0.12, "test", test_name, "tab:orange")):
        stats = [getattr(e.entry, key) for e in entries]
        xs = [st.mean if st.mean is not None else math.nan for st in stats]
        err = [st.std or 0.0 for st in stats]
        ax.errorbar(xs, [y + offset for y in ys], xerr=err, fmt="o", capsize=4, color=color,
                    label=f"{label} (mean ± std)")
        seeds = [(v, y + offset) for y, st in zip(ys, stats, strict=True) for v in st.values if v is not None]
        if seeds:
            ax.scatter(*zip(*seeds, strict=True), s=8, color=color, alpha=0.35, label=f"{label}, one seed")
    chosen = rec.chosen
    labels = [f"{'★ ' if e.name == chosen else ''}{e.name} ({e.entry.optimizer})" for e in entries]
    ax.set_yticks(ys, labels, fontsize="small")
    for y, e in zip(ys, entries, strict=True):
        if e.kind == "baseline":
            ax.axhspan(y - 0.4, y + 0.4, color="0.92", zorder=0)
    ax.set_xlabel("metric (mean ± std over seeds)")
    if any(e.name == chosen for e in entries):
        ax.plot([], [], " ", label="★ the recommendation")  # a legend entry for the star in the labels
    handles, names = ax.get_legend_handles_labels()
    handles.append(Patch(color="0.92", label="baseline (published default)"))
    names.append("baseline (published default)")
    ax.legend(handles, names, fontsize="x-small", loc="best")
    fig.tight_layout()
    return fig


def pareto_front(points: list[tuple[float, float]], direction: str) -> list[int]:
    """Indices of the (seconds per epoch, metric) points no other point beats on both: nothing
    cheaper is at least as good. Cheapest first.

    >>> pareto_front([(1.0, 0.9), (2.0, 0.95), (3.0, 0.93), (0.5, 0.8)], "maximize")
    [3, 0, 1]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]
                                                      if direction == "maximize" else points[i][1]))
    front: list[int] = []
    for i in order:
        if not front or better(points[i][1], points[front[-1]][1], direction):
            front.append(i)
    return front


def pareto_plot(rec: Recommendation | None) -> Any:
    """Mean validation metric against seconds per epoch for every confirmed config (circles) and
    baseline (squares); the Pareto front (nothing cheaper is as good) joined by a line, the
    recommendation starred, configs ``max_slowdown`` left out drawn hollow."""
    from matplotlib.ticker import FuncFormatter

    fig, ax = _figure()
    entries = [e for e in confirmation_entries(rec) if e.entry.val.mean is not None and e.entry.s_per_epoch]
    metric = rec.metric if rec is not None else "val"
    ax.set_title(f"{metric} against cost: confirmed configs and baselines")
    if not entries:
        _note(ax, "no confirmed config with a measured time per epoch (tuned with --no-confirm?)")
        fig.tight_layout()
        return fig
    assert rec is not None  # entries come from it
    points = [(e.entry.s_per_epoch or 0.0, e.entry.val.mean or 0.0) for e in entries]
    front = pareto_front(points, rec.direction)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:red", linewidth=1.2,
            zorder=1, label="Pareto front")
    for kind, marker, color in (("tuned", "o", "tab:blue"), ("baseline", "s", "tab:gray")):
        for excluded in (False, True):
            sel = [i for i, e in enumerate(entries) if e.kind == kind and bool(e.entry.excluded) == excluded]
            if not sel:
                continue
            ax.scatter([points[i][0] for i in sel], [points[i][1] for i in sel], marker=marker, s=40, zorder=2,
                       facecolors="none" if excluded else color, edgecolors=color,
                       label=f"{kind}{' (left out: --max-slowdown)' if excluded else ''}")
    chosen = rec.chosen
    by_cost = sorted(range(len(entries)), key=lambda i: points[i][0])
    for rank, i in enumerate(by_cost):  # neighbours' names at four heights in turn, so they do not overlap
        star = "★ " if entries[i].name == chosen else ""
        ax.annotate(f"{star}{entries[i].name}", points[i], textcoords="offset points",
                    xytext=(5, (5, -11, 14, -20)[rank % 4]), fontsize="x-small")
    ax.margins(x=0.08, y=0.15)  # room for the names at the edges
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize="x-small")
    ax.set_xlabel("seconds per epoch (training + validation, mean over seeds; log scale)")
    ax.set_ylabel(f"{metric} (mean over seeds)")
    if any(e.name == chosen for e in entries):
        ax.plot([], [], " ", label="★ the recommendation")  # a legend entry for the starred name
    ax.legend(fontsize="x-small", loc="best")
    fig.tight_layout()
    return fig


# --- the summary -------------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v, 3)}" for k, v in params.items()) or "defaults"


def _mean_std(stats: Stats | None) -> str:
    if stats is None or stats.mean is None:
        return "–"
    return f"{stats.mean:.4f} ± {stats.std or 0.0:.4f}"


def _verdict_line(imp: Improvement) -> str:
    """The paired verdict of the best tuned config against the best baseline, in words."""
    paired = imp.paired
    ci = paired.ci95 if paired else None
    ci_text = f", 95% interval [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""
    what = {"better": "the tuned config is better on every reading of the seeds: it is the recommendation",
            "tie": "no difference beyond seed-to-seed noise: the baseline is the recommendation",
            "worse": "the tuned config is worse: the baseline is the recommendation"}.get(imp.verdict or "",
                                                                                          "no verdict")
    deltas = paired.deltas if paired else ()
    return (f"- paired verdict **{imp.verdict}** (`{imp.tuned}` vs `{imp.versus}`, "
            f"validation, per-seed differences {', '.join(f'{d:+.4f}' for d in deltas)}, "
            f"mean {_fmt(paired.mean if paired else None)}"
            f"{ci_text}): {what}")


def _recommendation_lines(rec: Recommendation, metric: str) -> list[str]:
    """What to use and how sure: the config, the verdict, the cost, a cheaper equivalent, the budget."""
    lines = ["## Recommendation", "", f"- **{rec.optimizer}** ({_params(rec.optimizer_params)})"]
    sched = rec.scheduler
    if rec.scheduler_params:
        sched += f" ({_params(rec.scheduler_params)})"
    lines.append(f"- scheduler: {sched}; gradient clipping: {_fmt(rec.grad_clip_norm, 3)}")
    chosen = rec.chosen
    entries = {e.name: e for e in confirmation_entries(rec)}
    if chosen in entries:
        e = entries[chosen]
        kind = "a baseline: no tuned config beat it" if e.kind == "baseline" else "a tuned config"
        lines.append(f"- chosen: `{chosen}`, {kind}; {metric} {_mean_std(e.entry.val)}, "
                     f"test {_mean_std(e.entry.test)} over {len(e.entry.val.values)} seeds")
    elif rec.value is not None:
        lines.append(f"- {metric} {rec.value:.4f} (one run: not confirmed over seeds)")
    imp = rec.improvement
    if imp is not None:
        if imp.verdict:
            lines.append(_verdict_line(imp))
        lines.append(f"- versus the best baseline (`{imp.versus}`) on {imp.metric}: "
                     f"{imp.delta:+.4f}, seed-to-seed spread {imp.spread:.4f}")
    cost = rec.cost
    if cost is not None and cost.s_per_epoch:
        lines.append(f"- cost: {cost.s_per_epoch:.3g} s per epoch, {_fmt(cost.relative, 3)}x the "
                     "fastest baseline")
    alt = rec.cheapest_equivalent
    if alt is not None:
        margin = alt.versus_pick.margin if alt.versus_pick else None
        lines.append(f"- cheaper and equivalent to it (within {_fmt(margin, 3)}): `{alt.name}` "
                     f"({alt.optimizer}), {_fmt(alt.s_per_epoch, 3)} s per epoch ({_fmt(alt.relative, 3)}x)")
    elif rec.cheapest_equivalent_reason:
        lines.append(f"- no cheaper config named: {rec.cheapest_equivalent_reason}")
    budget = rec.budget
    if budget is not None:
        phases = ", ".join(f"{k} {v:.0f}s" for k, v in budget.phases_s.items())
        lines.append(f"- time budget: {budget.used_s:.0f}s of {budget.limit_s:g}s ({phases})")
    return [*lines, ""]


def _confirmation_table(rec: Recommendation, metric: str) -> list[str]:
    entries = confirmation_entries(rec)
    if not entries:
        return []
    lines = ["## Confirmation over seeds", "",
             f"| config | kind | optimizer | {metric} | test | s/epoch | x fastest baseline | time to baseline (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for shown in entries:
        e = shown.entry
        mark = " ★" if e.name == rec.chosen else ""
        left_out = " (left out: slower than --max-slowdown)" if e.excluded else ""
        lines.append(f"| {e.name}{mark}{left_out} | {shown.kind} | {e.optimizer} | {_mean_std(e.val)} | "
                     f"{_mean_std(e.test)} | {_fmt(e.s_per_epoch, 3)} | {_fmt(e.relative, 3)} | "
                     f"{_fmt(e.time_to_baseline_s, 3)} |")
    return [*lines, ""]


def summary_markdown(study: optuna.Study, rec: Recommendation | None, importances: dict[str, float],
                     plots: dict[str, str]) -> str:
    """The report's ``summary.md``: what to use, how sure, and the evidence, in a minute."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    c = counts(trials)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    ended = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    skipped = sum(1 for t in ended if record(t).skipped)  # never started: the time budget could not afford them
    metric = _metric(study)
    lines = [f"# autoopt report: {study.study_name}", ""]
    open_ = "".join(f", {c[k]} {k}" for k in ("running", "waiting") if c[k])
    again = f" ({len(retried)} more failed and ran again)" if retried else ""
    skip = f", {skipped} skipped (the time budget could not afford them)" if skipped else ""
    lines.append(f"{len(trials) - len(retried)} trials: {c['complete']} complete, {c['pruned']} pruned, "
                 f"{len(ended) - skipped} failed{again}{skip}{open_}; "
                 f"metric `{metric}` ({study.direction.name.lower()}).")
    lines.append("")
    if rec is None:
        lines += ["No recommendation is stored with this study yet: run `autoopt tune` to the end.", ""]
    else:
        lines += _recommendation_lines(rec, metric) + _confirmation_table(rec, metric)
    best = best_per_family(study)
    if best:
        lines += ["## Best trial per optimizer family", "", f"| family | trial | {metric} | lr |",
                  "| --- | --- | --- | --- |"]
        ordered = sorted(best.items(), key=lambda kv: _value(kv[1]), reverse=_maximize(study))
        for fam, t in ordered:
            lr = record(t).lr
            lines.append(f"| {fam} | #{t.number} | {t.value:.4f} | {_fmt(lr, 3)} |")
        lines.append("")
    if importances:
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(importances.items())[:4])
        n = c["complete"]
        how = ("fANOVA" if importance_methods(n)[0] == "Fanova" else
               f"PED-ANOVA: fANOVA's cost grows with the square of the trials, used up to {FANOVA_MAX_TRIALS}")
        lines += [f"Parameter importances ({how}; {n} complete trials): {top}.", ""]
    lines += ["## Plots", ""] + [f"- [{title}]({name})" for title, name in plots.items()]
    lines += ["", "Use it: `from autoopt import recommend; rec = recommend("
              f"{rec.task if rec else study.study_name!r}); opt = rec.build_optimizer(model)`", ""]
    return "\n".join(lines)


# --- the report folder ----------------------------------------------------------------------------

@dataclass
class Report:
    """What ``write_report`` wrote: the folder, its files by name, and the MLflow run it was
    logged to (None when there was none)."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    run_id: str | None = None
    importances: dict[str, float] = field(default_factory=dict)


PLOTS = {
    "optimization_history.png": "optimization history",
    "param_importances.png": "parameter importances",
    "loss_curves.png": "best loss curve per optimizer family",
    "lr_vs_metric.png": "learning rate vs metric per family",
    "confirmation.png": "confirmation and baselines (mean ± std over seeds)",
    "pareto.png": "metric against seconds per epoch, with the Pareto front",
}


def load_study_for_report(task: str, storage: str | None = None, study_name: str | None = None
                          ) -> optuna.Study:
    """The study of ``task`` (or ``study_name``) in ``storage``; a clear ``UsageError`` when
    there is none."""
    url = absolute_sqlite(storage or os.environ.get("AUTOOPT_STORAGE") or DEFAULT_STORAGE)
    name = study_name or task
    path = sqlite_path(url)
    study = None
    if path is None or path.exists():  # don't create an empty database just to look
        study = load_existing_study(open_storage(url, heartbeat=False), name)
    if study is None:
        raise UsageError(f"no study '{name}' in {mask_url(url)}; run: autoopt tune --task {task} "
                         "(or pass --storage / --study)")
    return study


def write_report(task: str, *, storage: str | None = None, study_name: str | None = None,
                 out: str | Path | None = None, mlflow_uri: str | None = None) -> Report:
    """Write ``reports/<task>/`` (or ``out``): five PNGs and ``summary.md``; log the folder to
    the study's latest parent MLflow run under ``report/``.

    >>> report = write_report("digits")        # doctest: +SKIP
    >>> sorted(report.files)[:2]               # doctest: +SKIP
    ['confirmation.png', 'loss_curves.png']
    """
    study = load_study_for_report(task, storage, study_name)
    if not _complete(study):
        raise UsageError(f"study '{study.study_name}' has no complete trial to report on; "
                         f"run: autoopt tune --task {task}")
    stored = study.user_attrs.get(STUDY_ATTR)
    rec = Recommendation.from_dict(stored) if isinstance(stored, dict) else None
    folder = Path(out) if out else Path("reports") / task
    folder.mkdir(parents=True, exist_ok=True)
    report = Report(folder)
    importance_fig, report.importances = param_importances(study)
    figures = {
        "optimization_history.png": optimization_history(study),
        "param_importances.png": importance_fig,
        "loss_curves.png": loss_curves(study),
        "lr_vs_metric.png": lr_vs_metric(study),
        "confirmation.png": confirmation_plot(rec),
        "pareto.png": pareto_plot(rec),
    }
    for name, fig in figures.items():
        report.files[name] = save_figure(fig, folder / name)
    summary = folder / "summary.md"
    summary.write_text(summary_markdown(study, rec, report.importances,
                                        {PLOTS[n]: n for n in figures}))
    report.files["summary.md"] = summary
    report.run_id = _log_to_mlflow(task, study.study_name, folder, mlflow_uri)
    return report


def _log_to_mlflow(task: str, study_name: str, folder: Path, mlflow_uri: str | None) -> str | None:
    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING
    path = sqlite_path(uri) if uri.startswith("sqlite") else None
    if path is not None and not path.exists():
        log.warning("no MLflow database at %s: the report is not logged to MLflow", uri)
        return None
    try:
        run_id = tracking.latest_study_run(uri, task, study_name)
        if run_id is None:
            log.warning("no MLflow run of study %s in %s: the report is not logged", study_name, uri)
            return None
        tracking.log_folder(uri, run_id, folder, "report")
        return run_id
    except Exception as exc:  # the report on disk is what matters; tracking is a copy
        log.warning("could not log the report to MLflow: %s", exc)
        return None
