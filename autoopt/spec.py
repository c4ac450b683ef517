"""StudySpec: a study file (``studies/<task>.yaml``) plus CLI overrides, validated once.

>>> spec = load_spec("digits", trials=4, epochs=2)
>>> spec.trials, spec.epochs, spec.name
(4, 2, 'digits')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autoopt.errors import UsageError

STUDIES_DIR = Path(__file__).parent / "studies"
DEFAULT_STORAGE = "sqlite:///autoopt.db"
DEFAULT_TRACKING = "sqlite:///mlflow.db"


class CustomOptimizer(BaseModel):
    """A user's optimizer class registered from a study file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    class_path: str = Field(alias="class", pattern=r"^[\w.]+:\w+$")
    space: dict[str, Any]
    schedulers: bool = True
    train_eval: bool = False


class Placement(BaseModel):
    """Where and how a study runs: storage, tracking, Ray, resources, folders. Not what it searches.

    ``gpus_per_trial=None`` means "auto": a quarter GPU per trial where Ray sees a GPU, else none.
    """

    model_config = ConfigDict(extra="forbid")

    storage: str = Field(default_factory=lambda: os.environ.get("AUTOOPT_STORAGE") or DEFAULT_STORAGE)
    mlflow_uri: str = Field(default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING)
    ray_address: str | None = Field(default_factory=lambda: os.environ.get("RAY_ADDRESS") or None)
    gpus_per_trial: float | None = Field(None, ge=0.0)
    cpus_per_trial: float = Field(1.0, gt=0.0)
    concurrency: int | None = Field(None, gt=0)
    data_dir: str | None = Field(default_factory=lambda: os.environ.get("AUTOOPT_DATA") or None)
    out: str = "recommendations"
    compile: bool = False

    @field_validator("gpus_per_trial")
    @classmethod
    def _fraction_or_whole(cls, value: float | None) -> float | None:
        if value is not None and value > 1 and value != int(value):
            raise ValueError("more than one GPU per trial must be a whole number")
        return value


PLACEMENT_FIELDS: tuple[str, ...] = tuple(Placement.model_fields)


class StudySpec(BaseModel):
    """Everything one ``autoopt tune`` runs with. Unknown keys are errors (typos are caught)."""

    model_config = ConfigDict(extra="forbid")

    task: str
    trials: int = Field(20, gt=0)
    epochs: int = Field(5, gt=0)
    timeout_s: float | None = Field(None, gt=0)
    optimizers: list[str] = ["classic"]
    schedulers: list[str] = ["none", "step", "cosine", "onecycle", "plateau", "exponential"]
    grad_clip: bool = True
    space: dict[str, dict[str, Any]] = {}
    custom_optimizers: dict[str, CustomOptimizer] = {}
    batch_size: int | None = Field(None, gt=0)
    sampler: Literal["tpe", "random", "cmaes", "gp"] = "tpe"
    pruner: Literal["none", "median", "hyperband"] = "median"
    pruner_warmup: float = Field(0.3, ge=0.0, le=1.0)
    seed: int = 0
    study_name: str | None = None
    confirm: bool = True
    confirm_top: int = Field(3, gt=0)
    confirm_seeds: int = Field(3, gt=0)
    max_slowdown: float | None = Field(None, gt=0)
    placement: Placement = Field(default_factory=lambda: Placement())

    @model_validator(mode="before")
    @classmethod
    def _lift_placement(cls, data: Any) -> Any:
        """Study files and flags set placement keys flat (``storage:``); they live in ``placement``."""
        if not isinstance(data, dict):
            return data
        flat = {k: data[k] for k in PLACEMENT_FIELDS if k in data}
        if not flat:
            return data
        rest = {k: v for k, v in data.items() if k not in flat}
        placement = rest.get("placement") or {}
        placement = placement.model_dump() if isinstance(placement, Placement) else dict(placement)
        rest["placement"] = {**placement, **flat}
        return rest

    @field_validator("optimizers", "schedulers", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _check_names(self) -> StudySpec:
        from autoopt.space import SCHEDULES, family, register_optimizer, resolve_optimizers
        from autoopt.tasks import check_task_name

        check_task_name(self.task)
        for name, custom in self.custom_optimizers.items():
            register_optimizer(name, custom.class_path, self._parse_space(name, custom.space),
                               schedulers=custom.schedulers, train_eval=custom.train_eval)
        self.optimizers = resolve_optimizers(self.optimizers)
        for name in self.optimizers:
            # A missing extra (pip install 'autoopt[modern]') is bad input: say so before anything starts.
            family(name).load_class()
        for name in self.schedulers:
            if name not in SCHEDULES:
                raise UsageError(f"unknown scheduler '{name}'; known: {', '.join(SCHEDULES)}")
        for fam_name, params in self.space.items():
            known = family(fam_name).space
            for param in params:
                if param not in known:
                    raise UsageError(f"space.{fam_name}.{param}: {fam_name} has no parameter {param}; "
                                     f"known: {', '.join(known)}")
        return self

    @staticmethod
    def _parse_space(name: str, raw: dict[str, Any]) -> dict[str, Any]:
        from autoopt.space import parse_dimension

        return {k: parse_dimension(v, f"{name}.{k}") for k, v in raw.items()}

    @property
    def name(self) -> str:
        """The Optuna study name (defaults to the task name)."""
        return self.study_name or self.task

    def search_space(self) -> Any:
        from autoopt.space import SearchSpace

        overrides = {fam: self._parse_space(fam, raw) for fam, raw in self.space.items()}
        return SearchSpace(tuple(self.optimizers), tuple(self.schedulers), self.grad_clip, overrides)


def known_keys() -> list[str]:
    """The keys a study file may set (placement keys are set flat, like ``storage:``)."""
    return [k for k in StudySpec.model_fields if k != "placement"] + list(PLACEMENT_FIELDS)


def builtin_study_file(task: str) -> Path | None:
    path = STUDIES_DIR / f"{task}.yaml"
    return path if path.exists() else None


def read_study_file(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"study file {path} does not exist; check --study-file") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise UsageError(f"study file {path} is not valid YAML{at}; fix the file") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"study file {path} must be a mapping of keys (task, trials, epochs, ...)")
    return raw


def load_spec(task: str | None = None, study_file: str | Path | None = None, **overrides: Any) -> StudySpec:
    """Build the spec: the study file (``--study-file``, else ``studies/<task>.yaml``), then
    the overrides that are not None. Any problem is a one-line ``UsageError``."""
    raw: dict[str, Any] = {}
    source = "options"
    if study_file is not None:
        raw = read_study_file(Path(study_file))
        source = f"study file {study_file}"
    elif task is not None and (path := builtin_study_file(task)) is not None:
        raw = read_study_file(path)
    if task is not None:
        raw["task"] = task
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if "task" not in raw:
        raise UsageError("no task given; pass --task (digits, mnist, cifar10 or module:function)")
    try:
        return StudySpec(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a whole-spec check already wrote a complete message
            raise UsageError(str(err["msg"]).removeprefix("Value error, ")) from None
        loc = err["loc"][1:] if err["loc"][0] == "placement" and len(err["loc"]) > 1 else err["loc"]
        where = ".".join(str(p) for p in loc) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; known keys: {', '.join(known_keys())}"
        flag = f"--{where.replace('_', '-')}" if where in overrides else where
        raise UsageError(f"{source}: {flag}: {msg}") from None
