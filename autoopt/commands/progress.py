"""The live progress display of ``autoopt tune`` (rich): trials done / running / pruned /
failed / skipped, best so far and ETA, then the confirmation runs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table

if TYPE_CHECKING:
    from autoopt.commands.compare import Comparison
    from autoopt.dispatch import SearchProgress
    from autoopt.evidence import Stats
    from autoopt.recommendation import Recommendation

WIDE = 100  # columns from which the bar is long and the elapsed time shown


class TuneDisplay:
    """A context manager whose ``update(progress)`` redraws the bars."""

    def __init__(self, console: Console, total: int | None) -> None:
        self.open_ended = total is None  # a search bounded by its time budget: the trials so far
        wide = console.width >= WIDE
        # The counts ("20/20") never wrap; the details give way first (at 80 columns the bar is
        # short and the elapsed time left out: the details carry the ETA).
        columns: list[ProgressColumn] = [
            TextColumn("{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=40 if wide else 10),
            MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=5)),
            TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
        ]
        if wide:
            columns.append(TimeElapsedColumn())
        self.bar = Progress(*columns, console=console, transient=False)
        self.search = self.bar.add_task("trials", total=total, info="starting")
        self.confirm: TaskID | None = None

    def __enter__(self) -> TuneDisplay:
        # The bars appear with the first update (the search has started): input refused
        # before that is one line on its own.
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar.live.is_started:
            self.bar.stop()

    def update(self, p: SearchProgress) -> None:
        if not self.bar.live.is_started:
            self.bar.start()
        if p.last.startswith("confirm"):
            if self.confirm is None:
                self.confirm = self.bar.add_task("confirm", total=p.total, info="")
            self.bar.update(self.confirm, completed=p.done, total=max(p.total, p.done), info=p.last)
            return
        if self.open_ended:
            self.bar.update(self.search, completed=p.done, total=None, info=describe(p, eta=False))
            return
        info = describe(p)
        self.bar.update(self.search, completed=min(p.done, p.total), total=max(p.total, p.done), info=info)


def describe(p: SearchProgress, *, eta: bool = True) -> str:
    """The search's details in at most ~50 characters: running, pruned, failed, skipped (once
    any: not started, the time budget not affording them), best, ETA (not for a search its time
    budget bounds, nor once a trial was skipped: the search starts no more).

    >>> from types import SimpleNamespace as N
    >>> describe(N(running=4, pruned=1, failed=0, skipped=0, best=0.9512, best_trial=7, eta_s=lambda: 42.0))
    'run 4  pruned 1  failed 0  best 0.9512 #7  ETA 42s'
    """
    best = f"best {p.best:.4f} #{p.best_trial}" if p.best is not None else "best -"
    left = p.eta_s() if eta and not p.skipped else None
    skipped = f"  skipped {p.skipped}" if p.skipped else ""
    return (f"run {p.running}  pruned {p.pruned}  failed {p.failed}{skipped}  {best}"
            + (f"  ETA {left:.0f}s" if left is not None else ""))


def print_recommendation(rec: Recommendation, out: Console, path: str | None = None) -> None:
    """The recommendation as ``tune`` shows it at its end, and where it was written."""
    table = Table(title=f"recommendation for {escape(rec.task)}", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("optimizer", escape(f"{rec.optimizer} {json.dumps(rec.optimizer_params)}"))
    table.add_row("scheduler", escape(f"{rec.scheduler} {json.dumps(rec.scheduler_params)}"))
    table.add_row("grad clip", str(rec.grad_clip_norm))
    if rec.value is not None:
        table.add_row(rec.metric, f"{rec.value:.4f}")
    imp = rec.improvement
    if imp is not None:
        table.add_row("decided", escape(imp.says()))
    if rec.cost is not None and rec.cost.s_per_epoch is not None:
        table.add_row("cost", cost_text(rec.cost.s_per_epoch, rec.cost.relative))
    alt = rec.cheapest_equivalent
    if alt is not None and alt.s_per_epoch is not None:
        margin = alt.versus_pick.margin if alt.versus_pick else None
        table.add_row("cheaper, equivalent", escape(f"{alt.name} ({alt.optimizer}): "
                                                    f"{cost_text(alt.s_per_epoch, alt.relative)}; within "
                                                    f"{margin or 0.0:.4g} of the pick"))
    if rec.effort is not None and rec.effort.searched:
        table.add_row("searched", escape(", ".join(rec.effort.searched) + " (the screen's best third)"))
    for left in rec.left_on_cost or ():
        times = f", {left.relative_to_pick:g}x the pick's s/epoch" if left.relative_to_pick else ""
        table.add_row("left on cost", escape(
            f"{left.family}: {ordinal(left.rank)} of {left.of} at epoch {left.epoch}{times}; "
            f"--time-budget {left.time_budget_s // 60}m would train it"))
    if rec.budget is not None:
        table.add_row("time budget", f"{rec.budget.used_s:.0f}s of {rec.budget.limit_s:g}s")
    out.print(table)
    if path:
        out.print(f"written to {escape(path)}; load it with "
                  f"`from autoopt import recommend; {recommend_call(rec.to_dict())}`", highlight=False)


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def recommend_call(data: dict[str, Any]) -> str:
    """The call that loads this recommendation: its study's name when that is not the task's."""
    study = data.get("study_name")
    named = f", study={study!r}" if study and study != data["task"] else ""
    return f"recommend({data['task']!r}{named})"


def cost_text(s_per_epoch: float, relative: float | None) -> str:
    rel = f", {relative:.2f}x the fastest baseline" if relative is not None else ""
    return f"{s_per_epoch:.3f} s/epoch{rel}"


def mean_std(stats: Stats, digits: int = 4) -> str:
    if stats.mean is None:
        return "-"
    return f"{stats.mean:.{digits}f}±{stats.std or 0.0:.{digits}f}"  # compact: fits 80 columns


def print_comparison(result: Comparison, out: Console) -> None:
    """``compare``'s table: each config's last-epoch metrics over the seeds."""
    n_seeds = len(result.rows[0].seeds) if result.rows else 0
    table = Table(title=f"{result.task}: {result.epochs} epochs, constant lr; at the last epoch, "
                        f"mean±std over {n_seeds} seed(s)")
    # The label names the family: never wrap or cut it. Settings get their own column only
    # where the terminal is wide; otherwise they are listed under the table.
    wide = out.width >= 140
    width = max((len(r.label) for r in result.rows), default=9)
    table.add_column("optimizer", no_wrap=True, min_width=width)
    if wide:
        table.add_column("settings", overflow="fold")
    for name in (result.metric, "train_loss", result.test_metric):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("ok", justify="right", no_wrap=True)
    settings = {row.label: ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in row.config.optimizer_params.items()) for row in result.rows}
    for row in result.rows:
        cells = [mean_std(row.val), mean_std(row.train_loss), mean_std(row.test),
                 f"{row.val.complete}/{len(row.seeds)}"]
        table.add_row(row.label, *([settings[row.label]] if wide else []), *cells)
    out.print(table)
    if not wide:
        for row in result.rows:
            out.print(f"  {row.label:<{width}}  {escape(settings[row.label])}", highlight=False)
    for row in result.rows:
        for reason in row.failed:
            out.print(f"[yellow]{escape(row.label)}[/yellow] {escape(reason)}", highlight=False)
    out.print(f"loss curves: {result.plot}; table: {result.json_path}", highlight=False)
