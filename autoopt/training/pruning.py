"""Pruners that save compute without throwing away late bloomers.

``GuardedPruner`` wraps Optuna's median or Hyperband pruner with three guards:

* **warm-up**: nothing is pruned in the first ``warmup`` × epochs;
* **last epoch**: nothing is pruned at the last epoch, where stopping saves nothing (the trial
  is recorded as complete, with its final value);
* **comeback** (the plateau guard): a trial is kept while a finished trial that stood no
  better at this epoch went on to end among the best (the top quarter of the finished
  trials). On tasks where every config sits on the same loss plateau for a while before the
  good ones break away (long-range sequence tasks), the finished late bloomers show that the
  plateau says nothing about the end, so the slow starters are kept until the curves have
  separated; configs that start fast and then stall are pruned once they fall behind.

Each guard only ever vetoes a prune of the inner pruner; it never prunes by itself.

>>> pruner = build_pruner("median", epochs=10, warmup=0.3)
>>> [pruner.may_prune(step) for step in (3, 4, 9, 10)]
[False, True, True, False]
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from typing import Any

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner, SuccessiveHalvingPruner
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from autoopt.study import aggregates, storage_of, study_id_of, trials_snapshot
from autoopt.study.record import S_PER_EPOCH, SCREEN_MARKS, TrialKind, record

REFERENCE_MAX_AGE_S = 1.0  # how stale the finished trials a worker prunes against may be
COMEBACK_QUANTILE = 0.25  # "among the best": the top quarter of the finished trials' final values
MEDIAN_STARTUP_TRIALS = 4
SCREEN_ETA = 3  # the screen keeps a third of the families at each rung
SCREEN_PRUNER = "screen"  # the screen's pruner: cost-aware successive halving
RANK_PRUNER = "screen_rank"  # the same by rank alone (under a budget)
SCREENS = (SCREEN_PRUNER, RANK_PRUNER)


class GuardedPruner(BasePruner):
    """Wrap ``inner`` with the warm-up, last-epoch and comeback guards (see the module docstring).

    ``warmup_steps``: no pruning at steps up to it; ``max_steps``: the last step (no pruning
    there), or None when unknown; ``comeback_quantile``: what "ended among the best" means.
    """

    def __init__(self, inner: BasePruner, *, warmup_steps: int, max_steps: int | None = None,
                 comeback_quantile: float = COMEBACK_QUANTILE, steps: Iterable[int] | None = None) -> None:
        self.inner = inner
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.comeback_quantile = comeback_quantile
        self.steps = frozenset(steps) if steps is not None else None  # the only steps it may prune at

    def may_prune(self, step: int) -> bool:
        """Whether a trial could be pruned at ``step`` at all (no storage read): a worker asks
        the storage-backed pruner only at such steps."""
        if self.steps is not None and step not in self.steps:
            return False
        return step > self.warmup_steps and (self.max_steps is None or step < self.max_steps)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self.may_prune(step):
            return False
        # One read of the finished trials serves the guard and the inner pruner.
        with trials_snapshot(study):
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if self.comeback_seen(done, trial, step, maximize=study.direction.name == "MAXIMIZE"):
                return False
            return self.inner.prune(study, trial)

    def comeback_seen(self, done: Iterable[FrozenTrial], trial: FrozenTrial, step: int, *,
                      maximize: bool) -> bool:
        """True when a finished trial that stood no better than ``trial`` at ``step`` ended
        among the best ``comeback_quantile`` of the finished trials."""
        value = trial.intermediate_values.get(step)
        if value is None or not math.isfinite(value):
            return False
        finals: list[tuple[float, float]] = []
        for t in done:
            at, end = t.intermediate_values.get(step), t.value
            if at is not None and end is not None and math.isfinite(at) and math.isfinite(end):
                finals.append((at, end))
        if not finals:
            return False
        ends = sorted((end for _, end in finals), reverse=maximize)
        top = ends[min(len(ends) - 1, int(self.comeback_quantile * len(ends)))]  # the worst of the best
        if maximize:
            return any(at <= value and end >= top for at, end in finals)
        return any(at >= value and end <= top for at, end in finals)


def may_prune(pruner: BasePruner | None, step: int) -> bool:
    """Whether ``pruner`` could prune at ``step``: False for no pruner, ``NopPruner`` and a
    ``GuardedPruner`` outside its pruning steps. Lets a worker skip the storage round trip
    of ``trial.should_prune()`` where its answer is known."""
    if pruner is None or isinstance(pruner, NopPruner):
        return False
    if isinstance(pruner, GuardedPruner):
        return pruner.may_prune(step)
    return True


class ReferenceTrials:
    """The trials a worker's pruning decision at one rung reads, reused for at most ``max_age_s``.

    On a database (``RDBStorage``) only the rung is read: the trials that reported at that step,
    with their value there, their final value and the user attrs the pruners read (one query and
    one for the attrs, nothing kept beyond the last read per step), so a worker's reads and memory
    do not grow with the study's trials and their histories. Elsewhere (Optuna's in-memory
    storage), the study's trials. With trials of a second or less, one read serves several
    decisions; a decision never sees the rung more than ``max_age_s`` out of date.
    """

    def __init__(self, max_age_s: float = REFERENCE_MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self._last: dict[tuple[int, int | None], tuple[float, list[FrozenTrial]]] = {}

    def get(self, study: optuna.Study, step: int | None = None) -> list[FrozenTrial]:
        key = (id(study), step)
        now = time.monotonic()
        hit = self._last.get(key)
        if hit is not None and now - hit[0] < self.max_age_s:
            return hit[1]
        base = storage_of(study).base
        if step is not None and isinstance(base, RDBStorage):
            trials = rung_trials(base, study_id_of(study), step)
        else:
            trials = study.get_trials(deepcopy=False)
        self._last = {k: v for k, v in self._last.items() if k[0] != id(study)}  # one rung kept per study
        self._last[key] = (now, trials)
        return trials


RUNG_ATTRS = (*SCREEN_MARKS, S_PER_EPOCH)  # the user attrs the pruners read (the screen's)


def rung_trials(storage: RDBStorage, study_id: int, step: int) -> list[FrozenTrial]:
    """The trials that reported at ``step``, as records holding only what a pruner reads there."""
    with storage.engine.connect() as conn:
        rows = aggregates.rung(conn, study_id, step, RUNG_ATTRS)
    out = []
    for trial_id, number, state, value, at, attrs in sorted(rows, key=lambda r: r[1]):
        st = TrialState[state]
        out.append(FrozenTrial(number=number, state=st, value=value if st == TrialState.COMPLETE else None,
                               datetime_start=None, datetime_complete=None, params={}, distributions={},
                               user_attrs=attrs, system_attrs={},
                               intermediate_values={step: math.nan if at is None else float(at)},
                               trial_id=trial_id))
    return out


class TrialReporter:
    """A worker's link to one running Optuna trial: it reports each epoch's value and asks the
    pruner, keeping storage round trips off the training path.

    * Nothing is read to start: the trial's record for the pruner is built from what the worker
      knows (its number, id and the values it reported), not fetched.
    * A report is written by ``background`` (ordered, one thread), overlapping the next epoch
      and the pruner's read; ``close`` waits for what is still pending.
    * The pruner is consulted only at steps where it may prune, with one read of the finished
      trials, or a read of this worker's from less than a second ago (``ReferenceTrials``).

    >>> from optuna.storages import InMemoryStorage
    >>> from autoopt.study import open_study, trial_id_of
    >>> study = open_study(InMemoryStorage(), "doc", direction="maximize",
    ...                    pruner=build_pruner("median", epochs=4, warmup=0.0))
    >>> trial = study.ask()
    >>> reporter = TrialReporter(study, trial_id_of(study, trial.number), trial.number)
    >>> reporter.report(0.5, 1)
    >>> reporter.should_prune(1), reporter.close()
    (False, None)
    >>> study.trials[0].intermediate_values
    {1: 0.5}
    """

    def __init__(self, study: optuna.Study, trial_id: int, number: int, *,
                 background: Executor | None = None, reference: ReferenceTrials | None = None,
                 retry: Callable[[Callable[[], Any], str], Any] | None = None) -> None:
        self.study, self.trial_id, self.number = study, trial_id, number
        self.storage = storage_of(study)  # the study must come from autoopt.study (open_study, load_study)
        self.reference = reference
        self.values: dict[int, float] = {}
        self.epoch_s: list[float] = []  # seconds of each epoch so far: the screen's cost-aware rule reads them
        self._background = background
        self._retry = retry or (lambda fn, _what: fn())
        self._pending: list[Future] = []

    def report(self, value: float, step: int, *, write: bool = True, epoch_s: float | None = None) -> None:
        """Record ``value`` at ``step`` (and the epoch's seconds) for the pruner; store it unless
        ``write`` is False (the driver then records it with the trial's result)."""
        self.values[step] = float(value)
        if epoch_s is not None:
            self.epoch_s.append(float(epoch_s))
        if not write:
            return
        storage, trial_id, value = self.storage, self.trial_id, float(value)

        def _write() -> None:
            self._retry(lambda: storage.set_trial_intermediate_value(trial_id, step, value),
                        "report an epoch")

        if self._background is None:
            _write()
        else:
            self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
            self._pending.append(self._background.submit(_write))

    def should_prune(self, step: int) -> bool:
        """The pruner's verdict at ``step`` (False without asking where it cannot prune)."""
        pruner = self.study.pruner
        if not may_prune(pruner, step):
            return False
        # Successive halving keeps its rungs in the trial's system attributes: read them for it.
        inner = pruner.inner if isinstance(pruner, GuardedPruner) else pruner
        halving = isinstance(inner, HyperbandPruner | SuccessiveHalvingPruner)
        attrs = self.storage.get_trial_system_attrs(self.trial_id) if halving else {}
        user_attrs = {S_PER_EPOCH: statistics.fmean(self.epoch_s)} if self.epoch_s else {}
        frozen = FrozenTrial(number=self.number, state=TrialState.RUNNING, value=None, datetime_start=None,
                             datetime_complete=None, params={}, distributions={}, user_attrs=user_attrs,
                             system_attrs=attrs, intermediate_values=dict(self.values),
                             trial_id=self.trial_id)

        def _prune() -> bool:
            # Successive halving reads its brackets from every trial: the study; the others the rung.
            reference = self.reference.get(self.study, None if halving else step) if self.reference else None
            with trials_snapshot(self.study, reference):
                return bool(pruner.prune(self.study, frozen))

        return bool(self._retry(_prune, "ask the pruner"))

    def close(self) -> None:
        """Wait for the reports still being written; raise the first failure."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()


def screen_rungs(epochs: int, eta: int = SCREEN_ETA) -> list[int]:
    """The screen's rungs: epochs ``epochs / eta**2`` and ``epochs / eta`` (rounded up), below
    the last epoch.

    >>> screen_rungs(5), screen_rungs(8), screen_rungs(15), screen_rungs(2)
    ([1, 2], [1, 3], [2, 5], [1])
    """
    return sorted({max(1, math.ceil(epochs / eta**i)) for i in (2, 1)} - {epochs})


class ScreenPruner(BasePruner):
    """Successive halving over the portfolio's published defaults, cost-aware.

    At each rung (``screen_rungs``) a portfolio trial goes on only while it is among the best
    ``1 / (eta * c)`` of the portfolio trials that reached the rung (at least the best one),
    where ``c`` (at least 1) is its seconds per epoch over the median of theirs: a family ten
    times slower per epoch must lead its rung to earn its full training. Asynchronous, as
    ASHA (Li et al. 2020): a rung is judged on the trials that reached it so far. The
    ``GuardedPruner`` around it keeps late bloomers (the comeback guard). ``cost_aware=False``
    (under a time budget, ``screen_rank``): the best third goes on whatever its cost, and the
    trial's deadline stops what the budget cannot afford."""

    def __init__(self, rungs: Iterable[int], eta: int = SCREEN_ETA, *, cost_aware: bool = True) -> None:
        self.rungs, self.eta, self.cost_aware = frozenset(rungs), eta, cost_aware

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step not in self.rungs:
            return False
        value = trial.intermediate_values.get(step)
        if value is None or not math.isfinite(value):
            return True
        peers = [t for t in study.get_trials(deepcopy=False)
                 if record(t).kind == TrialKind.SCREEN and t.number != trial.number
                 and math.isfinite(t.intermediate_values.get(step, math.nan))]
        mine = record(trial).s_per_epoch
        speeds = [s for t in peers if (s := record(t).s_per_epoch)]
        slowdown = mine / statistics.median([*speeds, mine]) if mine and speeds and self.cost_aware else 1.0
        keep = max(1, math.floor((len(peers) + 1) / (self.eta * max(1.0, slowdown))))
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        ahead = sum(1 for t in peers if (t.intermediate_values[step] > value if maximize
                                         else t.intermediate_values[step] < value))
        return ahead >= keep


def build_pruner(name: str, *, epochs: int, warmup: float) -> BasePruner:
    """``median``, ``hyperband`` or ``none``; no pruning before ``warmup`` × ``epochs``, nor at
    the last epoch, nor while a finished trial shows a comeback from where the trial stands.
    ``screen``: the portfolio's cost-aware successive halving (``ScreenPruner``), guarded the same way;
    ``screen_rank``: the same by rank alone (under a time budget)."""
    warmup_steps = math.floor(warmup * epochs)
    if name in SCREENS and epochs >= 2:
        rungs = screen_rungs(epochs)
        return GuardedPruner(ScreenPruner(rungs, cost_aware=name == SCREEN_PRUNER), warmup_steps=0, max_steps=epochs,
                             steps=rungs)
    if name == "none" or name in SCREENS or epochs < 2:
        return NopPruner()
    if name == "hyperband":
        inner: BasePruner = HyperbandPruner(min_resource=max(1, warmup_steps), max_resource=epochs,
                                            reduction_factor=3)
    else:
        inner = MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=0)
    return GuardedPruner(inner, warmup_steps=warmup_steps, max_steps=epochs)
