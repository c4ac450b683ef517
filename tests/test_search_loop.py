"""The search loop on a fake pool and a fake clock: its deadline, the budget's hard limit, a
lost worker's trial re-queued, and the starved driver's line, with no real time and no Ray.

The study is real (Optuna on SQLite); only the workers and the time are stand-ins: a job
"trains" for as many seconds of the fake clock as its family's speed says, and ends when the
loop collects after that time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from autoopt.budget import Budget
from autoopt.commands.progress import describe
from autoopt.dispatch.clock import ManualClock
from autoopt.dispatch.pool import Finished, InFlight
from autoopt.dispatch.results import JobResult, JobState
from autoopt.dispatch.search import SearchLoop
from autoopt.dispatch.worker import Job
from autoopt.spec import load_spec
from autoopt.study import open_storage, open_study


@dataclass
class FakePool:
    """``size`` workers, placed after ``placed_at`` seconds of the fake clock (never: None); a job
    runs ``s_per_epoch`` seconds per epoch (its family's in ``speeds``, where it has one); the jobs
    whose numbers are in ``lose`` lose their worker (once each)."""

    clock: ManualClock
    size: int = 2
    s_per_epoch: float = 1.0
    speeds: dict[str, float] = field(default_factory=dict)
    placed_at: float | None = 0.0
    lose: set[int] = field(default_factory=set)
    workers: list[Any] = field(default_factory=list)
    busy: dict[int, tuple[float, Job, int]] = field(default_factory=dict)  # worker -> (end, job, number)
    submitted: list[tuple[float, int]] = field(default_factory=list)  # (fake time, trial number)
    warmed: bool = False
    refs: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.workers = [object() for _ in range(self.size)]
        self.start = self.clock.monotonic()

    @property
    def warming(self) -> bool:
        return self.warmed

    def warm(self, job: Job, task: Any = None) -> None:
        self.warmed = True

    def placed(self) -> bool:
        return self.placed_at is not None and self.clock.monotonic() - self.start >= self.placed_at

    def free(self) -> int | None:
        if not self.placed():
            return None
        return next((i for i in range(self.size) if i not in self.busy), None)

    def submit(self, index: int, job: Job, trial: Any = None) -> tuple[Any, InFlight]:
        assert index not in self.busy
        self.busy[index] = (self.clock.monotonic() + job.epochs * self.speed(job), job, trial.number)
        self.submitted.append((self.clock.monotonic(), trial.number))
        return next(self.refs), InFlight(index, job, trial, submitted=self.clock.monotonic(),
                                         started=self.clock.time())

    def collect(self, inflight: dict[Any, InFlight], timeout_s: float | None = None) -> list[Finished]:
        if not inflight:
            return []
        first = min(end for end, _, _ in self.busy.values())
        self.clock.advance(min(first, self.clock.monotonic() + (timeout_s or 0.0)) - self.clock.monotonic())
        out = []
        for ref, item in list(inflight.items()):
            end, job, number = self.busy[item.worker]
            if end > self.clock.monotonic():
                continue
            del inflight[ref], self.busy[item.worker]
            if number in self.lose:
                self.lose.discard(number)
                out.append(Finished(item, JobResult.failed("worker died"), lost=True, ended=self.clock.time()))
                continue
            history = [{"epoch": e + 1, "val_accuracy": 0.5 + 0.01 * number, "epoch_s": self.speed(job)}
                       for e in range(job.epochs)]
            out.append(Finished(item, JobResult(JobState.COMPLETE, history[-1]["val_accuracy"], history),
                                ended=self.clock.time()))
        return out

    def speed(self, job: Job) -> float:
        return self.speeds.get(job.config.optimizer, self.s_per_epoch)

    def wait_ready(self, timeout_s: float) -> None:
        self.clock.advance(timeout_s)

    def release(self) -> int:
        return 0

    def restore(self) -> None:
        pass

    def describe_wait(self) -> str:
        return "each worker asks 1 CPU and 0 GPU; the cluster has 0 CPU free"

    def shutdown(self) -> None:
        self.busy.clear()


def loop_on(tmp_path: Path, pool: FakePool, *, trials: int, epochs: int = 2, budget: Budget | None = None,
            **spec: Any) -> tuple[SearchLoop, optuna.Study]:
    url = f"sqlite:///{tmp_path / 's.db'}"
    s = load_spec("digits", trials=trials, epochs=epochs, optimizers="classic", pruner="none", seed=3,
                  storage=url, **spec)
    study = open_study(open_storage(url, heartbeat=False), "s", direction="maximize")
    return SearchLoop(study, spec=s, storage_url=url, tracking=None, pool=pool, budget=budget,
                      clock=pool.clock), study


def states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


def test_the_loop_runs_every_trial_on_the_workers_it_has(tmp_path: Path) -> None:
    clock = ManualClock()
    pool = FakePool(clock, size=2, s_per_epoch=1.0)
    loop, study = loop_on(tmp_path, pool, trials=8, epochs=2)
    t0 = clock.monotonic()
    progress = loop.run()
    assert states(study) == [TrialState.COMPLETE] * 8 and progress.complete == 8
    # Two workers, 8 trials of 2 s each: 8 seconds of the fake clock, never a worker idle.
    assert clock.monotonic() - t0 == pytest.approx(8.0)
    assert sorted(s.number for s in loop.tally.timeline) == list(range(8))
    assert loop.tally.epochs_run == {"screen": 0, "search": 16}


def test_no_trial_starts_after_the_deadline(tmp_path: Path) -> None:
    clock = ManualClock()
    pool = FakePool(clock, size=2, s_per_epoch=3.0)
    loop, study = loop_on(tmp_path, pool, trials=50, epochs=2, timeout_s=20)
    t0 = clock.monotonic()
    loop.run()
    assert all(at - t0 < 20 for at, _ in pool.submitted)
    # 6 s a trial on 2 workers: starts at 0, 6, 12 and 18 s, each on both workers.
    assert len(pool.submitted) == 8 and len(study.get_trials(deepcopy=False)) == 8
    assert states(study) == [TrialState.COMPLETE] * 8  # the last ones finish past the deadline, told


def test_the_budget_stops_the_search_before_its_reserve(tmp_path: Path) -> None:
    clock = ManualClock()
    budget = Budget(limit_s=120, since=clock.time(), clock=clock.time)
    pool = FakePool(clock, size=2, s_per_epoch=5.0)
    loop, study = loop_on(tmp_path, pool, trials=100, epochs=2, budget=budget)
    loop.run()
    assert loop.costs.spent and any(n.startswith("search stopped") for n in budget.notes), budget.notes
    # The search never spends what the confirmation was kept: its last trial ends before the
    # budget's end minus the race's reserve (two seeds of the best configs, 10 s each here).
    reserve = budget.confirm_reserve(loop.costs.race(2))
    assert budget.used() <= budget.limit_s - budget.end_reserve() - reserve + 1e-6
    finished = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert 4 <= len(finished) < 100


def test_a_search_that_runs_all_its_trials_under_a_budget_says_so(tmp_path: Path) -> None:
    clock = ManualClock()
    budget = Budget(limit_s=1000, since=clock.time(), clock=clock.time)
    loop, _ = loop_on(tmp_path, FakePool(clock, size=2, s_per_epoch=1.0), trials=6, epochs=2, budget=budget)
    loop.run()
    assert not loop.costs.spent and budget.used() < 20
    assert any(n.startswith("the search ran all its 6 trials with") for n in budget.notes), budget.notes
    assert not any(n.startswith("search stopped") for n in budget.notes)


def test_a_trial_the_budget_cannot_afford_shows_as_skipped_not_failed(tmp_path: Path) -> None:
    clock = ManualClock()
    budget = Budget(limit_s=300, since=clock.time(), clock=clock.time)
    pool = FakePool(clock, size=2, s_per_epoch=1.0, speeds={"sgd": 20.0})
    loop, study = loop_on(tmp_path, pool, trials=200, epochs=2, budget=budget)
    progress = loop.run()
    skipped = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
    assert skipped and all(t.user_attrs.get("skipped") for t in skipped), [t.user_attrs for t in skipped]
    assert "expected cost exceeds" in skipped[0].user_attrs["reason"]
    assert (progress.failed, progress.skipped) == (0, len(skipped))
    line = describe(progress, eta=False)
    assert f"failed 0  skipped {len(skipped)}" in line, line


def test_a_trial_whose_worker_died_is_run_again(tmp_path: Path) -> None:
    clock = ManualClock()
    pool = FakePool(clock, size=2, lose={1})
    loop, study = loop_on(tmp_path, pool, trials=4, epochs=1)
    progress = loop.run()
    trials = study.get_trials(deepcopy=False)
    assert trials[1].state == TrialState.FAIL and "worker died" in trials[1].user_attrs["reason"]
    retried = [t for t in trials if t.system_attrs.get("retry_history") == [1]]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    # The retry does not count against --trials: 4 complete, the lost run beside them.
    assert progress.complete == 4 and len(trials) == 5


def test_a_driver_without_a_worker_says_so_once_then_meets_its_deadline(tmp_path: Path) -> None:
    clock = ManualClock()
    pool = FakePool(clock, placed_at=None)
    seen: list[str] = []
    loop, study = loop_on(tmp_path, pool, trials=4, timeout_s=150)
    loop.display.on_progress = lambda p: seen.append(p.last)
    t0 = clock.monotonic()
    loop.run()
    lines = [e for e in seen if e.startswith("no worker placed")]
    assert lines == ["no worker placed for 60s: each worker asks 1 CPU and 0 GPU; the cluster has 0 CPU free"]
    assert clock.monotonic() - t0 == pytest.approx(150.0)
    assert study.get_trials(deepcopy=False) == [] and pool.submitted == []
