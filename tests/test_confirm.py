"""Confirmation over seeds against the tutorial's baselines, and recommend() without a study."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import optuna
import pytest
from conftest import refused, run_main, shared_ray

from autoopt import Recommendation, recommend
from autoopt.decide.confirm import (
    BASELINES,
    MODERN,
    Made,
    Pick,
    baselines,
    choose,
    confirmation_seeds,
    improvement,
    made_runs,
    race_seeds,
)
from autoopt.decide.race import Contender
from autoopt.errors import UsageError
from autoopt.evidence import Entry, RaceStatus, Reused, Stats
from autoopt.space import PORTFOLIO_PRIOR, TrialConfig, default_params
from autoopt.spec import StudySpec
from autoopt.study.record import TrialKind, trial_seed

# --- the rules, on hand-made tables ---------------------------------------------------------------


def _entry(val: list[float | None], test: list[float | None] | None = None) -> Entry:
    return Entry(name="e", optimizer="adam", val=Stats.of(val), test=Stats.of(test if test is not None else val))


def test_stats_count_only_completed_seeds() -> None:
    s = Stats.of([0.9, None, 0.7])
    assert s.mean == pytest.approx(0.8) and s.std == pytest.approx(0.1)
    assert s.complete == 2 and s.values == (0.9, None, 0.7) and not s.all_complete
    assert Stats.of([None, None]) == Stats(mean=None, std=None, values=(None, None), complete=0)


def test_best_means_are_compared_and_a_baseline_that_is_best_is_the_recommendation() -> None:
    table = {"trial_1": _entry([0.90, 0.92]), "trial_2": _entry([0.80, 0.99]),
             "adam_tutorial": _entry([0.93, 0.93]), "sgd_tutorial": _entry([0.5, 0.5])}
    pick = choose(table, ["trial_1", "trial_2"], ["adam_tutorial", "sgd_tutorial"], "maximize")
    assert (pick.tuned, pick.baseline) == ("trial_1", "adam_tutorial")  # 0.91 beats 0.895 on the mean
    assert pick.winner == "adam_tutorial" and pick.paired.verdict == "tie"  # two seeds: a wide interval


def test_a_baseline_the_race_dropped_is_neither_compared_nor_picked() -> None:
    """A default the race dropped after 3 seeds (behind its leader) can have a higher mean on
    those 3 than the best baseline still racing has on 5 (digits_lstm at its defaults): the
    verdict is decided against the one still racing, as the race decided it, and the dropped one
    is never the pick."""
    tuned = _entry([0.976, 0.979, 0.976, 0.969, 0.969])
    racing = _entry([0.969, 0.976, 0.965, 0.948, 0.931])
    dropped = _entry([0.955, 0.969, 0.965]).model_copy(update={"race": RaceStatus(status="dropped", reason="behind")})
    table = {"trial_31": tuned, "prodigy_default": racing, "muon_default": dropped}
    pick = choose(table, ["trial_31"], ["prodigy_default", "muon_default"], "maximize")
    assert pick.baseline == "prodigy_default" and pick.winner in ("trial_31", "prodigy_default")


def test_baselines_are_ranked_on_the_seeds_they_share() -> None:
    """The race gave the pair it decided between more seeds than the rest (digits_lstm at its
    defaults: prodigy_default 5, muon_default 3): the best baseline is the best on the 3 seeds
    both ran (prodigy_default, 0.973 against 0.965), not on means over 5 and over 3 seeds."""
    prodigy = _entry([0.951, 0.976, 0.979, 0.965, 0.948]).model_copy(update={"seeds": (22, 23, 29, 10000, 10001)})
    muon = _entry([0.958, 0.972, 0.965]).model_copy(update={"seeds": (23, 29, 10000)})
    tuned = _entry([0.962, 0.976, 0.972, 0.972, 0.962]).model_copy(update={"seeds": (22, 23, 29, 10000, 10001)})
    assert muon.val.mean is not None and prodigy.val.mean is not None and muon.val.mean > prodigy.val.mean
    table = {"trial_29": tuned, "prodigy_default": prodigy, "muon_default": muon}
    assert choose(table, ["trial_29"], ["prodigy_default", "muon_default"], "maximize").baseline == "prodigy_default"
    # one left out for its cost after a single seed narrows no one's ranking to that seed
    short = _entry([0.90]).model_copy(update={"seeds": (22,), "race": RaceStatus(status="unaffordable")})
    table["soap_default"] = short
    bases = ["prodigy_default", "muon_default", "soap_default"]
    assert choose(table, ["trial_29"], bases, "maximize").baseline == "prodigy_default"


def test_a_config_that_failed_on_a_seed_ranks_below_complete_ones() -> None:
    # trial_1's surviving seed looks great, but it diverged on the other.
    table = {"trial_1": _entry([0.99, None, 0.99]), "trial_2": _entry([0.7, 0.72, 0.71]),
             "adam_tutorial": _entry([0.6, 0.6, 0.6])}
    pick = choose(table, ["trial_1", "trial_2"], ["adam_tutorial"], "maximize")
    assert (pick.winner, pick.tuned) == ("trial_2", "trial_2")


def test_minimized_metric_picks_the_lowest_mean() -> None:
    table = {"trial_1": _entry([0.30, 0.32, 0.31]), "adam_tutorial": _entry([0.40, 0.42, 0.41])}
    pick = choose(table, ["trial_1"], ["adam_tutorial"], "minimize")
    assert pick.winner == "trial_1" and pick.paired.verdict == "better"
    imp = improvement(table, pick, "minimize", "test_rmse")
    # positive means better: the baseline's RMSE minus the recommendation's
    assert imp.delta == pytest.approx(0.41 - 0.31) and imp.spread == pytest.approx(0.0081650, rel=1e-4)


def test_improvement_is_recommended_minus_best_baseline_with_the_larger_spread() -> None:
    table = {"trial_1": _entry([0.9, 0.9], test=[0.95, 0.97]),
             "adam_tutorial": _entry([0.8, 0.8], test=[0.90, 0.94])}
    pick = choose(table, ["trial_1"], ["adam_tutorial"], "maximize")
    imp = improvement(table, pick, "maximize", "test_accuracy")
    assert imp.metric == "test_accuracy" and imp.versus == "adam_tutorial"
    assert imp.delta == pytest.approx(0.96 - 0.92)
    assert imp.spread == pytest.approx(max(statistics.pstdev([0.95, 0.97]),
                                              statistics.pstdev([0.90, 0.94])))
    assert improvement(table, Pick("trial_1", "trial_1", None, None), "maximize", "test_accuracy") is None


# --- runs already made count as seeds --------------------------------------------------------------

TUNED = TrialConfig("adam", {"lr": 3e-3}, "cosine", {"eta_min_ratio": 0.01})
ADAM = BASELINES["adam_tutorial"]


def _made_study(*trials: dict) -> optuna.Study:
    """A study of finished trials: ``config``, ``value``, ``epochs`` run, and optionally ``state``,
    ``seed``, ``test``, ``batch_size``, ``portfolio``."""
    from optuna.distributions import FloatDistribution

    st = optuna.create_study(direction="maximize")
    for t in trials:
        epochs, state = t.get("epochs", 3), t.get("state", optuna.trial.TrialState.COMPLETE)
        attrs = {"config": t["config"].to_dict(), "history": [{"epoch": e, "val_accuracy": t["value"],
                                                               "epoch_s": 0.5} for e in range(1, epochs + 1)],
                 "s_per_epoch": 0.5, "train_s": 0.5 * epochs, "test": t.get("test", {"test_accuracy": 0.5})}
        attrs |= {k: t[k] for k in ("seed", "batch_size", "portfolio") if k in t}
        st.add_trial(optuna.trial.create_trial(
            state=state, value=t["value"] if state == optuna.trial.TrialState.COMPLETE else None,
            params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, user_attrs=attrs,
            intermediate_values={e: t["value"] for e in range(1, epochs + 1)}))
    return st


def test_a_complete_run_at_the_races_epochs_is_a_seed_and_a_pruned_or_shorter_one_is_not() -> None:
    spec = StudySpec(task="digits", epochs=3)
    pruned = optuna.trial.TrialState.PRUNED
    st = _made_study(
        {"config": ADAM, "value": 0.80, "seed": 10_000, "portfolio": True},  # 0: the screen's run of adam
        {"config": TUNED, "value": 0.90, "seed": 1},  # 1: the search's run of the tuned config
        {"config": TUNED, "value": 0.91, "seed": 2},  # 2: the same config again (its own trial is preferred)
        {"config": BASELINES["sgd_tutorial"], "value": 0.7, "seed": 10_000, "state": pruned},  # 3: pruned
        {"config": BASELINES["rmsprop_tutorial"], "value": 0.7, "seed": 10_000, "epochs": 2},  # 4: shorter
        {"config": TrialConfig("nadam", default_params("nadam")), "value": 0.7},  # 5: no seed recorded
        {"config": TrialConfig("lion", default_params("lion")), "value": 0.7, "seed": 10_000, "batch_size": 7},
        {"config": TrialConfig("radam", default_params("radam")), "value": 0.7, "seed": 10_000, "test": {}},
    )
    defaults = {f"{f}_default": TrialConfig(f, default_params(f)) for f in ("nadam", "lion", "radam")}
    entrants = [Contender("trial_2", 2, TUNED), *(Contender(n, None, c) for n, c in {**BASELINES, **defaults}.items())]
    made = made_runs(st, entrants, spec, "test_accuracy")
    assert {n: (m.seed, m.trial) for n, m in made.items()} == {"trial_2": (2, 2), "adam_tutorial": (10_000, 0)}
    run = made["adam_tutorial"].result
    assert run.value == 0.80 and run.test == {"test_accuracy": 0.5} and run.s_per_epoch == 0.5
    assert len(run.history) == 3 and run.time_to(0.8, "val_accuracy", "maximize") == 0.5
    # a race of 2 epochs counts the 2-epoch run, and not the 3-epoch ones
    short = made_runs(st, entrants, StudySpec(task="digits", epochs=2), "test_accuracy")
    assert {n: m.trial for n, m in short.items()} == {"rmsprop_tutorial": 4}
    # the race's seeds: those of runs made, in the contenders' order (the tuned config's own first)
    # unless more share one (the screen's); then fresh ones
    assert race_seeds(0, list(made.values()), 4) == [2, 10_000, 10_001, 10_002]
    assert race_seeds(0, list(made.values()), 1) == [2]
    screen = [Made(10_000, n, run) for n in (4, 5)]
    assert race_seeds(0, [made["trial_2"], *screen], 3) == [10_000, 2, 10_001]


def test_the_screen_trains_on_the_races_first_seed_and_the_search_apart() -> None:
    assert trial_seed(5, 3, TrialKind.SCREEN) == trial_seed(5, 9, TrialKind.SCREEN) == confirmation_seeds(5, 1)[0]
    assert trial_seed(5, 3, TrialKind.SEARCH) == 8 and trial_seed(5, 4, TrialKind.WARMSTART) == 9


def test_a_tuned_config_is_not_better_on_its_own_search_run_alone() -> None:
    """Its search run on seed 7 is the only seed it shares with the baseline: however far ahead,
    that is the run it won on, not evidence; with a seed the race ran for it, the verdict stands."""
    def e(seeds: tuple[int, ...], val: list[float | None], reused: tuple[Reused, ...] = ()) -> Entry:
        return Entry(name="e", optimizer="adam", seeds=seeds, val=Stats.of(val), test=Stats.of(val), reused=reused)

    base = e((7, 8, 9), [0.80, 0.81, 0.80])
    alone = e((7, 10), [0.95, 0.95], (Reused(seed=7, trial=7),))
    pick = choose({"trial_7": alone, "adam_tutorial": base}, ["trial_7"], ["adam_tutorial"], "maximize")
    assert pick.paired.n == 1 and pick.paired.verdict == "tie" and pick.winner == "adam_tutorial"
    both = e((7, 8, 9), [0.95, 0.96, 0.95], (Reused(seed=7, trial=7),))
    pick = choose({"trial_7": both, "adam_tutorial": base}, ["trial_7"], ["adam_tutorial"], "maximize")
    assert pick.paired.verdict == "better" and pick.winner == "trial_7"


def test_baselines_are_the_tutorials_defaults() -> None:
    assert BASELINES["sgd_tutorial"].optimizer_params == {"lr": 0.01, "momentum": 0.9}
    assert BASELINES["adam_tutorial"].optimizer_params == {"lr": 1e-3}
    assert BASELINES["rmsprop_tutorial"].optimizer_params == {"lr": 1e-3}
    assert all(b.scheduler == "none" and b.grad_clip_norm is None for b in BASELINES.values())


def _portfolio_study(values: dict[str, float]) -> optuna.Study:
    from optuna.distributions import CategoricalDistribution

    st = optuna.create_study(direction="maximize")
    for name, value in values.items():
        config = TrialConfig(name, default_params(name)).to_dict()
        st.add_trial(optuna.trial.create_trial(
            params={"optimizer": name}, distributions={"optimizer": CategoricalDistribution(sorted(values))},
            value=value, user_attrs={"config": config, "portfolio": True}))
    return st


def test_baselines_add_the_best_screened_defaults_with_two_modern_ones() -> None:
    st = _portfolio_study({"nadam": 0.97, "adamw": 0.96, "soap": 0.95, "sgd": 0.99, "lion": 0.90,
                           "prodigy": 0.94, "radam": 0.93})
    bases = baselines(st, "maximize")
    # sgd's default is the tutorial's SGD, already a baseline; then the best screened (nadam), the
    # two best modern ones (soap, prodigy); no more
    assert list(bases) == [*BASELINES, "nadam_default", "soap_default", "prodigy_default"]
    assert bases["soap_default"].optimizer_params == default_params("soap")
    assert {c.optimizer for c in bases.values()} & MODERN == {"soap", "prodigy"}


def test_a_slow_family_is_a_baseline_only_when_it_screened_best() -> None:
    st = _portfolio_study({"nadam": 0.97, "adamw": 0.96, "soap": 0.95, "sgd": 0.99, "lion": 0.90,
                           "prodigy": 0.94, "radam": 0.93})
    bases = baselines(st, "maximize", slow=frozenset({"soap"}))
    assert "soap_default" not in bases and {"nadam_default", "prodigy_default", "lion_default"} <= set(bases)
    first = _portfolio_study({"soap": 0.99, "nadam": 0.97, "prodigy": 0.94})
    assert "soap_default" in baselines(first, "maximize", slow=frozenset({"soap"}))  # it earned its place


def test_baselines_fill_modern_defaults_in_prior_order_when_the_portfolio_screened_too_few() -> None:
    bases = baselines(_portfolio_study({"nadam": 0.97, "adamw": 0.96, "lion": 0.5}), "maximize")
    modern = [c.optimizer for c in bases.values() if c.optimizer in MODERN]
    assert len(modern) == 2 and "lion" in modern
    first_prior = next(n for n in PORTFOLIO_PRIOR if n in MODERN and n != "lion")
    assert first_prior in modern and 5 <= len(bases) <= 6
    assert len([c for c in baselines(None).values() if c.optimizer in MODERN]) == 2


# --- a real study whose search space is hopeless: the baseline must win -----------------------------

POOR_STUDY = """\
task: digits
optimizers: [sgd]
schedulers: [none]
grad_clip: false
pruner: none
space:
  sgd:
    lr: {log: [1.0e-7, 1.0e-6]}
    momentum: 0.0
"""


@pytest.fixture(scope="module")
def poor(tmp_path_factory: pytest.TempPathFactory, _ray_session: None) -> Path:
    """A finished study whose trials could only pick learning rates that cannot learn in an epoch
    (run in this process, on the session's Ray, in the folder's default stores)."""
    from autoopt import tune

    folder = tmp_path_factory.mktemp("poor")
    (folder / "poor.yaml").write_text(POOR_STUDY)
    shared_ray()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for var in ("AUTOOPT_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "AUTOOPT_DATA"):
            mp.delenv(var, raising=False)
        tune(study_file="poor.yaml", trials=3, epochs=1, confirm_top=2, confirm_seeds=2, concurrency=2)
    return folder


def _rec(folder: Path) -> dict:
    return json.loads((folder / "recommendations" / "digits.json").read_text())


@pytest.mark.slow
def test_baseline_wins_over_a_hopeless_search(poor: Path) -> None:
    rec = _rec(poor)
    assert rec["source"] == "study"
    # the tutorial's three, plus published defaults, at least two of them modern
    names = {b["name"] for b in rec["baselines"]}
    assert names >= set(BASELINES) and 5 <= len(names) <= 6
    assert len({b["optimizer"] for b in rec["baselines"]} & MODERN) >= 2
    assert rec["chosen"] in names and rec["chosen_kind"] == "baseline"
    winner = next(b for b in rec["baselines"] if b["name"] == rec["chosen"])
    assert rec["optimizer"] == winner["optimizer"] and rec["optimizer_params"] == winner["params"]
    assert rec["trial_number"] is None
    assert rec["value"] == winner["val"]["mean"]
    # Every tuned config trained at lr <= 1e-6 and stays far below the baseline.
    for entry in rec["confirmation"].values():
        assert entry["optimizer_params"]["lr"] <= 1e-6
        assert entry["val"]["mean"] < winner["val"]["mean"] - 0.2
        assert entry["time_to_baseline_s"] is None  # it never reached the baseline's result
    # The best baseline is the recommendation itself: tuning bought nothing, and the verdict says so.
    imp = rec["improvement"]
    assert imp["versus"] == rec["chosen"] and imp["verdict"] == "worse"
    assert imp["delta"] == 0.0 and imp["metric"] == "test_accuracy"
    assert len(imp["paired"]["deltas"]) == 2 and all(d < 0 for d in imp["paired"]["deltas"])
    # what it costs: seconds per epoch, relative to the fastest baseline
    assert rec["cost"]["s_per_epoch"] > 0 and rec["cost"]["relative"] >= 1.0
    for entry in [*rec["confirmation"].values(), *rec["baselines"]]:
        assert entry["s_per_epoch"] > 0 and "time_to_baseline_s" in entry
    assert "cheapest_equivalent" in rec and rec["equivalence_margin"] == 0.01


@pytest.mark.slow
def test_confirmation_numbers_are_the_runs_numbers(poor: Path) -> None:
    """mean/std/per-seed values in the JSON are those of the nested MLflow runs, seed by seed."""
    import mlflow

    rec = _rec(poor)
    entries = {**rec["confirmation"], **{b["name"]: b for b in rec["baselines"]}}
    assert len(rec["confirmation"]) == 2 and set(BASELINES) <= {b["name"] for b in rec["baselines"]}
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{poor / 'mlflow.db'}")
    exp = client.get_experiment_by_name("autoopt/digits")
    every = client.search_runs([exp.experiment_id], max_results=1000)
    runs = [r for r in every if r.data.tags.get("autoopt.kind") in ("confirm", "baseline")]
    by_key = {(r.data.tags["autoopt.candidate"], int(r.data.tags["autoopt.seed"])): r for r in runs}
    trial_runs = {int(r.data.tags["autoopt.trial_number"]): r for r in every if "autoopt.trial_number" in r.data.tags}
    # The search's trials are the tuned configs' first seeds: each tuned config counts its own
    # trial's run, and every other contender runs that seed.
    tuned_seeds = {e["trial_number"] for e in rec["confirmation"].values()}  # base seed 0 + trial number
    for e in rec["confirmation"].values():
        assert {"seed": e["trial_number"], "trial": e["trial_number"]} in e["reused"]
    assert rec["race"]["reused"] == sum(len(e["reused"]) for e in entries.values()) >= 2
    assert len(runs) == rec["race"]["runs"] == sum(len(e["seeds"]) - len(e["reused"]) for e in entries.values())
    for name, entry in entries.items():
        assert len(entry["reused"]) <= 1  # one run made already at most: the rest are the race's
        assert tuned_seeds <= set(entry["seeds"])
        for key in ("val", "test"):
            stats = entry[key]
            assert len(stats["values"]) == 2 and None not in stats["values"]
            assert stats["mean"] == pytest.approx(statistics.fmean(stats["values"]))
            assert stats["std"] == pytest.approx(statistics.pstdev(stats["values"]))
        made = {r["seed"]: r["trial"] for r in entry["reused"]}
        for seed, val, test in zip(entry["seeds"], entry["val"]["values"], entry["test"]["values"], strict=True):
            run = trial_runs[made[seed]] if seed in made else by_key[(name, seed)]
            assert run.info.status == "FINISHED" and int(run.data.tags["autoopt.seed"]) == seed
            assert run.data.metrics["val_accuracy"] == pytest.approx(val)
            assert run.data.metrics["test_accuracy"] == pytest.approx(test)
    # The confirmed configs are the study's best trials, and the search's pick is kept for reference.
    import optuna

    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{poor / 'autoopt.db'}")
    keys = ("optimizer", "optimizer_params", "scheduler", "scheduler_params", "grad_clip_norm")
    as_baseline = {json.dumps({k: b[k] for k in keys}, sort_keys=True) for b in rec["baselines"]}
    # a portfolio trial whose config became a baseline is confirmed as that baseline, not twice
    tuned = [t for t in study.trials if t.value is not None
             and json.dumps({k: t.user_attrs["config"][k] for k in keys}, sort_keys=True) not in as_baseline]
    best_two = sorted(tuned, key=lambda t: t.value, reverse=True)[:2]
    assert {e["trial_number"] for e in rec["confirmation"].values()} == {t.number for t in best_two}
    assert rec["search_value"] == study.best_value


@pytest.mark.slow
def test_stored_recommendation_is_what_recommend_returns(poor: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(poor)
    monkeypatch.delenv("AUTOOPT_STORAGE", raising=False)
    data = recommend("digits").to_dict()
    file = _rec(poor)
    for key in ("optimizer", "optimizer_params", "confirmation", "baselines", "improvement", "source"):
        assert data[key] == file[key]


@pytest.mark.slow
def test_report_of_the_confirmed_study(poor: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``autoopt report`` on a study that really ran: curves from the trials' stored histories,
    the confirmation with the baseline marked as chosen, a summary that says tuning lost."""
    import optuna

    from autoopt.commands import report

    monkeypatch.chdir(poor)
    monkeypatch.delenv("AUTOOPT_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = run_main(capsys, "report", "--task", "digits")
    assert code == 0, err[-2000:]
    folder = poor / "reports" / "digits"
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(report.PLOTS)
    rec = _rec(poor)
    summary = (folder / "summary.md").read_text()
    assert f"`{rec['chosen']}`, a baseline: no tuned config beat it" in summary
    assert "verdict **worse**" in summary
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{poor / 'autoopt.db'}")
    (ax,) = report.loss_curves(study).axes
    best = max(study.trials, key=lambda t: t.value)
    assert sorted(line.get_label() for line in ax.get_lines()) == [f"sgd (#{best.number}) train",
                                                                   f"sgd (#{best.number}) val"]
    train = next(line for line in ax.get_lines() if line.get_label().endswith("train"))
    assert list(train.get_ydata()) == pytest.approx([h["train_loss"] for h in best.user_attrs["history"]])
    labels = [t.get_text() for t in report.confirmation_plot(Recommendation.from_dict(rec)).axes[0].get_yticklabels()]
    assert f"★ {rec['chosen']}" in [lbl.split(" (")[0] for lbl in labels]
    assert (folder / "pareto.png").exists() and "(pareto.png)" in summary


# --- recommend() without a study --------------------------------------------------------------------


def test_recommend_without_a_study_names_the_command(workdir: Path) -> None:
    with pytest.raises(UsageError, match=r"autoopt tune --task mnist"):
        recommend("mnist")
    assert not (workdir / "autoopt.db").exists()  # looking did not create a database


def test_recommend_falls_back_to_the_documented_prior(workdir: Path) -> None:
    import torch

    rec = recommend("mnist", fallback="prior")
    data = rec.to_dict()
    assert data["source"] == "prior" and data["optimizer"] == "adamw" and data["scheduler"] == "cosine"
    model = torch.nn.Linear(4, 2)
    opt = rec.build_optimizer(model)
    assert type(opt).__name__ == "AdamW" and rec.build_scheduler(opt, epochs=2, steps_per_epoch=3) is not None
    with pytest.raises(UsageError, match="fallback"):
        recommend("mnist", fallback="guess")


def test_cli_recommend_without_a_study_is_one_line_exit_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "autoopt tune --task mnist" in refused(capsys, "recommend", "--task", "mnist", folder=workdir)
