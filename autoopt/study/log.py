"""The trial log: one per study, the driver's memory of its trials, read by the view, TPE's window,
the sampler groups and the snapshot alike.

A finished trial never changes, and what the driver's own decisions read of it is small: its
number, state and values, its params and their distributions (TPE's model, the groups), its last
report (TPE ranks pruned trials by it, the history plot shows it), and a few attrs (the view's
counts: skipped, retried; the screen's mark and cost). Optuna's ``FrozenTrial`` also carries the
trial's config, history, worker and MLflow ids, and every epoch's report: about 9 KB a trial,
held for every trial of the study, which made the driver's memory grow with it. With ``slim``
the log keeps a finished trial as ``slim_trial`` makes it (under 2 KB), and the distributions of
each space once, in a dict the trials of that space share. Whoever needs a whole trial reads it
from the storage when needed (``snapshot.full_trials``). Unfinished trials are kept whole: they
change, and Optuna's ask reads a waiting one's fixed params and attrs.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from autoopt.study.optuna_private import id_of
from autoopt.study.pgstats import Refresher
from autoopt.study.record import S_PER_EPOCH, SCREEN_MARKS, SKIPPED, WARMSTART

Space = tuple[tuple[str, BaseDistribution], ...]  # a trial's distributions, in its order

# What a slim trial keeps of its attrs: the view counts skipped and retried trials, the screen's
# readers find its trials and their cost; Optuna's TPE reads a trial's constraints.
KEPT_USER_ATTRS = (SKIPPED, *SCREEN_MARKS, WARMSTART, S_PER_EPOCH)
KEPT_SYSTEM_ATTRS = ("retry_history", "constraints")


class TrialLog:
    """A study's trials as read so far, by number, and where the next read starts (Optuna's
    cached storage's bookkeeping): the trials unfinished at the last read, by id, and the
    highest id of a finished one. With ``slim``, finished trials are kept as ``slim_trial``
    makes them."""

    def __init__(self, *, slim: bool = False) -> None:
        self.trials: list[FrozenTrial] = []
        self.unfinished: dict[int, int] = {}  # id -> number
        self.last_finished = -1
        self.slim = slim
        self.lock = threading.Lock()
        self.statistics = Refresher()  # when to check PostgreSQL's statistics of the tables again
        self._shared: dict[Space, dict[str, BaseDistribution]] = {}  # one distributions dict per space

    def merge(self, read: list[FrozenTrial]) -> None:
        """Take in the trials just read: each replaces its number's entry, or extends the list."""
        for t in sorted(read, key=lambda t: t.number):
            tid = id_of(t)
            if t.state.is_finished():
                self.unfinished.pop(tid, None)
                self.last_finished = max(self.last_finished, tid)
                if self.slim:
                    t = slim_trial(t, self._shared)
            else:
                self.unfinished[tid] = t.number
            if t.number < len(self.trials) and self.trials[t.number].number == t.number:
                self.trials[t.number] = t
            elif t.number == len(self.trials):
                self.trials.append(t)
            else:  # numbers with a gap (not seen in a study Optuna keeps): sorted afresh
                by_number = {x.number: x for x in self.trials} | {t.number: t}
                self.trials = [by_number[n] for n in sorted(by_number)]


def slim_trial(t: FrozenTrial, shared: dict[Space, dict[str, BaseDistribution]] | None = None) -> FrozenTrial:
    """What the driver keeps of finished trial ``t``: its number, id, state, values and times,
    params and distributions (the dict in ``shared`` of the same space, read-only as Optuna's
    readers treat it), the attrs named in ``KEPT_USER_ATTRS`` and ``KEPT_SYSTEM_ATTRS``, and its last report (a screened
    trial's every report: the screen's readers compare its trials at each rung).

    >>> from optuna.distributions import FloatDistribution
    >>> from optuna.trial import create_trial
    >>> t = create_trial(value=1.0, params={"lr": 0.1}, distributions={"lr": FloatDistribution(0, 1)},
    ...                  user_attrs={"config": {"lr": 0.1}, "skipped": False}, intermediate_values={0: 3.0, 1: 2.0})
    >>> s = slim_trial(t)
    >>> s.value, s.params, s.user_attrs, s.intermediate_values
    (1.0, {'lr': 0.1}, {'skipped': False}, {1: 2.0})
    """
    shared = {} if shared is None else shared
    space = tuple(t.distributions.items())
    distributions = shared.get(space)
    if distributions is None:  # the first trial of its space: the trials of one space share one dict
        distributions = shared[space] = {sys.intern(n): d for n, d in space}
    reports = t.intermediate_values
    if reports and not any(t.user_attrs.get(mark) for mark in SCREEN_MARKS):
        last = max(reports)
        reports = {last: reports[last]}
    return FrozenTrial(
        number=t.number, state=t.state, value=None, values=t.values,
        datetime_start=t.datetime_start, datetime_complete=t.datetime_complete,
        params={sys.intern(n): _interned(v) for n, v in t.params.items()}, distributions=distributions,
        user_attrs={k: v for k in KEPT_USER_ATTRS if (v := t.user_attrs.get(k)) is not None},
        system_attrs={k: v for k in KEPT_SYSTEM_ATTRS if (v := t.system_attrs.get(k)) is not None},
        intermediate_values=dict(reports), trial_id=id_of(t))


def _interned(value: Any) -> Any:
    """A categorical param's string once for all trials (names and choices repeat)."""
    return sys.intern(value) if isinstance(value, str) else value
