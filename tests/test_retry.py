"""The one retry loop: how many tries, the waits between them, what is raised at the end."""

from __future__ import annotations

import time

import pytest

from autoopt.base.retry import retried, tries


class Flaky:
    """Fails with ``error`` the first ``failures`` calls, then returns how many calls it took."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.calls


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds each retry waited (none spent)."""
    out: list[float] = []
    monkeypatch.setattr(time, "sleep", out.append)
    return out


def test_tries_waits_after_each_failure_and_returns_the_first_success(waits: list[float]) -> None:
    fn = Flaky(3, ConnectionError("down"))
    assert retried(fn, tries(5, wait=lambda n: 0.5 * 2 ** (n - 1))) == 4
    assert waits == [0.5, 1.0, 2.0]


def test_the_last_failure_is_raised_after_the_last_try(waits: list[float]) -> None:
    fn = Flaky(10, ConnectionError("down"))
    with pytest.raises(ConnectionError, match="down"):
        retried(fn, tries(5, wait=lambda n: 0.2 * n))
    assert fn.calls == 5 and waits == pytest.approx([0.2, 0.4, 0.6, 0.8])


def test_an_error_the_policy_refuses_is_raised_at_once(waits: list[float]) -> None:
    fn = Flaky(1, ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        retried(fn, tries(5, wait=lambda n: 1.0, when=lambda exc: isinstance(exc, ConnectionError)))
    assert fn.calls == 1 and waits == []


def test_a_policy_may_give_up_with_an_error_of_its_own(waits: list[float]) -> None:
    def policy(exc: Exception, failures: int, waited: float) -> float | None:
        if failures >= 2:
            raise TimeoutError(f"gave up after {failures} failures") from None
        return 0.1

    with pytest.raises(TimeoutError, match="after 2 failures") as info:
        retried(Flaky(10, ConnectionError("down")), policy)
    assert info.value.__suppress_context__ and waits == [0.1]
