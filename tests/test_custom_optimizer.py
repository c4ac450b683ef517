"""A user's own optimizer competes like a built-in family: registered from Python and from a
study file, trained on the Ray workers, confirmed, recorded in Optuna and MLflow, recommended."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import forget_family, run_cli

import autoopt
from autoopt.errors import UsageError
from autoopt.space import FAMILIES, Fixed, LogUniform, Uniform, build_optimizer
from autoopt.spec import load_spec


class SignMomentum(torch.optim.Optimizer):
    """Sign of an exponential moving average of the gradient:
    ``m <- beta * m + (1 - beta) * g``, ``p <- p - lr * sign(m)``."""

    def __init__(self, params, lr: float = 1e-3, beta: float = 0.9, weight_decay: float = 0.0) -> None:
        if lr <= 0:
            raise ValueError(f"invalid lr {lr}")
        defaults = dict(lr=lr, beta=beta, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["m"] = torch.zeros_like(p)
                m = state["m"]
                m.mul_(group["beta"]).add_(p.grad, alpha=1 - group["beta"])
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m), alpha=-group["lr"])
        return loss


class MarkedSignMomentum(SignMomentum):
    """SignMomentum that leaves a file named after its process in ``marker`` (a fixed
    hyperparameter) each time it is built: proof of where it ran."""

    def __init__(self, params, lr: float = 1e-3, beta: float = 0.9, weight_decay: float = 0.0,
                 marker: str = "") -> None:
        super().__init__(params, lr=lr, beta=beta, weight_decay=weight_decay)
        if marker:
            Path(marker, f"{type(self).__name__}-{os.getpid()}").touch()


def _two_steps(opt: torch.optim.Optimizer, p: torch.Tensor) -> list[list[float]]:
    seen = []
    for _ in range(2):
        opt.zero_grad()
        (0.5 * (p ** 2).sum()).backward()  # gradient = p
        opt.step()
        seen.append([round(v, 6) for v in p.detach().tolist()])
    return seen


def test_update_rule_matches_a_hand_computation() -> None:
    # p0 = (0.3, -0.2, 0), lr 0.5, beta 0.9, gradient = p.
    # step 1: m = 0.1 * (0.3, -0.2, 0) = (0.03, -0.02, 0); p = p0 - 0.5 * (1, -1, 0) = (-0.2, 0.3, 0)
    # step 2: m = 0.9 * m + 0.1 * (-0.2, 0.3, 0) = (0.007, 0.012, 0): the first coordinate's
    #         momentum still points the old way, so p = (-0.2 - 0.5, 0.3 - 0.5, 0) = (-0.7, -0.2, 0)
    p = torch.tensor([0.3, -0.2, 0.0], requires_grad=True)
    assert _two_steps(SignMomentum([p], lr=0.5, beta=0.9), p) == [[-0.2, 0.3, 0.0], [-0.7, -0.2, 0.0]]


@pytest.fixture()
def signmom(tmp_path: Path):
    """Register MarkedSignMomentum from Python as ``signmom`` (marking into ``tmp_path/marks``);
    unregister afterwards."""
    marks = tmp_path / "marks"
    marks.mkdir()
    fam = autoopt.register_optimizer("signmom", MarkedSignMomentum,
                                     {"lr": LogUniform(3e-3, 3e-2), "beta": Uniform(0.8, 0.95),
                                      "marker": Fixed(str(marks))})
    yield fam
    forget_family("signmom")


def test_registering_never_replaces_a_family_silently() -> None:
    with pytest.raises(UsageError, match="already registered"):
        autoopt.register_optimizer("adam", torch.optim.SGD, {"lr": LogUniform(1e-3, 1e-1)})
    assert FAMILIES["adam"].load_class() is torch.optim.Adam
    autoopt.register_optimizer("signmom_tmp", SignMomentum, {"lr": LogUniform(1e-3, 1e-1)})
    try:
        with pytest.raises(UsageError, match="already registered"):
            autoopt.register_optimizer("signmom_tmp", torch.optim.SGD, {"lr": LogUniform(1e-3, 1e-1)})
        fam = autoopt.register_optimizer("signmom_tmp", torch.optim.SGD, {"lr": LogUniform(1e-3, 1e-1)},
                                         replace=True)
        assert autoopt.space.family("signmom_tmp") is fam
    finally:
        forget_family("signmom_tmp")
    with pytest.raises(UsageError, match=r"not a torch\.optim\.Optimizer"):
        autoopt.register_optimizer("dictopt", dict, {"lr": 1e-3})
    assert "dictopt" not in FAMILIES


def test_a_study_files_class_lives_in_its_spec_not_in_the_registry(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "myopts_spec.py").write_text(MODULE_HEADER + inspect.getsource(SignMomentum))
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "study.yaml").write_text(
        "task: digits\noptimizers: [signmom]\ncustom_optimizers:\n  signmom:\n"
        "    class: myopts_spec:SignMomentum\n    space:\n      lr: {log: [3.0e-3, 3.0e-2]}\n")
    spec = load_spec(study_file=tmp_path / "study.yaml")
    assert "signmom" not in FAMILIES
    assert spec.search_space().optimizers == ("signmom",)
    assert spec.family("signmom").load_class().__name__ == "SignMomentum"
    assert spec.search_space().default_params("signmom") == {"lr": pytest.approx((3e-3 * 3e-2) ** 0.5)}
    with pytest.raises(UsageError, match="unknown optimizer 'signmom'"):
        autoopt.space.family("signmom")


def test_registered_family_builds_with_the_same_update_rule(signmom) -> None:
    # Through the registry (what trials and recommend() use), the rule is unchanged.
    p = torch.tensor([0.3, -0.2, 0.0], requires_grad=True)
    opt = build_optimizer([p], "signmom", {"lr": 0.5, "beta": 0.9})
    assert type(opt) is MarkedSignMomentum
    assert _two_steps(opt, p) == [[-0.2, 0.3, 0.0], [-0.7, -0.2, 0.0]]
    assert "signmom" in autoopt.space.resolve_optimizers("all")


@pytest.mark.slow
def test_python_registered_optimizer_competes_in_a_study(workdir: Path, local_ray: None, signmom) -> None:
    """The class lives in this test module, which the Ray workers cannot import: the job
    carries it to them. Its trials are complete, recorded and confirmed like the built-ins'."""
    import optuna

    from autoopt import tracking

    rec = autoopt.tune("digits", optimizers="signmom", trials=3, epochs=2, pruner="none", schedulers="none",
                       confirm_top=1, confirm_seeds=1, concurrency=2)
    study = optuna.load_study(study_name="digits", storage="sqlite:///autoopt.db")
    trials = study.get_trials()
    assert len(trials) == 3
    for t in trials:
        assert t.state.name == "COMPLETE", t.user_attrs.get("reason")
        assert t.params["optimizer"] == "signmom" and 3e-3 <= t.params["signmom.lr"] <= 3e-2
        assert t.user_attrs["config"]["optimizer"] == "signmom"
        assert len(t.user_attrs["history"]) == 2 and 0.0 <= t.value <= 1.0
    # The workers really trained SignMomentum: each trial and the confirmation built it in a
    # worker process (never in this driver), and the trials learned something.
    built = sorted(p.name for p in Path(signmom.space["marker"].value).iterdir())
    assert built and all(name.startswith("MarkedSignMomentum-") for name in built)
    assert f"MarkedSignMomentum-{os.getpid()}" not in built
    assert max(t.value for t in trials) > 0.3

    # It competed in the confirmation with the baselines, on the same seed, and the winner is
    # at least as good on validation.
    data = rec.to_dict()
    assert data["source"] == "study"
    (entry,) = data["confirmation"].values()
    assert entry["optimizer"] == "signmom" and entry["val"]["values"][0] is not None
    assert entry["test"]["values"][0] is not None
    assert data["value"] >= entry["val"]["mean"]
    if data["optimizer"] == "signmom":
        assert data["optimizer_class"] == f"{__name__}:MarkedSignMomentum"

    parent = tracking.latest_study_run("sqlite:///mlflow.db", "digits", "digits")
    runs = tracking.child_runs("sqlite:///mlflow.db", "digits", parent)
    mine = [r for r in runs if r["tags"].get("autoopt.optimizer") == "signmom"]
    kinds: dict[str, int] = {}
    for r in mine:
        kinds[r["name"].partition("-")[0]] = kinds.get(r["name"].partition("-")[0], 0) + 1
    # Three trials and the confirmation's one seed: a run of its own, or a trial's run on that
    # seed counted as the race's (``reused``); its published defaults may also be a baseline.
    reused = entry.get("reused") or []
    assert kinds.pop("trial") == 3 and kinds.pop("confirm", 0) + len(reused) == 1 and set(kinds) <= {"baseline"}
    assert all(r["status"] == "FINISHED" and "val_accuracy" in r["metrics"] for r in mine)
    assert {r["params"]["optimizer"] for r in mine} == {"signmom"}


MODULE_HEADER = "from __future__ import annotations\n\nimport torch\n\n\n"


@pytest.mark.slow
def test_study_file_optimizer_is_recommended_and_rebuilt_in_a_fresh_process(workdir: Path) -> None:
    (workdir / "myopts.py").write_text(MODULE_HEADER + inspect.getsource(SignMomentum))
    (workdir / "study.yaml").write_text(
        "task: digits\n"
        "optimizers: [signmom]\n"
        "schedulers: [none]\n"
        "grad_clip: false\n"
        "pruner: none\n"
        "custom_optimizers:\n"
        "  signmom:\n"
        "    class: myopts:SignMomentum\n"
        "    space:\n"
        "      lr: {log: [3.0e-3, 3.0e-2]}\n"
        "      beta: {uniform: [0.8, 0.95]}\n")
    res = run_cli("tune", "--study-file", "study.yaml", "--trials", "2", "--epochs", "1", "--no-confirm",
                  cwd=workdir)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads((workdir / "recommendations" / "digits.json").read_text())
    assert data["optimizer"] == "signmom" and data["source"] == "study"
    assert data["optimizer_class"] == "myopts:SignMomentum"
    assert set(data["optimizer_params"]) == {"lr", "beta"}

    # A training script elsewhere (a fresh process that never read the study file) builds it.
    script = (
        "import json, torch\n"
        "from autoopt import recommend\n"
        "rec = recommend('digits')\n"
        "p = torch.tensor([0.3, -0.2, 0.0], requires_grad=True)\n"
        "opt = rec.build_optimizer([p])\n"
        "(0.5 * (p ** 2).sum()).backward(); opt.step()\n"
        "print(json.dumps([type(opt).__name__, p.tolist()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    name, got = json.loads(out.stdout.strip().splitlines()[-1])
    lr = data["optimizer_params"]["lr"]
    assert name == "SignMomentum"
    # First step: m = (1 - beta) * g has the sign of p, so p moves by lr against it.
    assert got == pytest.approx([0.3 - lr, -0.2 + lr, 0.0])
