"""What the lowest versions pyproject.toml allows need: the pins that CI installs for them
(.ci/lowest-constraints.txt) are pyproject's lower bounds, and the sampler works whether Optuna
infers a trial's relative search space when the trial is asked (Optuna before 4.6) or at its
first suggest (since)."""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import Trial
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from autoopt.dispatch import JobResult, JobState, SearchLoop
from autoopt.spec import load_spec
from autoopt.study import GroupTPESampler, open_storage, open_study

ROOT = Path(__file__).resolve().parent.parent


def test_the_lowest_pins_are_the_lower_bounds_of_pyproject() -> None:
    text = (ROOT / ".ci" / "lowest-constraints.txt").read_text()
    pins = {canonicalize_name(n): Version(v) for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lower = {}
    for req in map(Requirement, deps):
        bounds = [Version(s.version) for s in req.specifier if s.operator == ">="]
        if bounds:
            lower[canonicalize_name(req.name)] = bounds[0]
    assert {"optuna", "mlflow", "ray", "sqlalchemy", "pydantic", "typer", "pytorch-optimizer"} <= set(pins)
    assert "torch" not in pins  # CI installs this machine's torch
    assert {name: pin for name, pin in pins.items() if lower.get(name) != pin} == {}


@pytest.fixture(params=["as installed", "at ask time"])
def inference(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How Optuna infers a trial's relative search space: as the installed Optuna does, or as
    Optuna before 4.6 did: when the trial is asked, by the study's sampler at that moment, while
    ``sample_relative`` runs at the first suggest, by the study's sampler at that moment."""
    if request.param == "at ask time":
        init = Trial.__init__

        def eager_init(self: Trial, study: optuna.Study, trial_id: int) -> None:
            init(self, study, trial_id)
            self.relative_search_space = study.sampler.infer_relative_search_space(
                study, self._cached_frozen_trial)

        def relative_params(self: Trial) -> dict[str, Any]:
            if self._relative_params is None:
                self._relative_params = self.study.sampler.sample_relative(
                    self.study, self._cached_frozen_trial, self.relative_search_space)
            return self._relative_params

        monkeypatch.setattr(Trial, "__init__", eager_init)
        monkeypatch.setattr(Trial, "relative_params", property(relative_params))
    return request.param


def score(config: Any) -> float:
    """A made-up score: adam with an lr near 1e-3 is best."""
    lr = config.optimizer_params.get("lr", 1.0)
    return (config.optimizer == "adam") + 1.0 / (1.0 + abs(math.log10(lr) + 3))


def drive(loops: list[SearchLoop]) -> Iterator[dict[str, Any]]:
    """The drivers take turns: ask and prepare a trial for their worker 0, tell its score; until
    none may ask."""
    while True:
        asked = False
        for loop in loops:
            pending = loop.next(0)
            if pending is None:
                continue
            asked = True
            config = pending.job.config
            history = [{"epoch": 1, "val_accuracy": score(config), "epoch_s": 0.01}]
            loop.book.start(pending.trial.number)  # as if sent to worker 0
            assert loop.book.tell(pending.trial.number, JobResult(JobState.COMPLETE, score(config), history))
            yield {"number": pending.trial.number, **config.to_dict()}
        if not asked:
            return


def driver(path: Path, trials: int) -> SearchLoop:
    """A driver of study ``s`` in ``path`` with --seed 7 (it asks, prepares and tells; no pool:
    no trial is submitted)."""
    url = f"sqlite:///{path}"
    spec = load_spec("digits", trials=trials, epochs=1, optimizers="classic", pruner="none", seed=7, storage=url)
    study = open_study(open_storage(url, heartbeat=False), "s", direction="maximize")
    return SearchLoop(study, spec=spec, storage_url=url, tracking=None, pool=None)  # type: ignore[arg-type]


def search(path: Path, *, drivers: int, trials: int) -> list[dict[str, Any]]:
    return list(drive([driver(path, trials) for _ in range(drivers)]))


def test_each_trial_is_sampled_by_the_sampler_that_inferred_its_space(inference: str, tmp_path: Path) -> None:
    # Two drivers with the same --seed, past TPE's ten startup trials. A sampler replaced between
    # ask and the first suggest (one inferred the space, another sampled it) raised KeyError at
    # the second trial.
    two = search(tmp_path / "two.db", drivers=2, trials=12)
    assert len(two) == 12
    configs = [{k: v for k, v in c.items() if k != "number"} for c in two]
    assert all(a != b for i, a in enumerate(configs) for b in configs[i + 1:])  # no proposal twice
    # One driver is reproducible: the same steps on a new study propose the same configs.
    assert search(tmp_path / "one.db", drivers=1, trials=12) == search(tmp_path / "again.db", drivers=1, trials=12)
    # A resumed study: the driver's first trial is asked under the sampler the study opened with.
    assert [t["number"] for t in drive([driver(tmp_path / "two.db", trials=14)])] == [12, 13]


def test_a_group_tpe_sampler_samples_a_space_that_another_one_inferred() -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        family = trial.suggest_categorical("optimizer", ["sgd", "adam"])
        lr = trial.suggest_float(f"{family}_lr", 1e-5, 1.0, log=True)
        momentum = trial.suggest_float("sgd_momentum", 0.0, 0.99) if family == "sgd" else 0.0
        study.tell(trial, (family == "adam") - abs(math.log10(lr) + 3) + momentum)
    study.ask()
    running = study.trials[-1]
    inferring = GroupTPESampler(seed=3, n_startup_trials=5)
    space = inferring.infer_relative_search_space(study, running)
    assert {"optimizer", "sgd_lr", "adam_lr", "sgd_momentum"} <= set(space)
    # Another sampler (the study's sampler was replaced between ask and the first suggest) samples
    # it; with the same seed it proposes what the inferring one would.
    sampled = dict(GroupTPESampler(seed=3, n_startup_trials=5).sample_relative(study, running, space))
    assert sampled == dict(inferring.sample_relative(study, running, space))
    assert set(sampled) == set(space)
