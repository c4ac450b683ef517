"""The live progress display of ``autoopt tune`` (rich): trials done / running / pruned /
failed / skipped, best so far and ETA, then the confirmation runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column

if TYPE_CHECKING:
    from autoopt.dispatch import SearchProgress

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
