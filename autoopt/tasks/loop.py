"""A user's own training loop as a task: the marked function, its declared metric, and the data
its ``setup`` returned in this process.

The driver loads it to check it (``setup`` runs once: one that raises is bad input, exit 2) and
keeps only its facts; each worker loads it once and reuses the data for every trial it runs.
A ``UserLoop`` answers what the driver asks of any task (``metric``, ``direction``, ``score``,
``reports_test``), so everything downstream of the trial treats both doors alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autoopt.base.direction import Direction, normalize
from autoopt.catalog import one_line
from autoopt.errors import UsageError
from autoopt.mark import Trainable


@dataclass
class UserLoop:
    """``fn`` (``module:function`` ``name``) marked ``@autoopt.trainable`` with ``mark``; ``data``
    what ``mark.setup`` returned here (None without a setup, or once dropped), in ``setup_s``."""

    name: str
    fn: Callable[..., Any]
    mark: Trainable
    data: Any = None
    setup_s: float = 0.0

    @property
    def metric(self) -> str:
        return self.mark.metric

    @property
    def direction(self) -> Direction:
        return normalize(self.mark.direction)

    @property
    def score(self) -> str:
        return self.mark.score

    @property
    def reports_test(self) -> bool:
        """Whether a run may report a test score (``run.report_test``, read from confirmation
        runs and the complete trials that count as theirs): the loop says so only by calling it."""
        return True

    def facts(self) -> UserLoop:
        """The same loop without its data: what the driver keeps once setup was checked."""
        return replace(self, data=None)


def load_loop(name: str, fn: Callable[..., Any], mark: Trainable, root: Path) -> UserLoop:
    """The marked ``fn`` with its ``setup(root)`` run here, timed; a setup that raises is a one-line
    ``UsageError`` naming the function and the fix."""
    if mark.setup is None:
        return UserLoop(name, fn, mark)
    start = time.perf_counter()
    try:
        data = mark.setup(root)
    except UsageError as exc:
        raise UsageError(f"task '{name}': {exc}") from None
    except Exception as exc:
        setup = getattr(mark.setup, "__name__", "setup")
        raise UsageError(f"task '{name}': its setup {setup}(data_dir) raised {type(exc).__name__}: "
                         f"{one_line(exc)}; fix the setup function") from None
    return UserLoop(name, fn, mark, data, time.perf_counter() - start)
