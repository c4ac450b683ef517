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
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from autoopt.budget import check_budget, parse_duration
from autoopt.catalog import DEFAULT_STORAGE
from autoopt.errors import UsageError
from autoopt.space import (
    PRUNERS,
    REGISTRY,
    SAMPLERS,
    SCHEDULES,
    Dimension,
    Family,
    SearchSpace,
    family,
    make_family,
    parse_dimension,
    resolve_optimizers,
)
from autoopt.tasks import check_task_name

STUDIES_DIR = Path(__file__).parent / "studies"
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
    time_budget: float | None = None  # seconds, launch to exit (``90s``, ``20m``, ``2h`` in a file or flag)
    optimizers: list[str] = ["all"]
    schedulers: list[str] = Field(default_factory=lambda: list(SCHEDULES))  # every one the space knows
    grad_clip: bool = True
    space: dict[str, dict[str, Any]] = {}
    custom_optimizers: dict[str, CustomOptimizer] = {}
    batch_size: int | None = Field(None, gt=0)
    sampler: Literal[SAMPLERS] = SAMPLERS[0]  # type: ignore[valid-type]
    pruner: Literal[PRUNERS] = PRUNERS[0]  # type: ignore[valid-type]
    pruner_warmup: float = Field(0.3, ge=0.0, le=1.0)
    seed: int = 0
    study_name: str | None = None
    confirm: bool = True
    confirm_top: int = Field(3, gt=0)
    confirm_seeds: int = Field(3, gt=0)
    max_slowdown: float | None = Field(None, gt=0)
    # The storage's earlier studies order the screen and warm-start the search (autoopt.screen.prior):
    # ``auto``, ``none`` or study names separated by commas (a list in a study file).
    prior: str = "auto"
    quick: bool = False  # screen the prior's first families and its warm starts, confirm, no search
    # Where --trials was not given, ``trials`` counts the search's own and the screen comes on top:
    # 0 until the study is opened, then how many of ``trials`` are the screen's. None: --trials given.
    screen_on_top: int | None = None
    placement: Placement = Field(default_factory=lambda: Placement())
    _space: SearchSpace = PrivateAttr()

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

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else check_budget(parse_duration(value))

    @field_validator("prior", mode="before")
    @classmethod
    def _prior(cls, value: Any) -> Any:
        if value is None:
            return "auto"
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        if not isinstance(value, str):
            raise ValueError("give auto, none, or the names of earlier studies separated by commas")
        names = [v.strip() for v in value.split(",") if v.strip()]
        if not names:
            raise ValueError("give auto, none, or the names of earlier studies separated by commas")
        if len(names) > 1 and {"auto", "none"} & set(names):
            raise ValueError("auto and none stand alone; or name earlier studies separated by commas")
        return ",".join(names)

    @field_validator("optimizers", "schedulers", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _resolve(self) -> StudySpec:
        """Check every name, range and class, and resolve the immutable search space. Registers
        nothing: a study file's own classes live in this spec's space only."""
        check_task_name(self.task)
        custom = {}
        for name, entry in self.custom_optimizers.items():
            if name in REGISTRY:
                raise UsageError(f"custom_optimizers.{name}: '{name}' is a built-in optimizer; give yours "
                                 "another name")
            dims = _parse_space(f"custom_optimizers.{name}.space", entry.space)
            custom[name] = make_family(name, entry.class_path, dims, schedulers=entry.schedulers,
                                       train_eval=entry.train_eval)
        self.optimizers = resolve_optimizers(self.optimizers, custom)
        overrides = {}
        for fam_name, raw in self.space.items():
            known = custom[fam_name] if fam_name in custom else family(fam_name)
            for param in raw:
                if param not in known.space:
                    raise UsageError(f"space.{fam_name}.{param}: {fam_name} has no parameter {param}; "
                                     f"known: {', '.join(known.space)}")
            overrides[fam_name] = _parse_space(f"space.{fam_name}", raw)
        space = SearchSpace(tuple(self.optimizers), tuple(self.schedulers), self.grad_clip, overrides, custom)
        for fam in space.families.values():
            if fam.name not in custom:
                fam.load_class()  # a missing package: bad input, now
        for name, fam in custom.items():
            try:
                fam.load_class()  # a class that cannot be imported or is no Optimizer: bad input, now
            except UsageError as exc:
                raise UsageError(f"custom_optimizers.{name}.class: {exc}") from None
        self._space = space
        return self

    @property
    def name(self) -> str:
        """The Optuna study name (defaults to the task name)."""
        return self.study_name or self.task

    def search_space(self) -> SearchSpace:
        """The resolved, immutable search space: its ``Family`` objects, overrides applied."""
        return self._space

    def family(self, name: str) -> Family:
        """This study's family ``name`` (a study file's own class included): what a job carries."""
        return self._space.family(name)


def _parse_space(where: str, raw: Any) -> dict[str, Dimension]:
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: give a mapping of parameter: range, e.g. lr: {{log: [1.0e-4, 1.0e-1]}}")
    return {str(k): parse_dimension(v, f"{where}.{k}") for k, v in raw.items()}


def known_keys() -> list[str]:
    """The keys a study file may set (placement keys are set flat, like ``storage:``)."""
    return [k for k in StudySpec.model_fields if k != "placement"] + list(PLACEMENT_FIELDS)


def builtin_study_file(task: str) -> Path | None:
    path = STUDIES_DIR / f"{task}.yaml"
    return path if path.exists() else None


def read_study_file(path: Path) -> dict[str, Any]:
    """A study file's keys; a missing, unreadable or malformed file is a one-line ``UsageError``."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"study file {path} does not exist; check --study-file") from None
    except IsADirectoryError:
        raise UsageError(f"study file {path} is a folder; give the path of a .yaml file") from None
    except UnicodeDecodeError:
        raise UsageError(f"study file {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except OSError as exc:
        raise UsageError(f"study file {path} cannot be read ({exc.strerror}); check its permissions") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise UsageError(f"study file {path} is not valid YAML{at}; fix the file") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"study file {path} must be a mapping of keys (task, trials, epochs, ...)")
    return {str(k): v for k, v in raw.items()}


# Spec keys whose command-line flag has another name.
FLAGS = {"timeout_s": "--timeout", "study_name": "--study", "out": "--out", "compile": "--compile/--no-compile",
         "confirm": "--confirm/--no-confirm"}


def flag_of(key: str) -> str:
    """The command-line flag that sets spec key ``key`` (``timeout_s`` -> ``--timeout``)."""
    return FLAGS.get(key, f"--{key.replace('_', '-')}")


# Under a time budget without an explicit --trials, the search takes what the budget leaves: it
# stops when its share is spent, at most this many trials.
BUDGET_TRIALS = 1000


def load_spec(task: str | None = None, study_file: str | Path | None = None, **overrides: Any) -> StudySpec:
    """Build the spec: the study file (``--study-file``, else ``studies/<task>.yaml``), then
    the overrides that are not None. Without ``trials`` among them, the trials are the search's own
    and the screen comes on top (``screen_on_top``), or, under a time budget, the budget bounds the
    search (``BUDGET_TRIALS``). Any problem is a one-line ``UsageError`` naming the flag
    or the study file's key that caused it. Checks the space, the classes and the task's
    module; ``autoopt.commands.tuning.preflight`` then loads the task itself."""
    raw: dict[str, Any] = {}
    path: Path | None = None
    if study_file is not None:
        path = Path(study_file)
    elif task is not None:
        path = builtin_study_file(task)
    if path is not None:
        raw = read_study_file(path)
    given = {k: v for k, v in overrides.items() if v is not None}
    if task is not None:
        raw["task"] = task
    raw.update(given)
    if "trials" not in given:
        if raw.get("time_budget") is not None:
            raw["trials"] = BUDGET_TRIALS  # the budget bounds the search; an explicit --trials still caps it
        else:
            raw["screen_on_top"] = 0  # the study file's (or the default) trials are the search's own
    if "task" not in raw:
        raise UsageError("no task given; pass --task (digits, mnist, cifar10 or module:function)")
    file_part = f"study file {path}" if path is not None else "options"
    try:
        return StudySpec(**raw)
    except ValidationError as exc:
        raise UsageError(_explain(exc, given, file_part)) from None
    except UsageError as exc:
        raise UsageError(f"{file_part}: {exc}" if path is not None else str(exc)) from None


def _explain(exc: ValidationError, given: dict[str, Any], file_part: str) -> str:
    err = exc.errors()[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    loc = list(err["loc"])
    if loc[:1] == ["placement"] and len(loc) > 1:
        loc = loc[1:]
    if not loc:  # a whole-spec check already wrote a complete message
        return msg if file_part == "options" else f"{file_part}: {msg}"
    key = str(loc[0])
    where = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        msg = f"unknown key; known keys: {', '.join(known_keys())}"
    if "input" in err and err["type"] != "extra_forbidden" and len(loc) == 1:
        msg = f"{msg} (got {err['input']!r})"
    if key in given:
        return f"{flag_of(key)}: {msg}"
    return f"{file_part}: {where}: {msg}"
