"""Flat at scale: the driver's view of its study counts trials as a full read would, and the
sampler's per-trial work stops growing with the study (groups kept, TPE's window)."""

from __future__ import annotations

import heapq
import math

import optuna
import pytest
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial, TrialState

from autoopt.study import budget_used, build_sampler, counts, open_study, retry_trial
from autoopt.study.samplers import TPE_BEST, GroupTPESampler
from autoopt.study.view import StudyView
from autoopt.study.window import FINISHED


def tpe_window(trials: list[FrozenTrial], window: int, *, maximize: bool,
               best: int = TPE_BEST) -> list[FrozenTrial]:
    """The window ``TailWindow`` keeps, the plain way (one pass over every trial, per call): the
    reference it is checked against.

    >>> from optuna.trial import create_trial
    >>> ts = [create_trial(value=float(v)) for v in [9, 1, 2, 3, 4]]
    >>> for i, t in enumerate(ts):
    ...     t.number = i
    >>> [t.value for t in tpe_window(ts, 2, maximize=True, best=1)]
    [9.0, 3.0, 4.0]
    """
    finished = [t for t in trials if t.state in FINISHED]
    if len(finished) <= window:
        return trials
    old = finished[:-window]
    sign = 1.0 if maximize else -1.0
    scored = [(sign * v, i) for i, t in enumerate(old)
              if t.state == TrialState.COMPLETE and (v := t.value) is not None and math.isfinite(v)]
    keep = {old[i].number for _, i in heapq.nlargest(best, scored)}
    keep.update(t.number for t in finished[-window:])
    return [t for t in trials if t.state not in FINISHED or t.number in keep]


def _full(study: optuna.Study) -> dict[str, object]:
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    c = counts(trials)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    return {"used": budget_used(trials), "complete": c["complete"], "pruned": c["pruned"],
            "running": c["running"], "waiting": c["waiting"],
            "failed": sum(1 for t in trials if t.state == TrialState.FAIL and t.number not in retried),
            "best": max((t.value, t.number) for t in done)[1] if done else None}


def _viewed(view: StudyView) -> dict[str, object]:
    view.read()
    return {"used": view.used, "complete": view.count(TrialState.COMPLETE), "pruned": view.count(TrialState.PRUNED),
            "running": view.count(TrialState.RUNNING), "waiting": view.count(TrialState.WAITING),
            "failed": view.count(TrialState.FAIL), "best": view.best[0] if view.best else None}


def test_the_view_counts_what_a_full_read_counts_as_trials_change() -> None:
    study = open_study(InMemoryStorage(), "view", direction="maximize")
    view = StudyView(study)
    assert _viewed(view) == _full(study)
    running = []
    for i in range(30):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        if i % 5 == 0:
            running.append(trial)  # finished later, out of order
        elif i % 7 == 0:
            study.tell(trial, state=TrialState.PRUNED)
        elif i % 11 == 0:
            study.tell(trial, state=TrialState.FAIL)
            retry_trial(study, trial.number)  # a retry waits in the queue, the failure no longer counts
        else:
            study.tell(trial, float(i % 13))
        assert _viewed(view) == _full(study), i
    for trial in running:
        study.tell(trial, 100.0 + trial.number)
        assert _viewed(view) == _full(study)
    assert view.first_waiting() is None
    study.enqueue_trial({"x": 0.5})
    study.enqueue_trial({"x": 0.25})
    view.read()
    first = view.first_waiting()
    assert first is not None and first.system_attrs["fixed_params"] == {"x": 0.5} and _viewed(view) == _full(study)


@pytest.mark.parametrize("maximize", [True, False])
def test_tpe_window_keeps_the_best_and_the_newest(maximize: bool) -> None:
    from optuna.trial import create_trial

    values = [float((i * 37) % 101) for i in range(300)]
    trials = [create_trial(value=v) for v in values]
    for i, t in enumerate(trials):
        t.number = i
    running = create_trial(state=TrialState.RUNNING)
    running.number = 300
    window = tpe_window([*trials, running], 100, maximize=maximize, best=25)
    kept = {t.number for t in window}
    ranked = sorted(range(300), key=lambda i: values[i], reverse=maximize)
    assert set(ranked[:25]) <= kept  # TPE's "good" trials are the whole study's
    assert set(range(200, 301)) <= kept  # the newest, and the unfinished one
    assert len(kept) <= 25 + 101 and [t.number for t in window] == sorted(kept)
    assert tpe_window(trials[:50], 100, maximize=maximize) == trials[:50]


@pytest.mark.parametrize("maximize", [True, False])
def test_the_kept_window_is_tpe_window_as_the_study_grows(maximize: bool) -> None:
    """``TailWindow`` gives what ``tpe_window`` gives, call after call, as trials are asked,
    finish out of order (one runs long, before the window's start), fail and are pruned, for
    each set of states TPE asks for."""
    import random

    from optuna.trial import create_trial

    from autoopt.study.window import TailWindow

    rng = random.Random(0)
    kept = TailWindow(window=40, best=5, maximize=maximize)
    trials: list[FrozenTrial] = []
    for step in range(400):
        t = create_trial(state=TrialState.RUNNING)
        t.number = len(trials)
        trials.append(t)
        running = [x for x in trials if x.state == TrialState.RUNNING and x.number != 3]  # trial 3 runs long
        for x in rng.sample(running, k=min(len(running), rng.choice([0, 1, 2]))):
            state = rng.choice([TrialState.COMPLETE] * 4 + [TrialState.PRUNED, TrialState.FAIL])
            trials[x.number] = done = create_trial(state=state, value=rng.random() if state == TrialState.COMPLETE
                                                   else None, intermediate_values={1: 0.5})
            done.number = x.number
        if step == 300:
            trials[3] = done = create_trial(value=2.0)  # the long one ends, the best of all
            done.number = 3
        for states in (None, (TrialState.COMPLETE, TrialState.PRUNED),
                       (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
            filtered = [x for x in trials if states is None or x.state in states]
            expected = tpe_window(filtered, 40, maximize=maximize, best=5)
            assert [x.number for x in kept.of(list(trials), states)] == [x.number for x in expected], (step, states)


def test_the_trials_samplers_share_the_groups_of_the_study() -> None:
    study = open_study(InMemoryStorage(), "groups", direction="maximize")
    sampler = build_sampler("tpe", 0)
    study.sampler = sampler
    for i in range(14):
        trial = study.ask()
        family = ("a", "b")[i % 2]
        trial.suggest_categorical("optimizer", ["a", "b"])
        trial.suggest_float(f"{family}.lr", 1e-4, 1.0, log=True)
        study.tell(trial, float(i))
    trial = study.ask()
    trial.suggest_categorical("optimizer", ["a", "b"])
    inner = sampler.for_trial(study, study.trials[-1])
    assert isinstance(inner, GroupTPESampler)
    groups = inner.space["groups"]
    assert groups is sampler._groups["groups"]  # one set of groups, kept across the trials' samplers
    assert sorted(sorted(g) for g in groups.groups) == [["a.lr"], ["b.lr"], ["optimizer"]]


def test_the_kept_groups_are_those_of_every_finished_trial_as_trials_finish_out_of_order() -> None:
    """``SearchSpaceGroups.update`` reads only the trials past its last read and those
    unfinished then: the groups are those a full read of the study makes, at every step."""
    from autoopt.study.samplers import SearchSpaceGroups

    study = optuna.create_study(storage=InMemoryStorage())
    kept = SearchSpaceGroups()
    running: list[optuna.trial.Trial] = []
    for i in range(30):
        trial = study.ask()
        trial.suggest_categorical("optimizer", ["a", "b", "c"])
        trial.suggest_float(f"{'abc'[i % 3]}.lr", 1e-4, 1.0, log=True)
        if i % 4 == 0:
            trial.suggest_int(f"extra{i}", 0, 3)  # a parameter only a trial still running has, for a while
        running.append(trial)
        if i % 3 == 2:  # the oldest running trial finishes (complete, pruned or failed), the newer go on
            done = running.pop(0)
            study.tell(done, float(i) if i % 2 else None,
                       state=None if i % 2 else (TrialState.PRUNED if i % 5 else TrialState.FAIL))
        kept.update(study.get_trials(deepcopy=False))
        full = SearchSpaceGroups()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            full.add(t.distributions)
        assert sorted(sorted(g) for g in kept.groups) == sorted(sorted(g) for g in full.groups), i


def test_child_runs_reads_every_page(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    from autoopt import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(tracking.experiment_name("toy"))
    parent = client.create_run(exp).info.run_id
    for i in range(7):
        client.create_run(exp, tags={tracking.PARENT_TAG: parent, tracking.TRIAL_TAG: str(i)})
    client.create_run(exp, tags={tracking.TRIAL_TAG: "other"})  # not a child: the store filters it out
    monkeypatch.setattr(tracking, "PAGE", 3)
    runs = tracking.child_runs(uri, "toy", parent)
    assert sorted(int(r["tags"][tracking.TRIAL_TAG]) for r in runs) == list(range(7))


def test_a_large_study_ranks_importance_by_ped_anova_and_counts_retries_and_waiting_apart() -> None:
    from autoopt.commands import report
    from autoopt.study.record import write_skipped

    assert report.importance_methods(report.FANOVA_MAX_TRIALS) == ("Fanova", "PedAnova")
    assert report.importance_methods(report.FANOVA_MAX_TRIALS + 1) == ("PedAnova",)
    study = open_study(InMemoryStorage(), "counted", direction="maximize")
    for _ in range(report.FANOVA_MAX_TRIALS + 5):
        trial = study.ask()
        x = trial.suggest_float("x", 0, 1)
        study.tell(trial, x)
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    retry_trial(study, failed.number)  # failed, then queued again: waiting, not failed
    retried = study.ask()  # the retry, which fails again
    study.tell(retried, state=TrialState.FAIL)
    unaffordable = study.ask()  # asked, then skipped: the budget could not afford it
    write_skipped(unaffordable, "not started: its expected cost exceeds what is left of the time budget")
    study.tell(unaffordable, state=TrialState.FAIL)
    study.enqueue_trial({"x": 0.5})
    text = report.summary_markdown(study, None, {"x": 1.0}, {})
    n = report.FANOVA_MAX_TRIALS + 5
    assert (f"{n + 3} trials: {n} complete, 0 pruned, 1 failed (1 more failed and ran again), 1 skipped "
            "(the time budget could not afford them), 1 waiting") in text
    assert "PED-ANOVA" in text


def test_the_schema_the_aggregate_reads_assume_is_the_installed_optunas(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import inspect

    from autoopt.study import aggregates, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'schema.db'}", heartbeat=False)
    found = inspect(storage.engine)
    for table, columns in aggregates.SCHEMA.items():
        have = {c["name"] for c in found.get_columns(table)}
        assert set(columns) <= have, f"{table}: {sorted(set(columns) - have)} not in Optuna's schema"


def test_a_finished_study_is_summarised_once_then_read_from_its_one_row(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from autoopt.screen import prior
    from autoopt.study import SCREEN, load_study, open_storage

    url = f"sqlite:///{tmp_path / 'prior.db'}"
    storage = open_storage(url, heartbeat=False)
    families = ["adam", "sgd", "lion"]
    dists = {"optimizer": CategoricalDistribution(families), "lr": FloatDistribution(1e-4, 1.0, log=True)}
    study = open_study(storage, "earlier", direction="maximize")
    for i, (name, value) in enumerate([("adam", 0.9), ("sgd", 0.7), ("lion", 0.8), ("sgd", 0.95)]):
        params = {"optimizer": name, "lr": 10.0 ** -(1 + i % 3)}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=value,
            user_attrs={"config": {"optimizer": name, "optimizer_params": {"lr": params["lr"]}},
                        **({SCREEN: True} if i < 3 else {})}))
    target = prior.TaskInfo("new", "val_accuracy", "maximize")
    unfinished = prior.build(storage, target)
    assert prior.SUMMARY_ATTR not in load_study(storage, "earlier").user_attrs  # still running: read from trials
    study.set_user_attr("recommendation", {"optimizer": "sgd", "optimizer_params": {"lr": 0.1}})
    first = prior.build(storage, target)  # finished: summarised as it is read
    summary = load_study(storage, "earlier").user_attrs[prior.SUMMARY_ATTR]
    assert summary["ranks"] == first.evidence[0].ranks == unfinished.evidence[0].ranks
    assert first.evidence[0].ranks["adam"] < first.evidence[0].ranks["lion"]  # adam screened best
    study.add_trial(optuna.trial.create_trial(  # a trial after the summary: the row is what is read
        params={"optimizer": "lion", "lr": 0.01}, distributions=dists, value=0.99))
    again = prior.build(storage, target)
    with storage.engine.connect() as conn:
        assert prior.read_evidence(conn, fresh=True)[0].ranks != again.evidence[0].ranks
    assert again.evidence[0].summarised and again.evidence[0].ranks == first.evidence[0].ranks
    assert again.evidence[0].configs == first.evidence[0].configs
    assert [c["optimizer"] for c in again.evidence[0].configs][:2] == ["sgd", "sgd"]  # the pick, then the best trial


def test_the_trial_record_reads_what_the_driver_wrote() -> None:
    from optuna.trial import create_trial

    from autoopt.study import SCREEN, WARMSTART, TrialRecord
    from autoopt.study.record import TrialKind

    config = {"optimizer": "adamw", "optimizer_params": {"lr": 0.003}, "scheduler": "none", "scheduler_params": {},
              "grad_clip_norm": None}
    screened = TrialRecord.of(create_trial(value=0.9, intermediate_values={1: 0.5, 2: 0.9}, user_attrs={
        "config": config, "s_per_epoch": 0.25, "train_s": 0.5, SCREEN: True,
        "worker": {"pid": 7, "node": "n", "rss_mb": 900.0}}))
    assert (screened.kind, screened.family, screened.lr, screened.epochs) == ("screen", "adamw", 0.003, 2)
    assert (screened.s_per_epoch, screened.worker["rss_mb"], screened.value) == (0.25, 900.0, 0.9)
    warm = TrialRecord.of(create_trial(state=TrialState.PRUNED, user_attrs={WARMSTART: "earlier", "reason": "r"}))
    assert (warm.kind, warm.source, warm.family, warm.value, warm.reason) == ("warmstart", "earlier", None, None, "r")
    assert TrialRecord.of(create_trial(value=1.0)).kind == "search"
    assert SCREEN == "portfolio"  # the screen's mark, as studies have always carried it
    assert TrialRecord.of(create_trial(value=1.0, user_attrs={SCREEN: True})).kind == TrialKind.SCREEN


def test_the_trial_record_reads_what_it_writes() -> None:
    from autoopt.study import TrialRecord
    from autoopt.study.record import write_config, write_reason, write_run

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    write_config(trial, {"optimizer": "sgd", "optimizer_params": {"lr": 0.1}})
    write_reason(trial, "inherited")
    write_reason(trial, None)
    write_run(trial, train_s=1.23456, s_per_epoch=0.6172839, history=[{"epoch": 1.0}, {"epoch": 2.0}],
              node="n", pid=7, rss_mb=512.0)
    study.tell(trial, 0.5)
    rec = TrialRecord.of(study.trials[0])
    assert (rec.family, rec.lr, rec.reason, rec.train_s, rec.s_per_epoch) == ("sgd", 0.1, None, 1.2346, 0.617284)
    assert rec.history == [{"epoch": 1.0}, {"epoch": 2.0}] and rec.worker == {"node": "n", "pid": 7, "rss_mb": 512.0}


def test_a_workers_pruning_read_holds_its_rung_only_and_decides_as_a_full_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from autoopt.study import SCREEN, open_storage, study_id_of
    from autoopt.training.pruning import build_pruner, rung_trials

    storage = open_storage(f"sqlite:///{tmp_path / 'rung.db'}", heartbeat=False)
    study = open_study(storage, "rung", direction="maximize", pruner=build_pruner("median", epochs=6, warmup=0.0))

    def mark(i: int) -> str:
        return SCREEN

    for i in range(12):
        curve = {s: (0.1 + 0.07 * i) * s / 6 for s in range(1, 7 if i % 3 else 3)}  # every third stopped at 2
        study.add_trial(optuna.trial.create_trial(
            value=curve.get(6), intermediate_values=curve,
            state=TrialState.COMPLETE if 6 in curve else TrialState.PRUNED,
            user_attrs={mark(i): True, "s_per_epoch": 0.5, "history": [{"epoch": s} for s in curve]}))
    rung = rung_trials(storage, study_id_of(study), 4)
    full = [t for t in study.trials if 4 in t.intermediate_values]
    assert [t.number for t in rung] == [t.number for t in full]  # the stopped ones never reported at 4
    assert all(set(t.intermediate_values) == {4} and "history" not in t.user_attrs for t in rung)
    assert all(t.user_attrs == {mark(t.number): True, "s_per_epoch": 0.5} for t in rung)
    assert [t.value for t in rung] == [t.value for t in full]
    from autoopt.study import trials_snapshot

    probe = optuna.trial.create_trial(state=TrialState.RUNNING, intermediate_values={4: 0.3})
    probe.number = 99
    for trials in (rung, full):
        with trials_snapshot(study, trials):
            assert study.pruner.prune(study, probe)  # behind the median at 4 either way
