"""Modern and tuning-free families: every family trains a real CNN, protocols are honoured
(Schedule-Free's eval mode, no scheduler, Muon's split), presets resolve, bad names fail cleanly."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path

import optuna
import pytest
import torch
from conftest import refused
from torch import nn

from autoopt import space
from autoopt.errors import UsageError
from autoopt.recommendation import Recommendation
from autoopt.tasks import Task, load_task
from autoopt.training.train import evaluate, train

MODERN = ("lion", "adopt", "sfadamw", "prodigy", "muon", "soap")


class ConvNet(nn.Module):
    """Conv (weight + bias), batch norm, a hidden linear layer and an output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.hidden = nn.Linear(8 * 4 * 4, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.norm(self.conv(x))), 2)
        return self.out(torch.relu(self.hidden(x.flatten(1))))


def fixed_problem() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 8, 8, generator=gen)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() * 2 + (x[:, 0, :, :4].mean((1, 2)) > 0).long()
    return x, y


@pytest.fixture(scope="module")
def digits_task() -> Task:
    return load_task("digits")


def midpoint(name: str) -> dict:
    return {k: space.default_of(d) for k, d in space.FAMILIES[name].space.items()}


def eval_loss(model: nn.Module, optimizer: torch.optim.Optimizer, fam: space.Family,
              x: torch.Tensor, y: torch.Tensor) -> float:
    if fam.train_eval:
        optimizer.eval()
    model.eval()
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y).item()


def test_modern_families_are_registered_with_their_extra_and_paper() -> None:
    for name in MODERN:
        fam = space.FAMILIES[name]
        assert fam.extra == "pytorch-optimizer" and "modern" in fam.presets and "all" in fam.presets
        assert isinstance(fam.optimizer_class, str) and fam.optimizer_class.startswith("pytorch_optimizer:")
        assert fam.summary
    assert space.FAMILIES["prodigy"].space["lr"] == space.Fixed(1.0)
    assert "d_coef" in space.FAMILIES["prodigy"].space
    assert not space.FAMILIES["sfadamw"].schedulers and space.FAMILIES["sfadamw"].train_eval
    assert space.FAMILIES["muon"].split is not None
    # Lion: lr range a decade below AdamW's, weight decay a decade above.
    lion, adamw = space.FAMILIES["lion"].space, space.FAMILIES["adamw"].space
    assert lion["lr"].high <= adamw["lr"].high / 3
    assert lion["weight_decay"].low >= adamw["weight_decay"].low * 3


@pytest.fixture()
def one_thread():
    # A tiny model steps faster on one thread than on threads fighting over a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(space.FAMILIES))
def test_every_family_builds_through_recommend_and_lowers_the_loss(name: str, one_thread: None) -> None:
    fam = space.FAMILIES[name]
    x, y = fixed_problem()
    torch.manual_seed(0)
    model = ConvNet()
    rec = Recommendation(task="toy", optimizer=name, optimizer_params=midpoint(name))
    optimizer = rec.build_optimizer(model)
    assert isinstance(optimizer, torch.optim.Optimizer)
    before = eval_loss(model, optimizer, fam, x, y)
    for _ in range(40):
        model.train()
        if fam.train_eval:
            optimizer.train()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss(model, optimizer, fam, x, y)
    assert after < 0.95 * before, f"{name}: loss {before:.3f} -> {after:.3f}"
    assert rec.to_dict()["train_eval_mode"] is fam.train_eval


@pytest.mark.parametrize("name", list(space.FAMILIES))
def test_every_family_also_builds_on_bare_parameters(name: str) -> None:
    model = ConvNet()
    optimizer = space.build_optimizer(model.parameters(), name, midpoint(name))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):  # ADOPT's and SOAP's first step only initialises their statistics
        optimizer.zero_grad()
        model(fixed_problem()[0]).sum().backward()
        optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def _muon_groups(optimizer: torch.optim.Optimizer) -> tuple[set[int], set[int]]:
    muon = {id(p) for g in optimizer.param_groups if g["use_muon"] for p in g["params"]}
    adamw = {id(p) for g in optimizer.param_groups if not g["use_muon"] for p in g["params"]}
    return muon, adamw


def test_muon_gets_only_hidden_matrices_of_a_module() -> None:
    model = ConvNet()
    optimizer = space.build_optimizer(model, "muon", midpoint("muon"))
    muon, adamw = _muon_groups(optimizer)
    assert muon == {id(model.conv.weight), id(model.hidden.weight)}  # conv filter included
    assert adamw == {id(p) for p in model.parameters()} - muon
    for p in (model.conv.bias, model.norm.weight, model.norm.bias, model.out.weight, model.out.bias):
        assert id(p) in adamw
    assert all(p.ndim >= 2 for g in optimizer.param_groups if g["use_muon"] for p in g["params"])
    # The fallback runs at adamw_lr, and biases and norms get no weight decay.
    params = midpoint("muon")
    for g in optimizer.param_groups:
        if not g["use_muon"]:
            assert g["lr"] == params["adamw_lr"]
            if any(p.ndim < 2 for p in g["params"]):
                assert g["weight_decay"] == 0.0
    # After a step the two kinds carry the two kinds of state.
    model(fixed_problem()[0]).sum().backward()
    optimizer.step()
    assert "momentum_buffer" in optimizer.state[model.conv.weight]
    assert "exp_avg" in optimizer.state[model.out.weight] and "exp_avg" in optimizer.state[model.norm.weight]


def test_muon_leaves_embeddings_to_adamw() -> None:
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 50))
    muon, _ = _muon_groups(space.build_optimizer(model, "muon", midpoint("muon")))
    assert muon == {id(model[1].weight)}


def test_muon_on_bare_parameters_keeps_the_last_matrix_out() -> None:
    model = ConvNet()
    muon, adamw = _muon_groups(space.build_optimizer(model.parameters(), "muon", midpoint("muon")))
    assert muon == {id(model.conv.weight), id(model.hidden.weight)}
    assert id(model.out.weight) in adamw
    with pytest.raises(UsageError, match="parameter groups"):
        space.build_optimizer([{"params": list(model.parameters())}], "muon", midpoint("muon"))


def test_muon_orthogonalises_a_conv_filter_as_a_flattened_matrix() -> None:
    conv = nn.Conv2d(8, 16, 3)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(8, 2))
    optimizer = space.build_optimizer(model, "muon", {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.0,
                                                      "adamw_lr": 1e-3})
    # A gradient whose singular values span two decades: Muon's update flattens them to ~1.
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(72, 16, generator=gen))
    conv.weight.grad = (u @ torch.diag(torch.logspace(0, -2, 16)) @ v.T).reshape(conv.weight.shape)
    before = conv.weight.detach().clone()
    optimizer.step()
    sv = torch.linalg.svdvals((conv.weight.detach() - before).reshape(16, -1) / 0.02)
    assert sv.max() / sv.min() < 3, sv


@pytest.mark.parametrize("sched", list(space.SCHEDULES))
def test_muon_groups_keep_their_lr_ratio_under_every_scheduler(sched: str, one_thread: None) -> None:
    # A study sampled muon + onecycle and failed (OneCycleLR reads the optimizer's defaults),
    # and cosine decayed every group towards the Muon group's floor.
    params = {"lr": 0.02, "momentum": 0.95, "weight_decay": 0.0, "adamw_lr": 3e-4}
    optimizer = space.build_optimizer(ConvNet(), "muon", params)
    sched_params = {k: space.default_of(d) for k, d in space.SCHEDULES[sched].space.items()}
    # Warmup in front, except for cosine, whose floor is checked at the end.
    warmup = 0.0 if sched == "cosine" else 0.1
    scheduler = space.build_scheduler(optimizer, sched, {**sched_params, "warmup_ratio": warmup}, epochs=2,
                                      steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        optimizer.step()
        if scheduler is not None:
            scheduler.step(1.0) if space.SCHEDULES[sched].per_epoch else scheduler.step()
        lrs.append([g["lr"] for g in optimizer.param_groups])
    for muon_lr, *adamw_lrs in lrs:
        assert muon_lr <= params["lr"] * (1 + 1e-9)
        for lr in adamw_lrs:
            assert lr == pytest.approx(muon_lr * params["adamw_lr"] / params["lr"], rel=1e-6, abs=1e-12)
    if sched == "cosine":
        assert lrs[-1][0] == pytest.approx(params["lr"] * sched_params["eta_min_ratio"], rel=1e-6)


def test_muon_trains_with_onecycle(digits_task: Task, one_thread: None) -> None:
    cfg = space.TrialConfig("muon", midpoint("muon"), "onecycle", {"pct_start": 0.25})
    result = train(digits_task, cfg, epochs=1, seed=0)
    assert result.status == "complete" and result.value > 0.5


def _probe_family() -> tuple[list[torch.optim.Optimizer], space.Family]:
    """A Schedule-Free AdamW family that remembers its instances, with sfadamw's protocol (not
    registered: the trial gets it as its family, as a worker does)."""
    from pytorch_optimizer import ScheduleFreeAdamW

    made: list[torch.optim.Optimizer] = []

    class ProbeSF(ScheduleFreeAdamW):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    fam = dataclasses.replace(space.FAMILIES["sfadamw"], name="sfprobe", optimizer_class=ProbeSF)
    return made, fam


def test_schedule_free_validates_at_its_averaged_weights(digits_task: Task, one_thread: None) -> None:
    made, fam = _probe_family()
    digits = digits_task
    models: list[nn.Module] = []

    def build() -> nn.Module:
        models.append(digits.build_model())
        return models[-1]

    task = dataclasses.replace(digits, build_model=build)
    checked: list[int] = []

    def on_epoch(epoch: int, metrics: dict) -> bool:
        (opt,), (model,) = made, models
        assert all(not g["train_mode"] for g in opt.param_groups)  # eval mode during validation
        assert evaluate(model, task)["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)
        # The training-mode weights are different and score differently: validation used eval's.
        averaged = [p.detach().clone() for p in model.parameters()]
        opt.train()
        assert any(not torch.allclose(a, p) for a, p in zip(averaged, model.parameters(), strict=True))
        assert evaluate(model, task)["val_loss"] != pytest.approx(metrics["val_loss"], rel=1e-6)
        opt.eval()
        checked.append(epoch)
        return False

    cfg = space.TrialConfig("sfprobe", {"lr": 3e-3}, "cosine", {"eta_min_ratio": 0.01})
    result = train(task, cfg, epochs=2, seed=0, on_epoch=on_epoch, family=fam)
    assert checked == [1, 2] and result.status == "complete"
    assert result.value > 0.5
    # No scheduler was built although the config names one: the lr stayed constant.
    assert {round(h["lr"], 12) for h in result.history} == {3e-3}


def _ask(families: tuple[str, ...], seed: int) -> tuple[optuna.trial.Trial, space.TrialConfig]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    return trial, space.suggest_config(trial, space.SearchSpace(families))


def test_schedule_free_samples_no_scheduler_params() -> None:
    sched_names = set(space.SCHEDULES) | {"scheduler", "warmup_ratio"}
    for seed in range(5):
        trial, cfg = _ask(("sfadamw",), seed)
        assert cfg.scheduler == "none" and cfg.scheduler_params == {}
        assert not any(k.split(".")[0] in sched_names for k in trial.params), trial.params
        assert {k for k in trial.params if k.startswith("sfadamw.")} == {f"sfadamw.{k}" for k in
                                                                          space.FAMILIES["sfadamw"].space}
    # The contrast: a family that takes a scheduler samples one.
    trial, _ = _ask(("lion",), 0)
    assert "scheduler" in trial.params


def test_prodigy_searches_d_coef_not_lr() -> None:
    trial, cfg = _ask(("prodigy",), 0)
    assert "prodigy.lr" not in trial.params and cfg.optimizer_params["lr"] == 1.0
    assert "prodigy.d_coef" in trial.params


def test_presets() -> None:
    classic = ["sgd", "adam", "adamw", "rmsprop", "adagrad", "nadam", "radam"]
    assert space.resolve_optimizers("classic") == classic
    modern = space.resolve_optimizers("modern")
    assert set(MODERN) <= set(modern) and not set(classic) & set(modern)
    assert space.resolve_optimizers("all") == classic + modern
    assert space.resolve_optimizers("lion,classic") == ["lion", *classic]
    with pytest.raises(UsageError, match=r"known: .*muon"):
        space.resolve_optimizers("lion,no_such_opt")


def test_missing_package_names_the_pip_command() -> None:
    ghost = space.Family("ghost", "no_such_module_xyz:Ghost", {"lr": space.Fixed(1.0)}, extra="pytorch-optimizer")
    with pytest.raises(UsageError) as err:
        ghost.load_class()
    assert str(err.value) == ("optimizer 'ghost' needs the package pytorch-optimizer, which is missing here "
                              "(it is a dependency of autoopt): pip install pytorch-optimizer")
    assert not ghost.available()


def test_cli_unknown_optimizer_is_one_line_exit_2(workdir: Path, local_ray: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, "tune", "--task", "digits", "--optimizers", "no_such_opt", "--trials", "1",
                   folder=workdir)  # one line, exit 2, nothing created
    assert "no_such_opt" in line and "lion" in line and "classic" in line


# The CLI's entry point, called once per argv (a JSON list of argv lists) in one fresh process,
# on one Ray: prints each call's exit code, stdout and stderr as a JSON list. Each call is refused
# before a worker is asked for: a bare one-CPU Ray (no worker importing torch at start, as
# ``start_ray``'s do) keeps each call from starting its own while it checks its input.
_CALLS = """
import contextlib, io, json, logging, sys
import ray
from autoopt.cli import main
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    logging.root.handlers.clear()  # the command's own logging set-up writes to this call's stderr
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


@pytest.mark.slow
def test_cli_without_pytorch_optimizer_is_one_line_exit_2(workdir: Path) -> None:
    import json
    import subprocess
    import sys

    # A package that fails to import as pytorch_optimizer does when it is not installed: a fresh
    # process (this one imported the real package long ago), one for the three commands.
    shadow = workdir / "shadow" / "pytorch_optimizer"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ModuleNotFoundError("No module named pytorch_optimizer")\n')
    path = os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH")) if p)
    calls = [["tune", "--task", "digits", "--optimizers", names, "--trials", "1"] for names in ("modern", "sgd,muon")]
    # The classics need no extra: validation gets past the optimizers to the next mistake.
    calls.append(["tune", "--task", "digits", "--optimizers", "classic", "--schedulers", "nope", "--trials", "1"])
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOOPT_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", _CALLS, json.dumps(calls)], cwd=workdir, capture_output=True,
                          text=True, timeout=300, env={**env, "PYTHONPATH": path}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for code, out, err in results[:2]:
        text = (out + err).strip()
        assert code == 2, text
        assert len(text.splitlines()) == 1 and "Traceback" not in text
        assert "pip install pytorch-optimizer" in text
    code, out, err = results[2]
    assert code == 2 and "unknown scheduler 'nope'" in err and "modern" not in out + err, out + err
    assert sorted(p.name for p in workdir.iterdir()) == ["shadow"]  # nothing created


def test_schedule_free_recommendation_builds_no_scheduler_and_says_train_eval() -> None:
    rec = Recommendation(task="toy", optimizer="sfadamw", optimizer_params=midpoint("sfadamw"),
                         scheduler="cosine", scheduler_params={"eta_min_ratio": 0.01})
    optimizer = rec.build_optimizer(ConvNet())
    assert rec.build_scheduler(optimizer, epochs=2, steps_per_epoch=5) is None
    data = rec.to_dict()
    assert data["optimizer"] == "sfadamw" and data["train_eval_mode"] is True
    assert Recommendation.from_dict(data).optimizer_params == rec.optimizer_params


def _constructor_defaults(name: str) -> dict:
    sig = inspect.signature(space.FAMILIES[name].load_class())
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("name", MODERN)
def test_modern_defaults_are_the_published_ones(name: str) -> None:
    fam = space.FAMILIES[name]
    assert fam.defaults and set(fam.defaults) <= set(fam.space)
    kwargs = space.optimizer_kwargs(fam.defaults)
    if name == "lion":  # the paper's advice on AdamW's default decay, not the library's 0
        assert kwargs.pop("weight_decay") == 0.1
    expected = _constructor_defaults(name)
    assert {k: expected[k] for k in kwargs} == kwargs


def test_tuning_free_families_run_at_their_published_defaults(digits_task: Task, one_thread: None) -> None:
    tuning_free = {name: space.TrialConfig(name, space.default_params(name)) for name in ("sfadamw", "prodigy")}
    for cfg in tuning_free.values():
        assert cfg.scheduler == "none" and cfg.grad_clip_norm is None
        kwargs = space.optimizer_kwargs(cfg.optimizer_params)
        expected = _constructor_defaults(cfg.optimizer)
        assert {k: expected[k] for k in kwargs} == kwargs
    assert tuning_free["prodigy"].optimizer_params["lr"] == 1.0
    assert tuning_free["sfadamw"].optimizer_params["lr"] == 0.0025
    for cfg in tuning_free.values():
        result = train(digits_task, cfg, epochs=2, seed=0)
        assert result.status == "complete" and result.value > 0.8, (cfg, result.value)
