"""The live progress display of ``autoopt tune`` (rich): trials done / running / pruned /
failed, best so far and ETA, then the confirmation runs."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class TuneDisplay:
    """A context manager whose ``update(progress)`` redraws the bars."""

    def __init__(self, console: Console, total: int) -> None:
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                            transient=False)
        self.search = self.bar.add_task("trials", total=total, info="starting")
        self.confirm: Any = None

    def __enter__(self) -> TuneDisplay:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def update(self, p: Any) -> None:
        if p.last.startswith("confirm"):
            if self.confirm is None:
                self.confirm = self.bar.add_task("confirm", total=p.total, info="")
            self.bar.update(self.confirm, completed=p.done, info=p.last)
            return
        best = f"best {p.best:.4f} (#{p.best_trial})" if p.best is not None else "best -"
        eta = p.eta_s()
        info = (f"running {p.running}  pruned {p.pruned}  failed {p.failed}  {best}"
                + (f"  ETA {eta:.0f}s" if eta is not None else ""))
        self.bar.update(self.search, completed=min(p.done, p.total), total=max(p.total, p.done), info=info)
