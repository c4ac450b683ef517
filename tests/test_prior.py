"""The prior: the storage's earlier studies order a new study's screen, warm-start its search and
give a zero-shot answer; ``--prior none`` turns it off. The studies here are made by hand on a
real SQLite Optuna storage (fast); one real study checks the whole path."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from autoopt.errors import UsageError
from autoopt.recommendation import recommend
from autoopt.screen import prior as prior_mod
from autoopt.screen.portfolio import ENQUEUED, PortfolioFirst, config_params, portfolio_params, screening_order
from autoopt.screen.prior import (
    PRIOR_ATTR,
    WARMSTART,
    Prior,
    PriorRecord,
    TaskInfo,
    WarmStart,
    build,
    check_sources,
    for_study,
)
from autoopt.space import SearchSpace, default_params, resolve_optimizers
from autoopt.spec import load_spec
from autoopt.study import open_storage, open_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

ALL = tuple(resolve_optimizers("all"))
ACC = {"metric": "val_accuracy", "direction": "maximize"}
RMSE = {"metric": "val_rmse", "direction": "minimize"}


def config(name: str, **params: Any) -> dict[str, Any]:
    return {"optimizer": name, "optimizer_params": {**default_params(name), **params}, "scheduler": "none",
            "scheduler_params": {}, "grad_clip_norm": None}


def make_study(url: str, name: str, *, screen: dict[str, float], pruned: dict[str, tuple[int, float]] | None = None,
               tuned: list[tuple[dict[str, Any], float]] = (), info: dict[str, Any] | None = None,
               pick: dict[str, Any] | None = None) -> None:
    """A finished study as ``tune`` leaves it: portfolio trials (complete, or pruned at a rung),
    tuned trials, the ``metric``/``task_info`` attrs and, where given, the confirmed pick."""
    info = {**ACC, "task": name, **(info or {})}
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), study_name=name,
                                direction=info["direction"])
    study.set_user_attr("metric", info["metric"])
    study.set_user_attr("task_info", info)
    dists = {"optimizer": CategoricalDistribution(ALL)}
    for fam, value in screen.items():
        study.add_trial(create_trial(params={"optimizer": fam}, distributions=dists, value=value,
                                     user_attrs={"portfolio": True, "config": config(fam)}))
    for fam, (step, value) in (pruned or {}).items():
        study.add_trial(create_trial(state=TrialState.PRUNED, params={"optimizer": fam}, distributions=dists,
                                     intermediate_values={step: value},
                                     user_attrs={"portfolio": True, "config": config(fam)}))
    for cfg, value in tuned:
        name_ = cfg["optimizer"]
        study.add_trial(create_trial(
            params={"optimizer": name_, f"{name_}.lr": cfg["optimizer_params"]["lr"]},
            distributions={**dists, f"{name_}.lr": FloatDistribution(1e-6, 10.0, log=True)},
            value=value, user_attrs={"config": cfg}))
    if pick is not None:
        study.set_user_attr("recommendation", {"task": info["task"], **pick, **ACC, "value": 0.9})


@pytest.fixture()
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'autoopt.db'}"


def prior_of(url: str, target: TaskInfo, **kwargs: Any) -> Prior:
    storage = open_storage(url, heartbeat=False)
    try:
        return build(storage, target, **kwargs)
    finally:
        storage.engine.dispose()


def test_families_are_ranked_across_studies_direction_aware(url: str) -> None:
    # Two accuracy studies and an RMSE one (lower is better) agree: lion, nadam, adam.
    make_study(url, "a", screen={"lion": 0.95, "nadam": 0.9, "adam": 0.5})
    make_study(url, "b", screen={"lion": 0.8, "nadam": 0.7}, pruned={"adam": (1, 0.3), "sgd": (2, 0.2)})
    make_study(url, "c", screen={"lion": 0.1, "nadam": 0.2, "adam": 0.9}, info={**RMSE, "task": "c"})
    prior = prior_of(url, TaskInfo("new", **ACC))
    assert set(prior.studies) == {"a", "b", "c"}
    assert prior.order(["adam", "sgd", "nadam", "lion"])[:2] == ["lion", "nadam"]
    assert prior.order(["adam", "nadam", "lion"]) == ["lion", "nadam", "adam"]
    # A pruned family ranks by the rung it reached: sgd (epoch 2) before adam (epoch 1) in b.
    b = next(e for e in prior.evidence if e.name == "b")
    assert b.ranks["sgd"] < b.ranks["adam"]
    # Families without evidence keep their built-in order among themselves.
    rest = [n for n in prior.order(ALL) if n not in ("lion", "nadam", "adam", "sgd")]
    assert rest == [n for n in screening_order(ALL) if n in rest]


def test_studies_of_the_same_metric_and_size_weigh_more(url: str) -> None:
    make_study(url, "acc", screen={"sgd": 0.99, "adamw": 0.5, "adam": 0.4},
               info={"n_params": 10_000, "n_train": 1_000})
    make_study(url, "acc2", screen={"sgd": 0.9, "adamw": 0.8, "adam": 0.7})
    make_study(url, "rmse", screen={"adamw": 0.1, "sgd": 0.9, "adam": 0.5}, info={**RMSE, "task": "rmse"})
    assert prior_of(url, TaskInfo("x", **ACC)).order(["adamw", "sgd", "adam"])[0] == "sgd"
    assert prior_of(url, TaskInfo("x", **RMSE)).order(["adamw", "sgd", "adam"])[0] == "adamw"
    close = prior_of(url, TaskInfo("x", **ACC, n_params=10_000, n_train=1_000))
    far = prior_of(url, TaskInfo("x", **ACC, n_params=10_000_000, n_train=1_000))
    assert close.evidence[0].name == "acc"  # the same size: before acc2, which recorded none
    weight = {e.name: e.weight for e in far.evidence}
    assert close.evidence[0].weight > weight["acc"]


def test_the_new_study_itself_is_never_a_source_and_named_studies_stand_alone(url: str) -> None:
    make_study(url, "a", screen={"lion": 0.9, "adam": 0.5})
    make_study(url, "b", screen={"adam": 0.9, "lion": 0.5})
    assert prior_of(url, TaskInfo(), exclude="b").studies == ["a"]
    named = prior_of(url, TaskInfo(), names=["b"])
    assert named.studies == ["b"] and named.order(["lion", "adam"])[0] == "adam"
    check_sources(url, ["a", "b"])
    with pytest.raises(UsageError, match="no study 'zzz'"):
        check_sources(url, ["a", "zzz"])


def test_the_read_is_bounded(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(6):
        make_study(url, f"s{i}", screen={"lion": 0.9, "adam": 0.5 + i / 100})

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the prior loaded a whole trial list")

    monkeypatch.setattr(optuna.storages.RDBStorage, "get_all_trials", refuse)
    monkeypatch.setattr(optuna.Study, "get_trials", refuse)
    prior = prior_of(url, TaskInfo(), limit=3)
    assert prior.studies == ["s5", "s4", "s3"]  # the most recent ones only


def test_a_storage_of_many_studies_is_read_in_a_bounded_number_of_queries(url: str) -> None:
    """Hundreds of studies with their trials: copied in SQL, as a team's storage grows."""
    make_study(url, "seed", screen={f: 0.5 + i / 100 for i, f in enumerate(ALL)},
               tuned=[(config("adamw", lr=10 ** -(1 + i / 20)), 0.6 + i / 1000) for i in range(60)])
    storage = open_storage(url, heartbeat=False)
    from sqlalchemy import text

    with storage.engine.begin() as conn:
        for k in range(1, 300):  # 299 copies of the study: 300 studies, 22,000 trials
            conn.execute(text("INSERT INTO studies (study_name) VALUES (:n)"), {"n": f"copy{k}"})
            sid = conn.execute(text("SELECT study_id FROM studies WHERE study_name = :n"),
                               {"n": f"copy{k}"}).scalar()
            for table, cols in (("study_directions", "direction, objective"),
                                ("study_user_attributes", "key, value_json")):
                conn.execute(text(f"INSERT INTO {table} (study_id, {cols}) SELECT :sid, {cols} FROM {table} "
                                  "WHERE study_id = 1"), {"sid": sid})
            base = conn.execute(text("SELECT MAX(trial_id) FROM trials")).scalar()
            conn.execute(text("INSERT INTO trials (trial_id, number, study_id, state, datetime_start, "
                              "datetime_complete) SELECT trial_id + :base, number, :sid, state, datetime_start, "
                              "datetime_complete FROM trials WHERE study_id = 1"), {"base": base, "sid": sid})
            for table, cols in (("trial_values", "objective, value, value_type"),
                                ("trial_params", "param_name, param_value, distribution_json"),
                                ("trial_user_attributes", "key, value_json"),
                                ("trial_intermediate_values", "step, intermediate_value, intermediate_value_type")):
                conn.execute(text(f"INSERT INTO {table} (trial_id, {cols}) SELECT x.trial_id + :base, {cols} "
                                  f"FROM {table} x JOIN trials t ON t.trial_id = x.trial_id WHERE t.study_id = 1"),
                             {"base": base})
        assert conn.execute(text("SELECT COUNT(*) FROM trials")).scalar() >= 20_000
    storage.engine.dispose()
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    try:
        prior = prior_of(url, TaskInfo("new", **ACC))
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    assert len(prior.studies) == prior_mod.MAX_STUDIES
    assert prior.order(ALL)[0] == max(ALL, key=lambda f: ALL.index(f))  # the best screened in every copy
    # Bounded reads: a few statements per batch of studies, however many trials they hold (the
    # time it takes belongs to a benchmark, not a test).
    reads = [q for q in statements if q.lstrip().upper().startswith("SELECT")]
    assert 0 < len(reads) <= 40, f"{len(reads)} SELECTs for {prior_mod.MAX_STUDIES} studies"


def test_warm_starts_are_fitted_into_the_space_and_skip_published_defaults(url: str) -> None:
    make_study(url, "a", screen={"adamw": 0.9, "sgd": 0.5},
               tuned=[(config("adamw", lr=0.5), 0.97), (config("sgd", lr=0.05), 0.95)],
               pick=config("sgd"))  # the confirmed pick was a published default: the screen trains it
    space = SearchSpace(("adamw", "sgd", "adam"), ("none", "cosine"))
    warm = prior_of(url, TaskInfo()).warm_starts(space)
    assert [w.config["optimizer"] for w in warm] == ["adamw", "sgd"]
    params = config_params(warm[0].config, space)
    assert params["optimizer"] == "adamw" and params["adamw.lr"] == space.family("adamw").space["lr"].high  # clamped
    assert params != portfolio_params("adamw", space)
    assert config_params(config("lion"), space) is None  # not in the space


def test_the_screen_follows_the_prior_and_a_resumed_study_keeps_its_order(url: str) -> None:
    space = SearchSpace(("adamw", "sgd", "lion", "adam"))
    kept = {"studies": ["a"], "order": ["lion", "sgd", "adamw", "adam"],
            "warmstart": [{"study": "a", "config": config("sgd", lr=0.2)},
                          {"study": "a", "config": config("lion", lr=1e-4)}]}
    record = PriorRecord(("a",), ("lion", "sgd", "adamw", "adam"),
                         (WarmStart("a", config("sgd", lr=0.2)), WarmStart("a", config("lion", lr=1e-4))))
    study = open_study(open_storage(url, heartbeat=False), "new", direction="maximize")
    PortfolioFirst(space, prior=record).start(study, url, trials=5)
    assert study.user_attrs[PRIOR_ATTR] == kept  # the study attr's JSON, as before the record was typed
    assert PriorRecord.of_attrs(study.user_attrs) == record
    queued = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert [t.system_attrs["fixed_params"]["optimizer"] for t in queued] == ["lion", "sgd", "adamw", "adam", "sgd"]
    assert queued[0].user_attrs["portfolio"] and queued[4].user_attrs[WARMSTART] == "a"
    # Resumed with a larger budget and another prior: no new order, nothing enqueued twice.
    other = dataclasses.replace(record, order=("adam", "adamw", "sgd", "lion"))
    PortfolioFirst(space, prior=other).start(study, url, trials=10)
    assert study.user_attrs[PRIOR_ATTR] == kept and study.user_attrs[ENQUEUED] == kept["order"]
    warm = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(WARMSTART)]
    assert [t.system_attrs["fixed_params"]["optimizer"] for t in warm] == ["sgd", "lion"]
    # --quick screens the first three families only.
    assert PortfolioFirst(space, quick=3).plan(record) == ["lion", "sgd", "adamw"]


def test_prior_none_and_an_empty_storage(url: str, caplog: pytest.LogCaptureFixture) -> None:
    storage = open_storage(url, heartbeat=False)
    study = open_study(storage, "new", direction="maximize")
    spec = load_spec("digits", optimizers="adamw,sgd", prior="none")
    assert for_study(study, storage, spec, TaskInfo("digits", **ACC)) is None
    make_study(url, "old", screen={"sgd": 0.9, "adamw": 0.5})
    assert for_study(study, storage, spec, TaskInfo("digits", **ACC)) is None  # none: nothing read, nothing kept
    PortfolioFirst(spec.search_space(), prior=None).start(study, url, trials=4)
    assert PRIOR_ATTR not in study.user_attrs
    assert [t.system_attrs["fixed_params"]["optimizer"] for t in study.trials] == ["adamw", "sgd"]
    # auto with nothing usable: the built-in order, said in one line at INFO (an empty storage
    # is a normal first run, no warning).
    empty = f"{url[:-3]}-empty.db"
    storage2 = open_storage(empty, heartbeat=False)
    study2 = open_study(storage2, "new", direction="maximize")
    with caplog.at_level(logging.INFO, logger="autoopt.screen.prior"):
        assert for_study(study2, storage2, load_spec("digits", prior="auto"), TaskInfo("digits", **ACC)) is None
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "screening in the built-in order: the storage holds no finished earlier study to learn from")]
    # auto with an earlier study: its record, and one line naming the study.
    caplog.clear()
    study3 = open_study(storage, "newer", direction="maximize")
    with caplog.at_level(logging.WARNING, logger="autoopt.screen.prior"):
        record = for_study(study3, storage, load_spec("digits", optimizers="adamw,sgd"), TaskInfo("digits", **ACC))
    assert record.order == ("sgd", "adamw") and "new" not in record.studies and "old" in record.studies
    assert len(caplog.records) == 1 and "old" in caplog.records[0].getMessage()


def test_zero_shot_answer_from_the_database(url: str, workdir: Path) -> None:
    with pytest.raises(UsageError, match="no recommendation for 'digits_lstm'"):
        recommend("digits_lstm", storage=url, fallback="database")  # no storage at all: as today
    make_study(url, "empty", screen={})
    with pytest.raises(UsageError, match="no recommendation for 'digits_lstm'"):
        recommend("digits_lstm", storage=url, fallback="database")  # nothing usable: as today
    make_study(url, "reg", screen={"sgd": 0.1, "adamw": 0.9}, info={**RMSE, "task": "reg"},
               tuned=[(config("sgd", lr=0.3), 0.05)])
    make_study(url, "digits", screen={"lion": 0.9, "adamw": 0.8}, tuned=[(config("lion", lr=3e-4), 0.97)],
               pick={**config("lion", lr=3e-4), "scheduler": "cosine", "scheduler_params": {"eta_min_ratio": 0.01}})
    rec = recommend("digits_lstm", storage=url, fallback="database")
    data = rec.to_dict()
    assert data["source"] == "database" and data["prior"]["studies"][0] == "digits"
    assert data["prior"]["from"] == "digits" and set(data["prior"]["studies"]) == {"digits", "reg"}
    assert (rec.optimizer, rec.scheduler, data["metric"], data["direction"]) == ("lion", "cosine", *ACC.values())
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = rec.build_optimizer(model)
    sched = rec.build_scheduler(opt, epochs=2, steps_per_epoch=3)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # A task's own study still wins.
    make_study(url, "digits_lstm", screen={"adam": 0.9}, pick=config("adam"))
    assert recommend("digits_lstm", storage=url, fallback="database").optimizer == "adam"
    with pytest.raises(UsageError, match="fallback must be"):
        recommend("digits", storage=url, fallback="db")


def test_the_option_is_checked(url: str) -> None:
    assert load_spec("digits").prior == "auto"
    assert load_spec("digits", prior=["a", "b:c"]).prior == "a,b:c"
    for bad in ("", "auto,none", "none,x"):
        with pytest.raises(UsageError, match="--prior"):
            load_spec("digits", prior=bad)
    assert prior_mod.parse("a, b") == ["a", "b"] and prior_mod.parse("none") == "none"


@pytest.mark.slow
def test_a_new_study_screens_by_the_prior_and_records_it(workdir: Path, local_ray: None) -> None:
    from autoopt import tune

    url = "sqlite:///autoopt.db"
    make_study(url, "earlier", screen={"sgd": 0.9, "rmsprop": 0.85, "adamw": 0.5},
               info={"task": "digits", "n_train": 1000})
    tune("digits", study_name="new", trials=4, epochs=1, confirm=False, optimizers="adamw,sgd,rmsprop,adam")
    study = optuna.load_study(study_name="new", storage=url)
    prior = study.user_attrs[PRIOR_ATTR]
    assert prior["studies"] == ["earlier"] and prior["order"][0] == "sgd" and prior["order"][-1] == "adamw"
    first = min((t for t in study.trials if t.user_attrs.get("portfolio")), key=lambda t: t.number)
    assert first.params["optimizer"] == prior["order"][0]
    assert study.user_attrs["task_info"]["n_params"] > 0
    # A trial budget smaller than the portfolio plus warm starts: no trial beyond --trials.
    assert len(study.trials) == 4


def test_the_cli_names_a_missing_prior_study(workdir: Path, local_ray: None) -> None:
    from typer.testing import CliRunner

    from autoopt.cli import app

    res = CliRunner().invoke(app, ["tune", "--task", "digits", "--prior", "nope", "--trials", "1"])
    assert res.exit_code == 2 and "no study 'nope'" in res.output
    assert not (workdir / "mlflow.db").exists()


def test_the_prior_reads_postgresql_too(optuna_db: str) -> None:
    """The same queries on PostgreSQL (its trial states are an enum type there)."""
    from services import pg_url

    url = pg_url(optuna_db)
    make_study(url, "a", screen={"lion": 0.95, "adam": 0.5}, pruned={"sgd": (2, 0.3)},
               tuned=[(config("lion", lr=3e-4), 0.97)])
    make_study(url, "b", screen={"lion": 0.1, "adam": 0.2}, info={**RMSE, "task": "b"})
    prior = prior_of(url, TaskInfo("new", **ACC))
    assert prior.studies == ["a", "b"] and prior.order(["adam", "sgd", "lion"])[0] == "lion"
    check_sources(url, ["a"])
    rec = recommend("digits_lstm", storage=url, fallback="database")
    assert rec.to_dict()["source"] == "database" and rec.optimizer == "lion"
