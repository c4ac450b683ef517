"""Search dimensions: their types, how a trial samples one, and their checks.

A dimension is what a study file's ``{log: [1e-4, 1]}`` becomes (``parse_dimension``); every
dimension a family, a study file or ``register_optimizer`` brings is checked
(``check_dimension``) before a trial could sample it.

>>> parse_dimension({"log": [1e-4, 1]}, "sgd.lr")
LogUniform(low=0.0001, high=1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoopt.errors import UsageError

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class LogUniform:
    """A float searched on a log scale between ``low`` and ``high``."""

    low: float
    high: float


@dataclass(frozen=True)
class Uniform:
    """A float searched uniformly between ``low`` and ``high``."""

    low: float
    high: float


@dataclass(frozen=True)
class IntRange:
    """An integer searched between ``low`` and ``high`` (both included)."""

    low: int
    high: int


@dataclass(frozen=True)
class Choice:
    """One of a few values (bool, int, float or str)."""

    options: tuple[Any, ...]

    def __init__(self, *options: Any) -> None:
        object.__setattr__(self, "options", tuple(options))


@dataclass(frozen=True)
class Fixed:
    """A value that is not searched."""

    value: Any


Dimension = LogUniform | Uniform | IntRange | Choice | Fixed


def suggest(trial: optuna.trial.BaseTrial, name: str, dim: Dimension) -> Any:
    """Ask ``trial`` for the value of one dimension."""
    match dim:
        case Fixed(value):
            return value
        case LogUniform(low, high):
            return trial.suggest_float(name, low, high, log=True)
        case Uniform(low, high):
            return trial.suggest_float(name, low, high)
        case IntRange(low, high):
            return trial.suggest_int(name, low, high)
        case Choice(options):
            return trial.suggest_categorical(name, list(options))
    raise TypeError(f"not a search dimension: {dim!r}")


def default_of(dim: Dimension) -> Any:
    """A representative value of a dimension (its midpoint), for smoke tests and priors."""
    match dim:
        case Fixed(value):
            return value
        case LogUniform(low, high):
            return math.sqrt(low * high)
        case Uniform(low, high):
            return (low + high) / 2
        case IntRange(low, high):
            return (low + high) // 2
        case Choice(options):
            return options[0]
    raise TypeError(f"not a search dimension: {dim!r}")


_FIX = "write {log: [low, high]}, {uniform: [low, high]}, {int: [low, high]}, {choice: [...]} or a fixed value"


def parse_dimension(raw: Any, where: str) -> Dimension:
    """Read a dimension from a study file and check it (``check_dimension``).

    ``{log: [1e-4, 1]}``, ``{uniform: [0, 0.99]}``, ``{int: [1, 5]}``, ``{choice: [a, b]}``,
    or a plain value (fixed). ``where`` (``sgd.lr``) names it in errors; its last part is the
    parameter's name.
    """
    if isinstance(raw, Mapping):
        if len(raw) != 1:
            raise UsageError(f"{where}: give one of log, uniform, int, choice; got {sorted(map(str, raw))}")
        (kind, value), = raw.items()
        if kind == "choice" and isinstance(value, list) and value:
            dim: Dimension = Choice(*value)
        elif kind in ("log", "uniform", "int") and isinstance(value, list) and len(value) == 2:
            low, high = value
            if not (_is_number(low) and _is_number(high)):
                raise UsageError(f"{where}: {kind} needs two numbers [low, high], got {value}")
            if kind == "int":
                dim = IntRange(int(low), int(high))
            else:
                dim = (LogUniform if kind == "log" else Uniform)(float(low), float(high))
        else:
            raise UsageError(f"{where}: {_FIX}; got {dict(raw)}")
    elif isinstance(raw, bool | int | float | str) or raw is None:
        dim = Fixed(raw)
    else:
        raise UsageError(f"{where}: cannot read {raw!r} as a search dimension; {_FIX}")
    check_dimension(where.rpartition(".")[2], dim, where)
    return dim


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_rate(param: str) -> bool:
    return param == "lr" or param.endswith("_lr")


def check_dimension(param: str, dim: Any, where: str) -> None:
    """Refuse a dimension no trial could use: bounds that are not finite numbers, low >= high,
    a log range not above 0, and a learning rate (``lr``, ``*_lr``) that could be 0, negative or
    not a number. Raises a one-line ``UsageError`` naming ``where`` and the fix."""
    rate = _is_rate(param)
    match dim:
        case LogUniform(low, high) | Uniform(low, high) | IntRange(low, high):
            kind = {LogUniform: "log", Uniform: "uniform", IntRange: "int"}[type(dim)]
            if not (_is_number(low) and _is_number(high) and math.isfinite(low) and math.isfinite(high)):
                raise UsageError(f"{where}: {kind} bounds must be finite numbers, got [{low}, {high}]")
            if low >= high:
                fix = f"write [{high}, {low}]" if high < low else "write a single value to fix it"
                raise UsageError(f"{where}: {kind} needs [low, high] with low < high, got [{low}, {high}]; {fix}")
            if (isinstance(dim, LogUniform) or rate) and low <= 0:
                what = "a learning rate" if rate else "a log range"
                raise UsageError(f"{where}: {what} must stay above 0, got [{low}, {high}]; "
                                 "use e.g. {log: [1.0e-4, 1.0e-1]}")
        case Choice(options):
            for value in options:
                _check_value(param, value, where, rate)
        case Fixed(value):
            _check_value(param, value, where, rate)
        case _:
            raise UsageError(f"{where}: not a search dimension: {dim!r}; use LogUniform, Uniform, IntRange, "
                             "Choice or a fixed value")


def _check_value(param: str, value: Any, where: str, rate: bool) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{where}: {value} is not a usable value; give a finite number")
    if rate and not (_is_number(value) and value > 0):
        raise UsageError(f"{where}: a learning rate must be a positive number, got {value!r}; "
                         "e.g. 1.0e-3 or {log: [1.0e-4, 1.0e-1]}")


def check_space(space: Mapping[str, Any], where: str) -> None:
    """``check_dimension`` for every entry of a family's space (``where`` is the family's name)."""
    for param, dim in space.items():
        check_dimension(param, dim, f"{where}.{param}")
