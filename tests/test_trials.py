"""A trial's life in one driver (``autoopt.dispatch.trials.TrialBook``): every move between its
states, on a real SQLite study, and the moves it refuses."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import text

from autoopt.dispatch import JobResult, JobState, Life, TrialBook
from autoopt.dispatch.trials import BadMove
from autoopt.dispatch.worker import Job
from autoopt.space import TrialConfig
from autoopt.study import GRACE_S, open_storage, open_study, storage_of


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def study(tmp_path: Path) -> optuna.Study:
    return open_study(open_storage(f"sqlite:///{tmp_path / 's.db'}"), "life", direction="maximize")


def job() -> Job:
    return Job("digits", None, TrialConfig("sgd", {"lr": 0.05}), 1, 0)


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def beaten(study: optuna.Study) -> set[int]:
    """Numbers of the trials that have a heartbeat recorded."""
    base = storage_of(study).base
    with base.engine.connect() as conn:
        ids = {row[0] for row in conn.execute(text("SELECT trial_id FROM trial_heartbeats"))}
    return {t.number for t in study.get_trials(deepcopy=False) if t._trial_id in ids}


def running(book: TrialBook, study: optuna.Study) -> int:
    trial = study.ask()
    book.ask(trial, worker=0)
    book.place(trial.number, job())
    book.start(trial.number)
    return trial.number


def test_asked_placed_running_told(study: optuna.Study) -> None:
    book = TrialBook(study)
    trial = study.ask()
    held = book.ask(trial, worker=1)
    assert (book.state(trial.number), held.worker) == (Life.ASKED, 1)
    book.place(trial.number, job())
    assert book.state(trial.number) == Life.PLACED
    book.start(trial.number)
    assert book.state(trial.number) == Life.RUNNING
    result = JobResult(JobState.COMPLETE, 0.9, [{"epoch": 1, "val_accuracy": 0.9, "epoch_s": 0.5}], train_s=0.5)
    assert book.tell(trial.number, result)
    assert trial.number not in book and len(book) == 0
    assert book.history == [(0, Life.ASKED), (0, Life.PLACED), (0, Life.RUNNING), (0, Life.TOLD)]
    [frozen] = study.get_trials(deepcopy=False)
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.9
    assert frozen.user_attrs["s_per_epoch"] == 0.5


def test_pruned_and_failed_results_are_told_so(study: optuna.Study) -> None:
    book = TrialBook(study)
    a, b = running(book, study), running(book, study)
    assert book.tell(a, JobResult(JobState.PRUNED, None, [{"epoch": 1, "val_accuracy": 0.1}]))
    assert book.tell(b, JobResult.failed("boom"))
    assert states(study) == ["PRUNED", "FAIL"]
    assert study.trials[1].user_attrs["reason"] == "boom"


def test_moves_out_of_order_are_refused(study: optuna.Study) -> None:
    book = TrialBook(study)
    trial = study.ask()
    book.ask(trial, worker=0)
    with pytest.raises(BadMove, match="is asked"):
        book.start(trial.number)  # not placed yet
    with pytest.raises(BadMove, match="is asked"):
        book.tell(trial.number, JobResult.failed("x"))  # never sent to a worker
    with pytest.raises(BadMove, match="held already"):
        book.ask(trial, worker=1)
    book.place(trial.number, job())
    with pytest.raises(BadMove, match="is placed"):
        book.place(trial.number, job())
    book.start(trial.number)
    with pytest.raises(BadMove, match="is running"):
        book.skip(trial.number, "too late")  # running: only told or re-queued
    with pytest.raises(BadMove, match="not held"):
        book.start(99)
    assert states(study) == ["RUNNING"]


def test_a_skipped_trial_is_failed_with_its_reason_and_not_requeued(study: optuna.Study) -> None:
    book = TrialBook(study)
    trial = study.ask()
    book.ask(trial, worker=0)
    book.skip(trial.number, "not started: over budget")
    assert states(study) == ["FAIL"] and study.trials[0].user_attrs["reason"] == "not started: over budget"
    assert study.trials[0].user_attrs["skipped"] is True  # shown as skipped, not failed
    assert len(book) == 0 and book.history[-1] == (0, Life.TOLD)


def test_a_running_trial_that_lost_its_worker_is_requeued_for_any_driver(study: optuna.Study) -> None:
    book = TrialBook(study)
    number = running(book, study)
    book.requeue(number, "worker died during the trial")
    assert states(study) == ["FAIL", "WAITING"]
    assert study.trials[0].user_attrs["reason"] == "worker died during the trial"
    assert book.history[-1] == (number, Life.REQUEUED) and len(book) == 0
    retry = study.ask()  # any driver's next ask takes it
    assert retry.number == 1 and study.trials[1].system_attrs.get("failed_trial") == 0


def test_a_trial_held_the_grace_period_without_a_worker_goes_back_to_the_queue(study: optuna.Study) -> None:
    clock = Clock()
    book = TrialBook(study, clock=clock)
    waiting, placed, busy = study.ask(), study.ask(), study.ask()
    book.ask(waiting, worker=0)
    book.ask(placed, worker=1)
    book.place(placed.number, job())
    book.ask(busy, worker=2)
    book.place(busy.number, job())
    book.start(busy.number)
    clock.now += GRACE_S - 1
    assert book.requeue_unplaced(GRACE_S) == []
    clock.now += 1
    assert book.requeue_unplaced(GRACE_S) == [waiting.number, placed.number]
    assert book.state(busy.number) == Life.RUNNING  # on its worker: not stale
    assert states(study) == ["FAIL", "FAIL", "RUNNING", "WAITING", "WAITING"]


def test_heartbeats_go_to_running_trials_only(study: optuna.Study) -> None:
    book = TrialBook(study)
    asked = study.ask()
    book.ask(asked, worker=0)
    number = running(book, study)
    book.beat()
    assert beaten(study) == {number}


def test_ctrl_c_requeues_every_trial_held(study: optuna.Study) -> None:
    book = TrialBook(study)
    asked = study.ask()
    book.ask(asked, worker=0)
    number = running(book, study)
    book.interrupt()
    assert len(book) == 0
    assert {(n, s) for n, s in book.history if s == Life.REQUEUED} == {(asked.number, Life.REQUEUED),
                                                                      (number, Life.REQUEUED)}
    assert states(study) == ["FAIL", "FAIL", "WAITING", "WAITING"]


def test_a_trial_another_driver_finished_is_told_false_and_let_go(study: optuna.Study) -> None:
    book = TrialBook(study)
    number = running(book, study)
    other = optuna.load_study(study_name="life", storage=storage_of(study).base)
    other.tell(number, state=TrialState.FAIL)  # a driver that took this one for dead
    assert not book.tell(number, JobResult(JobState.COMPLETE, 0.5, [{"epoch": 1, "val_accuracy": 0.5}]))
    assert len(book) == 0 and states(study) == ["FAIL"]
