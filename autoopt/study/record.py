"""The trial record: what autoopt keeps of a trial in Optuna's user attrs, typed and read in one
place (``TrialRecord.of``), as Optuna's ``FrozenTrial`` is the record of its own fields.

The user attrs a trial carries (the driver writes them through this module's ``write_*``:
``prepare`` the config, ``tell`` the rest):

* ``config``: the ``TrialConfig`` it trained (``TrialConfig.to_dict()``);
* ``s_per_epoch``, ``train_s``: its measured seconds per epoch and in all;
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
                   intermediate=dict(trial.intermediate_values))

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
              rss_mb: float | None = None) -> None:
    """What its run measured: its seconds in all and per epoch (rounded), its (compacted)
    ``history``, its ``reason`` if any, and the worker that ran it (``pid`` set: for a crash,
    its node's logs)."""
    if reason:
        trial.set_user_attr(REASON, reason)
    trial.set_user_attr(TRAIN_S, round(train_s, 4))
    if s_per_epoch is not None:
        trial.set_user_attr(S_PER_EPOCH, round(s_per_epoch, 6))
    if pid:
        trial.set_user_attr(WORKER, {"node": node, "pid": pid, "rss_mb": rss_mb})
    trial.set_user_attr(HISTORY, history)
