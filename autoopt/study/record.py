"""The trial record: what autoopt keeps of a trial in Optuna's user attrs, typed and read in one
place (``TrialRecord.of``), as Optuna's ``FrozenTrial`` is the record of its own fields.

The user attrs a trial carries (the driver writes them through this module's ``write_*``:
``prepare`` the config, ``tell`` the rest):

* ``config``: the ``TrialConfig`` it trained (``TrialConfig.to_dict()``);
* ``s_per_epoch``, ``train_s``: its measured seconds per epoch and in all;
* ``seed`` and ``batch_size``: the seed it trained with (``trial_seed``) and its batch size (None:
  the task's); ``test``: its test metrics, when it ran every epoch. A complete run at the race's
  epochs and batch size is a seed of the confirmation's race (``autoopt.decide.confirm.made_runs``),
  which reports the test split of every seed it counts;
* ``history``: per epoch, its losses, metric, learning rate and seconds (compacted);
* ``reason``: why it failed or was pruned; ``worker``: the node, pid and peak memory that ran it;
* ``skipped``: failed before it started, the time budget not affording it (``write_skipped``);
* ``portfolio`` or ``warmstart``: a screened family at its published defaults, or a warm start
  from an earlier study (its name); neither: a trial the sampler proposed (``TrialKind``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from optuna.trial import FrozenTrial, TrialState

CONFIG = "config"
S_PER_EPOCH = "s_per_epoch"
TRAIN_S = "train_s"
HISTORY = "history"
REASON = "reason"
WORKER = "worker"
SKIPPED = "skipped"
SEED = "seed"
BATCH_SIZE = "batch_size"
TEST = "test"
# Where the confirmation's seeds start (``base_seed + CONFIRM_OFFSET + i``), apart from the
# search's (``base_seed + trial number``); the screen's runs all train on the first of them.
CONFIRM_OFFSET = 10_000


class TrialKind(StrEnum):
    """What a trial of a study is (the confirmation's runs are not trials); also the MLflow tag
    ``autoopt.kind`` of its nested run."""

    SCREEN = "screen"  # a family at its published defaults (autoopt.screen.portfolio enqueues them)
    WARMSTART = "warmstart"  # a warm start from an earlier study
    SEARCH = "search"  # proposed by the sampler


# The marks of the enqueued kinds: ``portfolio: True``, ``warmstart: <the earlier study>``. The
# screen's mark, and the MLflow kind tag of its runs, is ``portfolio``: the name every study and
# run has carried, which users' queries and dashboards read (the code's kind is TrialKind.SCREEN).
SCREEN = "portfolio"
WARMSTART = TrialKind.WARMSTART.value
SCREEN_MARKS = (SCREEN,)  # what marks a screened trial


@dataclass(frozen=True)
class TrialRecord:
    """One trial as autoopt recorded it."""

    number: int
    state: TrialState
    value: float | None
    config: dict[str, Any] | None = None  # None: not sampled yet (a waiting trial)
    kind: TrialKind = TrialKind.SEARCH
    s_per_epoch: float | None = None
    train_s: float | None = None
    reason: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    worker: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False  # failed before it started: the time budget could not afford it
    source: str | None = None  # a warm start's earlier study
    intermediate: dict[int, float] = field(default_factory=dict)
    seed: int | None = None  # None: a trial recorded before seeds were
    batch_size: int | None = None  # None: the task's
    test: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        config = attrs.get(CONFIG)
        spe, train_s = attrs.get(S_PER_EPOCH), attrs.get(TRAIN_S)
        kind = kind_of(attrs)
        return cls(trial.number, trial.state, trial.value if trial.state == TrialState.COMPLETE else None,
                   config=config if isinstance(config, dict) else None, kind=kind,
                   s_per_epoch=float(spe) if spe else None, train_s=float(train_s) if train_s else None,
                   reason=attrs.get(REASON), history=list(attrs.get(HISTORY) or []),
                   worker=dict(attrs.get(WORKER) or {}), skipped=bool(attrs.get(SKIPPED)),
                   source=str(attrs[WARMSTART]) if attrs.get(WARMSTART) else None,
                   intermediate=dict(trial.intermediate_values),
                   seed=attrs[SEED] if isinstance(attrs.get(SEED), int) else None,
                   batch_size=attrs[BATCH_SIZE] if isinstance(attrs.get(BATCH_SIZE), int) else None,
                   test={k: float(v) for k, v in (attrs.get(TEST) or {}).items()})

    @property
    def family(self) -> str | None:
        """The optimizer family it trained (None before its config was sampled)."""
        return self.config.get("optimizer") if self.config else None

    @property
    def epochs(self) -> int:
        """The epochs it reported."""
        return len(self.intermediate)

    @property
    def lr(self) -> float | None:
        lr = (self.config or {}).get("optimizer_params", {}).get("lr")
        return float(lr) if isinstance(lr, int | float) else None


def kind_of(attrs: Mapping[str, Any]) -> TrialKind:
    """The kind of a trial with these user attrs (a live trial's, say)."""
    if any(attrs.get(mark) for mark in SCREEN_MARKS):
        return TrialKind.SCREEN
    return TrialKind.WARMSTART if attrs.get(WARMSTART) else TrialKind.SEARCH


def trial_seed(base_seed: int, number: int, kind: TrialKind) -> int:
    """The seed trial ``number`` of ``kind`` trains with: ``base_seed + number``, apart for each
    trial; the screen's, every family's published defaults, on one seed, the confirmation's first
    (``base_seed + CONFIRM_OFFSET``). Common random numbers: the families are screened on the same
    initial weights and batch order, and a complete screen run of a default is that baseline's
    first seed in the race, paired with every other contender's run on it."""
    return base_seed + CONFIRM_OFFSET if kind == TrialKind.SCREEN else base_seed + number


def record(trial: FrozenTrial) -> TrialRecord:
    """``TrialRecord.of(trial)``."""
    return TrialRecord.of(trial)


class Writable(Protocol):
    """What a record is written to: a live trial (``optuna.trial.Trial``)."""

    def set_user_attr(self, key: str, value: Any) -> None: ...


def write_config(trial: Writable, config: Mapping[str, Any]) -> None:
    """The config the trial trains (``TrialConfig.to_dict()``)."""
    trial.set_user_attr(CONFIG, dict(config))


def write_reason(trial: Writable, reason: str | None) -> None:
    """Why it failed or was pruned; None clears a reason (one a retry inherited)."""
    trial.set_user_attr(REASON, reason)


def write_skipped(trial: Writable, reason: str) -> None:
    """Not started, and why (the time budget could not afford it): it fails as skipped."""
    trial.set_user_attr(REASON, reason)
    trial.set_user_attr(SKIPPED, True)


def write_run(trial: Writable, *, train_s: float, s_per_epoch: float | None, history: list[dict[str, float]],
              reason: str | None = None, node: str | None = None, pid: int | None = None,
              rss_mb: float | None = None, seed: int | None = None, batch_size: int | None = None,
              test: Mapping[str, float] | None = None) -> None:
    """What its run measured: its seconds in all and per epoch (rounded), its (compacted)
    ``history``, its ``reason`` if any, the worker that ran it (``pid`` set: for a crash, its
    node's logs), the ``seed`` and ``batch_size`` it trained with and its ``test`` metrics (a
    complete run's)."""
    if reason:
        trial.set_user_attr(REASON, reason)
    if seed is not None:
        trial.set_user_attr(SEED, seed)
        if batch_size is not None:
            trial.set_user_attr(BATCH_SIZE, batch_size)
    if test:
        trial.set_user_attr(TEST, {k: float(v) for k, v in test.items()})
    trial.set_user_attr(TRAIN_S, round(train_s, 4))
    if s_per_epoch is not None:
        trial.set_user_attr(S_PER_EPOCH, round(s_per_epoch, 6))
    if pid:
        trial.set_user_attr(WORKER, {"node": node, "pid": pid, "rss_mb": rss_mb})
    trial.set_user_attr(HISTORY, history)
