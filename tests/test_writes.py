"""A trial's writes of one step in one transaction (``autoopt.study.writes``,
``SnapshotStorage.deferred``): the same trial as Optuna's own writes make, all or nothing, one
commit, and a retry after a failed step writes everything again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from sqlalchemy import event, text

from autoopt.study import deferred_writes, open_storage, open_study, record_heartbeat, storage_of


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The storage: a SQLite file, or a fresh PostgreSQL database (the ``pg`` fixture's rules)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'autoopt.db'}"
        return
    request.getfixturevalue("pg")
    from services import database, pg_url

    with database() as name:
        yield pg_url(name)


@pytest.fixture()
def study(url: str) -> Iterator[optuna.Study]:
    storage = open_storage(url, heartbeat=False)
    yield open_study(storage, "writes", direction="maximize", metric="val_accuracy")
    storage.engine.dispose()


def _step(trial: optuna.trial.Trial, study: optuna.Study) -> None:
    """A driver's two steps on one trial: its sampling, then its tell."""
    trial.suggest_categorical("optimizer", ["sgd", "adam"])
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.suggest_int("warmup", 0, 3)
    trial.set_user_attr("config", {"optimizer": trial.params["optimizer"], "lr": trial.params["lr"]})
    trial.set_user_attr("history", [[1, 0.5], [2, 0.75]])
    trial.report(0.75, 2)
    study.tell(trial, 0.75)


def _stored(study: optuna.Study, number: int) -> tuple:
    t = optuna.load_study(study_name=study.study_name, storage=storage_of(study).base).trials[number]
    return t.state, t.values, t.params, t.distributions, t.user_attrs, t.intermediate_values


def test_a_deferred_step_stores_what_optunas_own_writes_store_in_one_commit(study: optuna.Study) -> None:
    plain = study.ask()
    _step(plain, study)
    engine = storage_of(study).base.engine
    seen: list[str] = []  # each statement's first word, and "COMMIT"

    def statement(_conn, _cursor, text, *_args) -> None:  # type: ignore[no-untyped-def]
        seen.append(text.split(None, 1)[0].upper())

    def commit(_conn) -> None:  # type: ignore[no-untyped-def]
        seen.append("COMMIT")

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)
    try:
        deferred = study.ask()
        seen.clear()
        with deferred_writes(study, deferred):
            record_heartbeat(study, deferred.number)
            _step(deferred, study)
            # reads of the trial inside the block see its writes (Optuna's tell reads the trial)
            assert storage_of(study).get_trial(deferred._trial_id).user_attrs["history"] == [[1, 0.5], [2, 0.75]]
            assert not {"INSERT", "UPDATE"} & set(seen), seen
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", commit)
    # The step's writes, one transaction (each was one before): no commit between the first and the last.
    writes = [i for i, word in enumerate(seen) if word in ("INSERT", "UPDATE")]
    assert len(writes) >= 4 and "COMMIT" not in seen[writes[0]:writes[-1]], seen
    same_sample = {**_stored(study, deferred.number)[4], "config": _stored(study, plain.number)[4]["config"]}
    assert _stored(study, deferred.number)[0:2] == (TrialState.COMPLETE, [0.75])
    assert _stored(study, deferred.number)[3] == _stored(study, plain.number)[3]
    assert same_sample == _stored(study, plain.number)[4]
    assert _stored(study, deferred.number)[5] == _stored(study, plain.number)[5] == {2: 0.75}
    with engine.connect() as conn:  # the heartbeat, at the database's clock, in the same transaction
        beats = conn.execute(text("select heartbeat from trial_heartbeats where trial_id = :t"),
                             {"t": deferred._trial_id}).all()
    assert len(beats) == 1 and beats[0][0] is not None


def test_a_step_on_a_trial_finished_meanwhile_writes_nothing(study: optuna.Study) -> None:
    trial = study.ask()
    other = optuna.load_study(study_name=study.study_name, storage=storage_of(study).base)
    with pytest.raises(UpdateFinishedTrialError), deferred_writes(study, trial):
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        trial.set_user_attr("config", {"lr": 0.1})
        other.tell(trial.number, state=TrialState.FAIL)  # another driver took this one for dead
    state, _, params, _, attrs, _ = _stored(study, trial.number)
    assert state == TrialState.FAIL and params == {} and attrs == {}


def test_a_step_retried_after_its_transaction_failed_writes_everything(study: optuna.Study) -> None:
    trial = study.ask()
    with pytest.raises(RuntimeError), deferred_writes(study, trial):
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        trial.report(0.5, 1)
        raise RuntimeError("the database went away")
    assert _stored(study, trial.number)[2] == {}
    # The retry (with_retry runs the step again): the handle forgot the failed step, so its
    # params and report are written, not taken from its cache.
    with deferred_writes(study, trial):
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        trial.report(0.5, 1)
    state, _, params, _, _, reports = _stored(study, trial.number)
    assert state == TrialState.RUNNING and params == {"lr": lr} and reports == {1: 0.5}


def test_asked_trials_are_numbered_as_optunas_count_numbers_them_beside_other_clients_and_studies(
        study: optuna.Study, url: str) -> None:
    base = storage_of(study).base
    other = open_study(open_storage(url, heartbeat=False), "other",
                       direction="maximize", metric="val_accuracy")
    plain = optuna.load_study(study_name=study.study_name, storage=base)  # Optuna's own client, its count
    asked = []
    for i in range(9):
        asked.append(study.ask().number)
        if i % 3 == 0:
            other.ask()  # another study's trials between this one's ids
        if i % 4 == 1:
            asked.append(plain.ask().number)  # a trial this process never read
        if i == 5:
            study.enqueue_trial({"x": 1})
            asked.append(study.ask().number)  # the enqueued one: asked, not created
    assert asked == list(range(len(asked)))
    numbers = [t.number for t in optuna.load_study(study_name=study.study_name, storage=base).trials]
    assert numbers == list(range(len(asked)))
    # a process that read nothing of the study counts its trials once
    fresh = open_study(open_storage(url, heartbeat=False), study.study_name,
                       direction="maximize", metric="val_accuracy")
    assert fresh.ask().number == len(asked)


def test_a_read_in_one_statement_gives_the_trials_optunas_read_gives(study: optuna.Study) -> None:
    import math

    from autoopt.study.reads import read_trials

    base = storage_of(study).base
    _step(study.ask(), study)
    odd = study.ask()
    odd.suggest_float("lr", 1e-4, 1.0, log=True)
    odd.suggest_categorical("optimizer", ["sgd", "adam"])
    odd.set_user_attr("nested", {"a": [1, 2.5, None], "b": "text"})
    study._storage.set_trial_system_attr(odd._trial_id, "fixed_params", {"optimizer": "adam"})
    for step, value in ((1, float("nan")), (2, float("inf")), (3, -float("inf")), (4, 0.25)):
        odd.report(value, step)
    study.tell(odd, state=TrialState.PRUNED)
    study.ask()  # running
    study.enqueue_trial({"optimizer": "sgd"})  # waiting
    study.tell(study.ask(), -float("inf"))
    study_id = study._study_id
    ids = [t._trial_id for t in study.trials]

    def same(ours: list, theirs: list) -> None:
        assert [t._trial_id for t in ours] == [t._trial_id for t in theirs] and ours
        for a, b in zip(ours, theirs, strict=True):
            a_nan = {k for k, v in a.intermediate_values.items() if math.isnan(v)}
            assert a_nan == {k for k, v in b.intermediate_values.items() if math.isnan(v)}
            a.intermediate_values = {k: v for k, v in a.intermediate_values.items() if k not in a_nan}
            b.intermediate_values = {k: v for k, v in b.intermediate_values.items() if k not in a_nan}
            assert a == b and a.datetime_start == b.datetime_start and a.datetime_complete == b.datetime_complete
            assert (a.state, a.values, a.params, a.distributions, a.user_attrs, a.system_attrs) == (
                b.state, b.values, b.params, b.distributions, b.user_attrs, b.system_attrs)

    same(read_trials(base, study_id, -1, []), base._get_trials(study_id, None, set(), -1))
    # the trials past an id, and some before it
    some = {ids[0], ids[1]}
    same(read_trials(base, study_id, ids[2], some), base._get_trials(study_id, None, some, ids[2]))
    assert read_trials(base, study_id, ids[-1], []) == []
    with pytest.raises(KeyError):
        read_trials(base, study_id + 1000, -1, [])


def test_a_reader_analyses_the_trial_tables_a_bulk_load_left_without_statistics(pg: str) -> None:
    """Trials written at once (a copied study, a bulk load) leave PostgreSQL without statistics
    of the tables until autovacuum comes, if it is on: the next driver to read the study
    analyses the tables that changed past autovacuum's own rule, and only those."""
    import time

    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial
    from services import database, pg_url

    from autoopt.study import load_study
    from autoopt.study.pgstats import Refresher, refresh

    stats = text("SELECT relname, n_mod_since_analyze, last_analyze IS NOT NULL FROM pg_stat_user_tables "
                 "WHERE relname IN ('trials', 'trial_params', 'studies')")
    with database() as name:
        url = pg_url(name)
        storage = open_storage(url, heartbeat=False)
        study = open_study(storage, "bulk", direction="maximize")
        dist = FloatDistribution(0.0, 1.0)
        for i in range(150):
            study.add_trial(create_trial(params={"x": i / 150}, distributions={"x": dist}, value=i / 150))
        deadline = time.monotonic() + 20  # a backend reports its counts when idle, within a second or so
        while True:
            with storage.engine.connect() as conn:
                seen = {r[0]: r[1:] for r in conn.execute(stats)}
            if min(seen.get(t, (0,))[0] for t in ("trials", "trial_params")) >= 150 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert all(seen[t][0] >= 150 and seen[t][1] is False for t in ("trials", "trial_params")), seen
        assert len(load_study(storage, "bulk").trials) == 150  # a new reader's first read
        with storage.engine.connect() as conn:
            seen = {r[0]: r[1:] for r in conn.execute(stats)}
        assert seen["trials"] == (0, True) and seen["trial_params"] == (0, True), seen
        assert seen["studies"][1] is False  # not a trial table: autovacuum's business
        assert refresh(storage.engine) == []  # nothing stale is analysed again
        storage.engine.dispose()
    r = Refresher()
    assert [r.due(n) for n in (0, 1, 199, 200, 399, 400, 3000, 3299, 3300)] == \
        [True, False, False, True, False, True, True, False, True]
