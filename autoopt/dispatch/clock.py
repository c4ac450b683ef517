"""The clock the search reads, injected: ``SYSTEM`` in a real run, a fake one in tests.

Every part of the search that needs the time (the deadline, the upkeep's beat, the display's
refresh and estimate, the book's grace periods, a trial's deadline on its worker) reads it from
one ``Clock``, so the loop runs in tests on a fake pool with time that moves only when the test
says.

>>> clock = ManualClock()
>>> deadline = Deadline.after(clock, 10.0)
>>> deadline.wait_s(3.0), deadline.passed()
(3.0, False)
>>> clock.sleep(8.0)
>>> deadline.wait_s(3.0)
2.0
>>> clock.sleep(2.0)
>>> deadline.passed(), Deadline.after(clock, None).wait_s(3.0)
(True, 3.0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds (for durations), wall-clock seconds (what is recorded), and a sleep."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock (``time``)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM: Clock = SystemClock()


@dataclass
class ManualClock:
    """A clock that moves only when told: ``sleep`` and ``advance`` move it, nothing waits."""

    now: float = 1_000.0
    epoch: float = 1.7e9  # what ``time`` reads at ``now == 0``

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.epoch + self.now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@dataclass(frozen=True)
class Deadline:
    """When the search must end (``--timeout``, ``--time-budget``), on ``clock``; ``at`` None:
    never."""

    clock: Clock
    at: float | None

    @classmethod
    def after(cls, clock: Clock, seconds: float | None) -> Deadline:
        return cls(clock, clock.monotonic() + seconds if seconds else None)

    def passed(self) -> bool:
        return self.at is not None and self.clock.monotonic() >= self.at

    def wait_s(self, longest: float) -> float:
        """How long a wait may last: ``longest``, or less before the deadline."""
        if self.at is None:
            return longest
        return max(0.0, min(longest, self.at - self.clock.monotonic()))
