"""The registry: conditional search space, schedulers, clipping, builders."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from autoopt.errors import UsageError
from autoopt.space import (
    FAMILIES,
    PORTFOLIO_PRIOR,
    REGISTRY,
    SCHEDULES,
    Choice,
    Fixed,
    LogUniform,
    SearchSpace,
    build_optimizer,
    build_scheduler,
    default_of,
    default_params,
    make_family,
    param_groups,
    parse_dimension,
    resolve_optimizers,
    suggest_config,
)
from autoopt.spec import StudySpec

CLASSIC = ["sgd", "adam", "adamw", "rmsprop", "adagrad", "nadam", "radam"]


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))


def test_classic_preset_is_the_seven_and_all_is_the_default() -> None:
    assert resolve_optimizers("classic") == CLASSIC
    assert StudySpec.model_fields["optimizers"].default == ["all"]
    assert resolve_optimizers("all") == list(FAMILIES) and len(FAMILIES) == 14
    assert resolve_optimizers("sgd, adam,sgd") == ["sgd", "adam"]
    with pytest.raises(UsageError, match="unknown optimizer 'adamx'; known: sgd"):
        resolve_optimizers("adamx")


@pytest.mark.parametrize("name", CLASSIC)
def test_each_classic_family_builds_and_steps(name: str) -> None:
    model = small_model()
    params = {k: default_of(d) for k, d in FAMILIES[name].space.items()}
    opt = build_optimizer(model, name, params)
    assert opt.param_groups[0]["lr"] == pytest.approx(params["lr"])
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_no_weight_decay_on_biases_and_norms() -> None:
    groups = param_groups(small_model(), 0.1)
    decayed = [p.ndim for p in groups[0]["params"]]
    free = [p.ndim for p in groups[1]["params"]]
    assert groups[0]["weight_decay"] == 0.1 and all(n >= 2 for n in decayed)
    assert groups[1]["weight_decay"] == 0.0 and all(n < 2 for n in free) and len(free) == 4


def test_sgd_nesterov_without_momentum_is_made_valid() -> None:
    opt = build_optimizer(small_model(), "sgd", {"lr": 0.1, "momentum": 0.0, "nesterov": True})
    assert opt.param_groups[0]["nesterov"] is False


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("warmup", [0.0, 0.1])
def test_each_scheduler_builds_and_steps(name: str, warmup: float) -> None:
    model = small_model()
    opt = build_optimizer(model, "sgd", {"lr": 0.1, "momentum": 0.9})
    params = {k: default_of(d) for k, d in SCHEDULES[name].space.items()} | {"warmup_ratio": warmup}
    sched = build_scheduler(opt, name, params, epochs=4, steps_per_epoch=5)
    if name == "none":
        assert sched is None
        return
    lrs = []
    for _ in range(4):
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(2, 1, 8, 8)).sum().backward()
            opt.step()
            if not SCHEDULES[name].per_epoch:
                sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        if SCHEDULES[name].per_epoch:
            sched.step(1.0)  # a flat validation loss: plateau must cut the lr
            lrs.append(opt.param_groups[0]["lr"])
    assert all(math.isfinite(v) and v > 0 for v in lrs)
    assert min(lrs) < 0.1 or name == "onecycle", f"{name} never lowered the lr"
    if warmup and SCHEDULES[name].warmup:
        assert lrs[0] < 0.06 < max(lrs), "warmup must start low and reach the base lr"


def test_suggest_config_is_conditional_on_the_family() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = SearchSpace(("sgd", "adam"), ("none", "cosine"), grad_clip=True)
    seen = set()
    for _ in range(30):
        trial = study.ask()
        cfg = suggest_config(trial, space)
        seen.add(cfg.optimizer)
        fam_params = {k for k in trial.params if "." in k and k.split(".")[0] in ("sgd", "adam")}
        assert all(k.startswith(cfg.optimizer + ".") for k in fam_params)
        if cfg.optimizer == "adam":
            assert "momentum" not in cfg.optimizer_params and {"beta1", "beta2"} <= set(cfg.optimizer_params)
        else:
            assert "momentum" in cfg.optimizer_params and "beta1" not in cfg.optimizer_params
        if cfg.scheduler == "cosine":
            assert "eta_min_ratio" in cfg.scheduler_params
        else:
            assert cfg.scheduler_params == {}
        assert cfg.grad_clip_norm is None or 0.1 <= cfg.grad_clip_norm <= 10
        study.tell(trial, 0.5)
    assert seen == {"sgd", "adam"}


def test_overrides_narrow_the_space() -> None:
    space = SearchSpace(("sgd",), ("none",), grad_clip=False,
                        overrides={"sgd": {"momentum": Fixed(0.9), "lr": LogUniform(0.01, 0.1)}})
    study = optuna.create_study()
    trial = study.ask()
    cfg = suggest_config(trial, space)
    assert cfg.optimizer_params["momentum"] == 0.9 and 0.01 <= cfg.optimizer_params["lr"] <= 0.1
    assert cfg.grad_clip_norm is None and "grad_clip" not in trial.params


def test_parse_dimension_reads_study_file_syntax() -> None:
    assert parse_dimension({"log": [1e-4, 1]}, "x") == LogUniform(1e-4, 1.0)
    assert parse_dimension({"choice": [True, False]}, "x") == Choice(True, False)
    assert parse_dimension(0.9, "x") == Fixed(0.9)
    for bad in ({"log": [0, 1]}, {"log": [1, 0.1]}, {"uniform": [1]}, {"gauss": [0, 1]}):
        with pytest.raises(UsageError):
            parse_dimension(bad, "sgd.lr")


def test_the_registry_is_read_only_and_refuses_to_overwrite() -> None:
    with pytest.raises(TypeError):
        FAMILIES["adam"] = FAMILIES["sgd"]  # type: ignore[index]
    with pytest.raises(UsageError, match="already registered"):
        REGISTRY.register("sgd", torch.optim.Adam, {"lr": 0.1})
    assert FAMILIES["sgd"].optimizer_class == "torch.optim:SGD"


def test_a_space_holds_its_own_families() -> None:
    mine = make_family("mine", torch.optim.SGD, {"lr": LogUniform(1e-3, 1e-1)})
    space = SearchSpace(("sgd", "mine"), ("none",), overrides={"sgd": {"lr": LogUniform(1e-2, 1e-1)}},
                        custom={"mine": mine})
    assert "mine" not in FAMILIES and space.family("mine") is mine
    assert space.family("sgd").space["lr"] == LogUniform(1e-2, 1e-1)
    assert FAMILIES["sgd"].space["lr"] == LogUniform(1e-4, 1.0)  # the registry's entry is untouched
    with pytest.raises(TypeError):
        space.families["adam"] = FAMILIES["adam"]  # type: ignore[index]
    with pytest.raises(UsageError, match="not in this study's space"):
        space.family("adam")
    with pytest.raises(UsageError, match=r"space\.sgd\.nope: sgd has no parameter nope"):
        SearchSpace(("sgd",), overrides={"sgd": {"nope": Fixed(1)}})


@pytest.mark.parametrize(("space", "expect"), [
    ({"lr": LogUniform(0.5, 1e-3)}, "mine.lr: log needs \\[low, high\\] with low < high"),
    ({"lr": Fixed(-0.1)}, "mine.lr: a learning rate must be a positive number"),
    ({"lr": Fixed(1e-3), "beta": LogUniform(float("nan"), 1.0)}, "mine.beta: log bounds must be finite"),
    ({"momentum": Fixed(0.9)}, "its space needs an 'lr' entry"),
])
def test_python_registration_checks_the_space(space: dict, expect: str) -> None:
    with pytest.raises(UsageError, match=expect):
        make_family("mine", torch.optim.SGD, space)


def test_default_params_and_the_portfolio_prior() -> None:
    assert default_params("sgd") == {"lr": 0.01, "momentum": 0.9}
    assert default_params("prodigy")["lr"] == 1.0
    assert sorted(PORTFOLIO_PRIOR) == sorted(FAMILIES) and PORTFOLIO_PRIOR[0] == "adamw"
