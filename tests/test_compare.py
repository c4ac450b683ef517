"""``autoopt compare``: fixed settings per family (or per learning rate), seeds as Ray jobs,
a table, a loss-curve plot, MLflow runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import refused, run_main
from PIL import Image

from autoopt.commands import report
from autoopt.commands.compare import compare_configs, default_params, mean_curve, parse_lrs, plan_compare
from autoopt.errors import UsageError
from autoopt.space import FAMILIES, build_optimizer
from autoopt.spec import Placement


def test_classic_defaults_are_the_tutorials() -> None:
    assert default_params("sgd") == {"lr": 0.01, "momentum": 0.9}
    assert default_params("adam") == {"lr": 1e-3}
    assert default_params("rmsprop") == {"lr": 1e-3}
    assert default_params("adamw") == {"lr": 1e-3, "weight_decay": 1e-2}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_has_defaults_it_trains_with(name: str) -> None:
    """Whatever is registered (classic, modern, a user's own): compare can build it and step it."""
    fam = FAMILIES[name]
    if not fam.available():
        pytest.skip(f"{name} needs the extra {fam.extra}")
    params = default_params(name)
    assert params["lr"] > 0
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    opt = build_optimizer(model, name, params)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):  # ADOPT's first step only initialises its second moment
        opt.zero_grad()
        model(torch.randn(8, 1, 8, 8)).logsumexp(1).mean().backward()
        opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_configs_per_family_and_per_learning_rate() -> None:
    configs = compare_configs(["sgd", "rmsprop"], lrs=[0.1, 1e-4])
    assert [label for label, _ in configs] == ["sgd lr=0.1", "sgd lr=0.0001",
                                               "rmsprop lr=0.1", "rmsprop lr=0.0001"]
    # the lr changes, the family's other defaults stay; constant lr, no clipping
    assert configs[1][1].optimizer_params == {"lr": 1e-4, "momentum": 0.9}
    assert all(c.scheduler == "none" and c.grad_clip_norm is None for _, c in configs)
    assert [label for label, _ in compare_configs(["adam"])] == ["adam"]


def test_bad_learning_rates_are_usage_errors() -> None:
    assert parse_lrs("0.1, 0.01") == [0.1, 0.01]
    assert parse_lrs(None) is None
    for bad in ("fast", "0.1,-1", "0", "nan"):
        with pytest.raises(UsageError, match="--lrs"):
            parse_lrs(bad)


def test_mean_curve_skips_what_a_diverged_run_did_not_reach() -> None:
    runs = [[{"train_loss": 1.0}, {"train_loss": 0.5}, {"train_loss": 0.25}],
            [{"train_loss": 3.0}, {"train_loss": math.inf}]]
    mean, std = mean_curve(runs)
    assert mean == [2.0, 0.5, 0.25] and std == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(("args", "expect"), [(["--lrs", "fast"], "--lrs"),
                                            (["--optimizers", "no_such_opt"], "no_such_opt"),
                                            (["--seeds", "0"], "--seeds")])
def test_cli_bad_input_is_one_line_exit_2(workdir: Path, local_ray: None, capsys: pytest.CaptureFixture[str],
                                          args: list[str], expect: str) -> None:
    assert expect in refused(capsys, "compare", "--task", "digits", *args, folder=workdir)


def test_plan_holds_where_to_run_only(workdir: Path) -> None:
    plan = plan_compare("digits", "sgd,adam", seeds=2, concurrency=2, data_dir=None)
    assert isinstance(plan.placement, Placement) and plan.placement.concurrency == 2
    assert plan.seeds == [0, 1] and plan.epochs >= 1 and [label for label, _ in plan.configs] == ["sgd", "adam"]
    with pytest.raises(UsageError, match="--concurrency"):
        plan_compare("digits", "sgd", concurrency=0)
    with pytest.raises(UsageError, match="--epochs"):
        plan_compare("digits", "sgd", epochs=0)


@pytest.mark.slow
def test_compare_learning_rates_end_to_end(workdir: Path, local_ray: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The tutorial's exercise: two families at two learning rates, two seeds each (the entry
    point in this process, on the session's Ray)."""
    import mlflow

    code, stdout, err = run_main(capsys, "compare", "--task", "digits", "--optimizers", "sgd,adam", "--lrs",
                                 "0.1,0.001", "--seeds", "2", "--epochs", "2", "--concurrency", "2")
    assert code == 0, err[-3000:]
    labels = ["sgd lr=0.1", "sgd lr=0.001", "adam lr=0.1", "adam lr=0.001"]
    table = [line for line in stdout.splitlines() if "│" in line]
    for label in labels:
        assert any(line.split("│")[1].strip() == label for line in table), (label, stdout)

    data = json.loads((workdir / "compare" / "digits.json").read_text())
    assert [r["label"] for r in data["rows"]] == labels
    assert data["metric"] == "val_accuracy" and data["test_metric"] == "test_accuracy" and data["epochs"] == 2
    assert data["rows"][1]["optimizer_params"] == {"lr": 0.001, "momentum": 0.9}
    for row in data["rows"]:
        values = row["val"]["values"]
        assert len(values) == 2 and row["seeds"] == [0, 1]
        # ``failed`` names exactly the seeds without a value (a diverged lr=0.1 run), each with its reason.
        missing = [seed for seed, value in zip(row["seeds"], values, strict=True) if value is None]
        assert [f.partition(":")[0] for f in row["failed"]] == [f"seed {seed}" for seed in missing], row
        assert all(f.partition(": ")[2] for f in row["failed"]), row["failed"]
        assert row["val"]["complete"] == 2 - len(missing)
        # A seed that completed trained both epochs: the mean curve covers both (one that
        # diverged stops where it blew up, so a row with none complete may be shorter).
        if len(missing) < 2:
            assert len(row["curve"]) == len(row["curve_std"]) == 2, row
        else:
            assert len(row["curve"]) <= 2, row
    good = data["rows"][0]  # sgd at 0.1 with momentum 0.9 learns digits in two epochs
    assert good["val"]["complete"] == 2 and good["val"]["mean"] > 0.5
    assert good["curve"][1] < good["curve"][0]  # the train loss fell

    with Image.open(workdir / "compare" / "digits.png") as img:
        assert img.size == tuple(round(v * report.DPI) for v in report.FIGSIZE)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("autoopt/digits")
    parent = client.get_run(data["run_id"])
    assert parent.data.tags["autoopt.kind"] == "compare" and parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "compare")} == {
        "compare/digits.png", "compare/digits.json"}
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(runs) == 8
    by_key = {(r.data.tags["autoopt.candidate"], int(r.data.tags["autoopt.seed"])): r for r in runs}
    for row in data["rows"]:
        for seed, value in zip(row["seeds"], row["val"]["values"], strict=True):
            if value is not None:
                assert by_key[(row["label"], seed)].data.metrics["val_accuracy"] == pytest.approx(value)
