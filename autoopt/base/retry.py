"""Trying an operation again: the one retry loop, each caller with its own policy.

A policy is told every failure (the exception, how many failures so far, the seconds since the
first try) and answers how long to wait before the next try, or None to give up: the exception is
raised then. A policy may raise an error of its own instead (the storage's ``StorageDown``), or
log what it waits for. ``tries`` is the policy of a fixed number of tries. Only ``Exception`` is
retried: an interrupt (Ctrl-C) stops at once.

>>> failures = []
>>> def flaky() -> str:
...     if len(failures) < 2:
...         failures.append(1)
...         raise ConnectionError("not yet")
...     return "done"
>>> retried(flaky, tries(3, wait=lambda n: 0.0))
'done'
>>> retried(lambda: 1 / 0, tries(3, wait=lambda n: 0.0, when=lambda exc: isinstance(exc, ConnectionError)))
Traceback (most recent call last):
ZeroDivisionError: division by zero
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

Policy = Callable[[Exception, int, float], float | None]


def retried(fn: Callable[[], T], policy: Policy) -> T:
    """``fn()``, tried again after each failure for as long as ``policy`` says to wait."""
    start = time.monotonic()
    failures = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            failures += 1
            wait = policy(exc, failures, time.monotonic() - start)
            if wait is None:
                raise
            time.sleep(wait)


def tries(n: int, *, wait: Callable[[int], float],
          when: Callable[[Exception], bool] = lambda exc: True) -> Policy:
    """At most ``n`` tries, the next one ``wait(k)`` seconds after the ``k``-th failure; an error
    ``when`` refuses is raised at once."""
    def policy(exc: Exception, failures: int, waited_s: float) -> float | None:
        return wait(failures) if failures < n and when(exc) else None

    return policy
