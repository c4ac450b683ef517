"""The first of the processes warming up together on a small machine goes alone; the others
wait for it, then go together (``first_alone``), across processes, by a file lock."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autoopt.base.background import GATE_ENV, first_alone, new_gate


def test_the_first_goes_alone_and_the_next_waits_until_it_has_left(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    Path(gate).touch()  # as new_gate makes it
    # Another process inside the gate, for 1.5 s.
    inside = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from autoopt.base.background import first_alone\n"
        f"with first_alone({gate!r}, cpus=2) as alone:\n"
        "    print(alone, flush=True); time.sleep(1.5)\n")], stdout=subprocess.PIPE, text=True)
    assert inside.stdout is not None and inside.stdout.readline().strip() == "True"
    started = time.monotonic()
    with first_alone(gate, cpus=2) as alone:
        waited = time.monotonic() - started
    assert inside.wait(10) == 0
    assert alone is False
    assert waited > 0.8, f"went in after {waited:.2f}s, while the first was still inside"
    # Once it has left, the next one in is alone again.
    with first_alone(gate, cpus=2) as alone:
        assert alone is True


def test_those_that_waited_go_in_together(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    fd = os.open(gate, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the first, inside
    entered: list[float] = []

    def follower() -> None:
        with first_alone(gate, cpus=2):
            entered.append(time.monotonic())
            time.sleep(0.5)  # the others go in meanwhile, not after it

    threads = [threading.Thread(target=follower) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert not entered, "a follower went in while the first was inside"
    os.close(fd)  # the first leaves
    for t in threads:
        t.join(10)
    assert len(entered) == 3 and max(entered) - min(entered) < 0.4, entered


def test_no_gate_on_a_larger_machine(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    fd = os.open(gate, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with first_alone(gate, cpus=16) as alone:
            assert alone is False  # not kept waiting: 16 cores hold every warm-up at once
    finally:
        os.close(fd)


def test_one_stuck_inside_keeps_no_one_waiting_past_the_limit(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    fd = os.open(gate, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # inside, and never leaving
    try:
        started = time.monotonic()
        with first_alone(gate, cpus=2, wait_s=0.5) as alone:
            waited = time.monotonic() - started
        assert alone is False and 0.4 < waited < 3.0, waited
    finally:
        os.close(fd)


def test_no_gate_where_none_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process Ray started without a gate (a cluster joined, not started here) waits for none."""
    monkeypatch.delenv(GATE_ENV, raising=False)
    with first_alone(cpus=2) as alone:
        assert alone is False


def test_a_removed_gate_is_not_made_again(tmp_path: Path) -> None:
    """A worker process Ray starts after ``stop_ray`` removed its gate (a late restart) waits for
    none and leaves no file behind."""
    gate = tmp_path / "gate"
    with first_alone(str(gate), cpus=2) as alone:
        assert alone is False
    assert not gate.exists()


def test_each_ray_started_here_has_its_own_gate() -> None:
    """Two Rays started on one machine (two commands, the suite's two workers) never wait for
    each other's warm-up: ``start_ray`` names a fresh gate for each."""
    gates = [new_gate(), new_gate()]
    try:
        assert gates[0] != gates[1] and all(os.path.exists(g) for g in gates)
    finally:
        for g in gates:
            os.remove(g)
