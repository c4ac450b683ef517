"""Portfolio first: every family at its published defaults, enqueued once per study (also with
two drivers starting together, or a resumed study), the most likely winners first when the
budget is short, then TPE over every family, seeing the screen."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch

from autoopt.screen.portfolio import ENQUEUED, PortfolioFirst, portfolio_params, screening_order
from autoopt.space import (
    PORTFOLIO_PRIOR,
    SearchSpace,
    build_optimizer,
    default_params,
    resolve_optimizers,
    suggest_config,
)
from autoopt.study import open_storage, open_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

ALL = tuple(resolve_optimizers("all"))


def new_study(url: str, name: str = "s") -> optuna.Study:
    return open_study(open_storage(url, heartbeat=False), name, direction="maximize")


def fam(trial: optuna.trial.FrozenTrial) -> str:
    """The family of a trial, enqueued (its fixed params) or run."""
    return trial.params.get("optimizer") or trial.system_attrs["fixed_params"]["optimizer"]


def waiting(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))


def test_every_family_trains_at_its_published_defaults_first(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = new_study(url)
    space = SearchSpace(ALL)
    assert PortfolioFirst(space).start(study, url, trials=100) is None
    queued = waiting(study)
    assert [fam(t) for t in queued] == screening_order(ALL)
    assert all(t.user_attrs["portfolio"] is True for t in queued)
    for _ in ALL:  # what the search's suggest calls give for them: the defaults, no scheduler, no clipping
        trial = study.ask()
        config = suggest_config(trial, space)
        name = config.optimizer
        # The sampler sees the defaults wherever the space can hold them ...
        enqueued = portfolio_params(name, space)
        assert {f"{name}.{k}": v for k, v in config.optimizer_params.items() if f"{name}.{k}" in enqueued} == \
            {k: v for k, v in enqueued.items() if k.startswith(f"{name}.")}
        if name in ("adamw", "adam", "nadam", "sgd", "soap"):  # ... which for these is all of them
            built = build_optimizer(torch.nn.Linear(2, 2), name, config.optimizer_params).defaults
            assert built == build_optimizer(torch.nn.Linear(2, 2), name, default_params(name)).defaults, name
        assert (config.scheduler, config.grad_clip_norm) == ("none", None)
        study.tell(trial, 0.5)


def test_the_portfolio_is_enqueued_once_also_when_the_study_is_resumed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    space = SearchSpace(ALL)
    PortfolioFirst(space).start(new_study(url), url, trials=100)
    PortfolioFirst(space).start(new_study(url), url, trials=100)  # a second run of the same command
    study = new_study(url)
    assert Counter(fam(t) for t in study.trials) == Counter(ALL)
    assert study.user_attrs[ENQUEUED] == screening_order(ALL)


def test_two_drivers_starting_together_enqueue_the_portfolio_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    new_study(url)  # created; each driver then opens it with its own storage (its own engine)
    space = SearchSpace(ALL)
    go = threading.Barrier(4)
    errors: list[BaseException] = []

    def driver() -> None:
        study = new_study(url)
        go.wait()
        try:
            PortfolioFirst(space).start(study, url, trials=100)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=driver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Counter(fam(t) for t in new_study(url).trials) == Counter(ALL)


def test_a_short_budget_screens_the_likely_winners_first_and_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    space = SearchSpace(ALL)
    note = PortfolioFirst(space).start(new_study(url), url, trials=3)
    first = [n for n in PORTFOLIO_PRIOR if n in ALL][:3]
    assert note is not None and "--trials 3" in note and ", ".join(first) in note
    assert [fam(t) for t in waiting(new_study(url))] == first
    # Resumed with a larger budget: the rest of the portfolio, never the first three again.
    PortfolioFirst(space).start(new_study(url), url, trials=100)
    assert Counter(fam(t) for t in new_study(url).trials) == Counter(ALL)


@pytest.mark.slow
def test_a_study_screens_the_portfolio_first_then_searches(workdir: Path, local_ray: None) -> None:
    import mlflow

    from autoopt.commands.tuning import run
    from autoopt.spec import load_spec

    spec = load_spec("digits", trials=5, epochs=2, concurrency=2, confirm=False, optimizers="sgd,adamw,nadam",
                     storage=f"sqlite:///{workdir / 'autoopt.db'}", mlflow_uri=f"sqlite:///{workdir / 'mlflow.db'}",
                     out=str(workdir / "recommendations"))
    run(spec)
    storage = open_storage(spec.placement.storage, heartbeat=False)
    trials = optuna.load_study(study_name="digits", storage=storage).trials
    screen = [t for t in trials if t.user_attrs.get("portfolio")]
    assert [t.number for t in screen] == [0, 1, 2]  # before anything the sampler proposed
    assert [t.user_attrs["config"]["optimizer"] for t in screen] == ["adamw", "nadam", "sgd"]
    for t in screen:
        config = t.user_attrs["config"]
        assert config["optimizer_params"] == default_params(config["optimizer"])
        assert (config["scheduler"], config["grad_clip_norm"]) == ("none", None)
    assert all(t.user_attrs["s_per_epoch"] > 0 for t in trials if t.state.is_finished())
    client = mlflow.MlflowClient(tracking_uri=spec.placement.mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("autoopt/digits").experiment_id], max_results=100)
    kinds = {int(r.data.tags["autoopt.trial_number"]): r.data.tags["autoopt.kind"] for r in runs
             if "autoopt.trial_number" in r.data.tags}
    assert kinds == {0: "portfolio", 1: "portfolio", 2: "portfolio", 3: "search", 4: "search"}


def test_a_family_the_screen_left_on_cost_alone_is_named_with_what_would_train_it() -> None:
    from optuna.distributions import CategoricalDistribution
    from optuna.storages import InMemoryStorage
    from optuna.trial import TrialState, create_trial

    from autoopt.screen.portfolio import left_on_cost

    study = optuna.create_study(storage=InMemoryStorage(), direction="maximize")
    dist = {"optimizer": CategoricalDistribution(["a", "b", "c", "d", "e", "f", "soap", "sgd", "adam"])}

    def screened(name: str, at1: float, spe: float, state: TrialState, value: float | None = None) -> None:
        study.add_trial(create_trial(state=state, value=value, params={"optimizer": name}, distributions=dist,
                                     intermediate_values={1: at1}, user_attrs={
                                         "portfolio": True, "s_per_epoch": spe, "config": {"optimizer": name}}))

    for name, v in zip("abcdef", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], strict=True):
        screened(name, v, 1.0, TrialState.COMPLETE if v >= 0.9 else TrialState.PRUNED, v)
    screened("soap", 0.85, 12.0, TrialState.PRUNED)  # second of nine: pruned for its cost alone
    screened("sgd", 0.3, 12.0, TrialState.PRUNED)  # last: pruned at any cost
    screened("adam", 0.2, 1.0, TrialState.PRUNED)
    left = left_on_cost(study, epochs=5, pick_s_per_epoch=1.5, seeds=3, workers=2, spent_s=100.0)
    assert [(d.family, d.rank, d.of, d.epoch) for d in left] == [("soap", 2, 9, 1)]
    # 4 more epochs and 3 seeds x 5 epochs over 2 workers at 12 s/epoch on top of 100 s: 238 s
    assert left[0].relative_to_pick == 8.0 and left[0].time_budget_s == 240


def test_without_trials_the_search_gets_its_own_and_the_screen_comes_on_top(tmp_path: Path) -> None:
    """At the defaults the screen does not eat the search: the study file's 20 trials are the
    search's, the 14 families' published defaults on top. An explicit --trials is the total."""
    from autoopt.commands.tuning import _opened
    from autoopt.spec import load_spec
    from autoopt.tasks import load_task

    storage = f"sqlite:///{tmp_path / 'a.db'}"
    task = load_task("digits")
    spec = load_spec("digits", storage=storage, prior="none")
    assert spec.trials == 20 and spec.screen_on_top == 0
    _, opened, policy = _opened(spec, task, storage)
    families = len(policy.plan(None))
    assert families >= 10 and opened.screen_on_top == families and opened.trials == 20 + families
    given = load_spec("digits", storage=storage, prior="none", trials=12, study_name="given")
    assert given.screen_on_top is None and _opened(given, task, storage)[1].trials == 12
    budgeted = load_spec("digits", storage=storage, time_budget="2m")
    assert budgeted.screen_on_top is None and budgeted.trials >= 1000  # the budget bounds the search
