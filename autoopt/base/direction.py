"""The one "best by direction" helper: which of two metric values is better.

A direction is ``"maximize"`` or ``"minimize"``. Optuna's ``StudyDirection.MAXIMIZE`` (or any
object whose ``name`` is one of them, in any case) is accepted too, so callers never write
``max if ... else min`` themselves.

>>> better(0.9, 0.8, "maximize"), better(0.9, 0.8, "minimize")
(True, False)
>>> best([3, 1, 2], key=lambda v: v, direction="minimize")
1
>>> sign("minimize")
-1
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, TypeVar

Direction = Literal["maximize", "minimize"]
T = TypeVar("T")

__all__ = ["Direction", "best", "better", "normalize", "ordered", "sign"]


def normalize(direction: object) -> Direction:
    """``"maximize"`` or ``"minimize"`` from a string or an enum such as Optuna's ``StudyDirection``."""
    text = str(getattr(direction, "name", direction)).lower()
    if text == "maximize":
        return "maximize"
    if text == "minimize":
        return "minimize"
    raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")


def sign(direction: object) -> int:
    """+1 when larger is better, -1 when smaller is better: ``sign * value`` is "higher is better"."""
    return 1 if normalize(direction) == "maximize" else -1


def better(a: float, b: float, direction: object) -> bool:
    """Whether ``a`` is strictly better than ``b``."""
    return sign(direction) * a > sign(direction) * b


def best(items: Iterable[T], key: Callable[[T], float], direction: object) -> T:
    """The best item by ``key`` (the first one on ties); ``ValueError`` when ``items`` is empty."""
    s = sign(direction)
    return max(items, key=lambda item: s * key(item))


def ordered(items: Iterable[T], key: Callable[[T], float], direction: object) -> list[T]:
    """``items`` sorted best first (stable: ties keep their order)."""
    s = sign(direction)
    return sorted(items, key=lambda item: -s * key(item))
