"""The recommendation: chosen from the study, saved with it and as JSON, loaded by ``recommend()``.

>>> rec = Recommendation.prior("digits")
>>> rec.to_dict()["source"], rec.optimizer
('prior', 'adamw')
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from autoopt.base.redact import mask_url
from autoopt.catalog import BUILTIN, DEFAULT_STORAGE
from autoopt.errors import UsageError
from autoopt.evidence import (
    EVIDENCE,
    Alternative,
    Baseline,
    BudgetUse,
    Cost,
    Effort,
    Entry,
    Improvement,
    LeftOnCost,
    RaceSummary,
    Record,
    ZeroShot,
)
from autoopt.space import (
    Family,
    Fixed,
    TrialConfig,
    build_optimizer,
    build_scheduler,
    family,
    make_family,
    schedule,
)
from autoopt.study.aggregates import sqlite_study_attr

if TYPE_CHECKING:
    import optuna
    import torch

    from autoopt.space.families import ModelOrParams

STUDY_ATTR = "recommendation"
FOLDER = "recommendations"  # where tune writes <study>.json; AUTOOPT_RECOMMENDATIONS names another
# The groups of plain JSON keys, each marked on its fields (``metadata``; ``keys_of`` lists them):
# the config and its score, always written; where the answer comes from, written where set
# (``optimizer_class`` and ``train_eval_mode`` are ``family_origin``'s); how a confirmed
# recommendation was chosen, written together, null where unknown.
CORE: Mapping[str, str] = MappingProxyType({"group": "core"})
ORIGIN: Mapping[str, str] = MappingProxyType({"group": "origin"})
CHOICE: Mapping[str, str] = MappingProxyType({"group": "choice"})
# The JSON's layout. 1: the evidence (confirmation, baselines, improvement, cost, ...) is typed and
# ``cheapest_tie`` is gone (``cheapest_equivalent``). A JSON without it is read as version 0.
SCHEMA_VERSION = 1

# What autoopt recommends with no study: AdamW with cosine decay and a short warmup, the
# usual strong default for small vision models (Loshchilov & Hutter 2019).
PRIOR = TrialConfig("adamw", {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2},
                    "cosine", {"eta_min_ratio": 0.01, "warmup_ratio": 0.05}, None)


@dataclass(frozen=True)
class Recommendation:
    """A recommended optimizer config for one task, with the evidence that chose it (typed
    records, ``autoopt.evidence``; empty for a recommendation that was not confirmed).

    >>> import torch
    >>> rec = Recommendation.prior("digits")
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = rec.build_optimizer(model)
    >>> sched = rec.build_scheduler(opt, epochs=3, steps_per_epoch=10)
    >>> type(opt).__name__, type(sched).__name__
    ('AdamW', 'SequentialLR')
    """

    task: str = field(metadata=CORE)
    optimizer: str = field(metadata=CORE)
    optimizer_params: dict[str, Any] = field(metadata=CORE)
    scheduler: str = field(default="none", metadata=CORE)
    scheduler_params: dict[str, Any] = field(default_factory=dict, metadata=CORE)
    grad_clip_norm: float | None = field(default=None, metadata=CORE)
    metric: str = field(default="val_accuracy", metadata=CORE)
    direction: str = field(default="maximize", metadata=CORE)
    value: float | None = field(default=None, metadata=CORE)
    study_name: str | None = field(default=None, metadata=CORE)
    trial_number: int | None = field(default=None, metadata=CORE)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            metadata=CORE)
    # study, prior or database (a zero-shot answer: ``zero_shot`` says which)
    source: str | None = field(default=None, metadata=ORIGIN)
    search_note: str | None = field(default=None, metadata=ORIGIN)  # why the search's pick is not a complete trial
    optimizer_class: str | None = None  # a user family's import path, for recommend() in another process
    train_eval_mode: bool = False  # the family's protocol, for a family this process does not know
    chosen: str | None = field(default=None, metadata=CHOICE)  # the confirmed config: a tuned trial or a baseline
    chosen_kind: str | None = field(default=None, metadata=CHOICE)  # tuned or baseline
    search_value: float | None = field(default=None, metadata=CHOICE)  # the search's best before the confirmation
    search_trial_number: int | None = field(default=None, metadata=CHOICE)
    cheapest_equivalent_reason: str | None = field(default=None, metadata=CHOICE)  # why no cheaper config is named
    equivalence_margin: float | None = field(default=None, metadata=CHOICE)
    cheaper_factor: float | None = field(default=None, metadata=CHOICE)
    max_slowdown: float | None = field(default=None, metadata=CHOICE)
    held_out: float | None = None  # the pick's mean on the test split (JSON: ``held_out_key``)
    effort: Effort | None = None
    left_on_cost: tuple[LeftOnCost, ...] | None = None  # None: not measured (a budget, no pruner)
    zero_shot: ZeroShot | None = None  # JSON: ``prior``
    extra: dict[str, Any] = field(default_factory=dict)  # keys a later release wrote, kept as they came
    confirmation: dict[str, Entry] = field(default_factory=dict)
    baselines: tuple[Baseline, ...] = ()
    improvement: Improvement | None = None
    cost: Cost | None = None
    cheapest_equivalent: Alternative | None = None
    race: RaceSummary | None = None
    budget: BudgetUse | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        """Accept the evidence as records or as their JSON dicts."""
        def setf(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        setf("confirmation", {k: Entry.model_validate(v) for k, v in (self.confirmation or {}).items()})
        setf("baselines", tuple(Baseline.model_validate(b.to_dict() if isinstance(b, Entry) else b)
                                for b in self.baselines or ()))
        records: dict[str, type[Record]] = {**EVIDENCE, "zero_shot": ZeroShot}
        for key, record in records.items():
            value = getattr(self, key)
            if value is not None and not isinstance(value, record):
                setf(key, record.model_validate(value))
        if self.left_on_cost is not None:
            setf("left_on_cost", tuple(LeftOnCost.model_validate(x) for x in self.left_on_cost))

    @property
    def held_out_key(self) -> str:
        """The JSON key of ``held_out``: the improvement's metric (``test_accuracy``; validation's
        where the task has no test split), else ``test_<score>``."""
        return held_out_key(self.improvement.metric if self.improvement else None, self.metric)

    @property
    def config(self) -> TrialConfig:
        return TrialConfig(self.optimizer, dict(self.optimizer_params), self.scheduler,
                           dict(self.scheduler_params), self.grad_clip_norm)

    def known_family(self) -> Family | None:
        """The optimizer's registry entry, or None when this process has not registered it (a
        user's own class, recommended by a study run elsewhere). Registers nothing."""
        try:
            return family(self.optimizer)
        except UsageError:
            return None

    def family(self) -> Family:
        """The optimizer's family: the registered one, else one built (not registered) from the
        stored ``optimizer_class`` import path of a user's family."""
        fam = self.known_family()
        path = self.optimizer_class
        if fam is not None or not isinstance(path, str) or ":" not in path:
            return fam or family(self.optimizer)
        return make_family(self.optimizer, path, {"lr": Fixed(self.optimizer_params.get("lr", 1e-3))},
                           train_eval=self.train_eval_mode)

    def build_optimizer(self, model_or_params: ModelOrParams) -> torch.optim.Optimizer:
        """The optimizer, built on a module (preferred: parameter splits need it) or on
        ``model.parameters()``. Biases and norm weights get no weight decay."""
        return build_optimizer(model_or_params, self.family(), self.optimizer_params)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int) -> Any:
        """The scheduler, or None. Step it after every ``optimizer.step()``; a ``plateau``
        scheduler instead once per epoch with the validation loss (``scheduler_step`` says)."""
        name = self.scheduler if self.family().schedulers else "none"
        return build_scheduler(optimizer, name, self.scheduler_params, epochs=epochs,
                               steps_per_epoch=steps_per_epoch)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what ``save`` writes and ``load`` reads). Registers nothing: a family this
        process does not know keeps the ``optimizer_class`` and ``train_eval_mode`` it came with."""
        fam = self.known_family() if self.optimizer else None
        origin = family_origin(fam) if fam else {"optimizer_class": self.optimizer_class,
                                                   "train_eval_mode": self.train_eval_mode}
        out: dict[str, Any] = {
            **{k: getattr(self, k) for k in keys_of(CORE)},
            "scheduler_step": "epoch" if schedule(self.scheduler).per_epoch else "batch",
            # where the class comes from: recommend() in another process rebuilds a user's own family
            **origin,
        }
        out.update({k: v for k, v in self.extra.items() if k not in out})
        out.update({k: v for k in keys_of(ORIGIN) if (v := getattr(self, k)) is not None})
        if self.chosen is not None:
            out.update({k: getattr(self, k) for k in keys_of(CHOICE)})
            out[self.held_out_key] = self.held_out
        if self.left_on_cost is not None:
            out["left_on_cost"] = [x.to_dict() for x in self.left_on_cost]
        if self.zero_shot is not None:
            out["prior"] = self.zero_shot.to_dict()
        if self.confirmation or self.baselines:  # confirmed (with no tuned config, possibly)
            out["confirmation"] = {k: e.to_dict() for k, e in self.confirmation.items()}
            out["baselines"] = [b.to_dict() for b in self.baselines]
            out["cheapest_equivalent"] = None  # none shown equivalent: null, with the reason
        for key in EVIDENCE:
            value = getattr(self, key)
            if value is not None:
                out[key] = value.to_dict()
        out["schema_version"] = SCHEMA_VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recommendation:
        """Read any version of the JSON: one without ``schema_version`` (0) loads as well, and one
        of a later version keeps the keys this release does not know."""
        version = data.get("schema_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise UsageError(f"not a recommendation JSON: schema_version {version!r} is not an integer")
        plain = (*keys_of(CORE), *keys_of(ORIGIN), "optimizer_class", *keys_of(CHOICE))
        evidence = ("confirmation", "baselines", "left_on_cost", *EVIDENCE)
        typed: dict[str, Any] = {k: data[k] for k in (*plain, *evidence) if data.get(k) is not None}
        typed["train_eval_mode"] = bool(data.get("train_eval_mode", False))
        if isinstance(data.get("prior"), dict):
            typed["zero_shot"] = data["prior"]
        improvement = data.get("improvement")
        held = held_out_key(improvement.get("metric") if isinstance(improvement, dict) else None,
                            str(data.get("metric") or "val_accuracy"))
        if isinstance(data.get(held), int | float) and held not in plain:
            typed["held_out"] = float(data[held])
        known = {*plain, *evidence, "train_eval_mode", "prior", "scheduler_step", "schema_version", held}
        return cls(**typed, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def prior(cls, task: str) -> Recommendation:
        """The documented prior: AdamW (lr 1e-3, weight decay 1e-2) with cosine decay and 5%
        linear warmup, marked ``"source": "prior"``."""
        return cls(task=task, **PRIOR.to_dict(), source="prior")

    @classmethod
    def load(cls, path: str | Path) -> Recommendation:
        """A recommendation saved as JSON (by ``save`` or ``autoopt tune``); a missing or unreadable
        file is a ``UsageError`` naming it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"{path}: no such recommendation file; run: autoopt tune --task TASK") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: not a recommendation JSON ({exc}); write it again with autoopt tune"
                             ) from None
        if not isinstance(data, dict) or not {"task", "optimizer", "optimizer_params"} <= set(data):
            raise UsageError(f"{path}: not a recommendation JSON (no task/optimizer/optimizer_params)")
        return cls.from_dict(data)

    def save(self, out: str | Path) -> Path:
        """Write the JSON to ``out`` when it names a ``.json`` file, else to
        ``<out>/<study_name>.json`` (the task's name when there is no study), atomically: a reader
        sees the old file or the new one, never half of one, and saves running at once each write
        their own temporary file."""
        out = Path(out)
        if out.suffix == ".json":
            folder, path = out.parent, out
        else:
            folder = out
            path = folder / f"{(self.study_name or self.task).replace(':', '_')}.json"
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def keys_of(group: Mapping[str, str]) -> tuple[str, ...]:
    """The fields of ``group`` (``CORE``, ``ORIGIN`` or ``CHOICE``) in the order they are declared:
    the plain JSON keys written and read together, so that a field is named in one place.

    >>> keys_of(ORIGIN)
    ('source', 'search_note')
    """
    return tuple(f.name for f in fields(Recommendation) if f.metadata == group)


def held_out_key(improvement_metric: str | None, metric: str) -> str:
    """The JSON key of a recommendation's held-out score: its improvement's metric, else
    ``test_<score>`` of its validation metric."""
    return improvement_metric or f"test_{metric.removeprefix('val_')}"


def family_origin(fam: Family | None) -> dict[str, Any]:
    """Where a family's class comes from (``optimizer_class``, ``train_eval_mode``): what the JSON
    of a recommendation needs to rebuild a family that is not registered (the fields of the same
    names). Empty for None."""
    if fam is None:
        return {}
    cls = fam.optimizer_class
    path = cls if isinstance(cls, str) else f"{cls.__module__}:{cls.__qualname__}"
    return {"optimizer_class": path, "train_eval_mode": bool(fam.train_eval)}


def recommend(task: str, *, storage: str | None = None, study: str | None = None,
              fallback: str | None = None) -> Recommendation:
    """The recommendation for ``task``: the one stored with its study, else the JSON that
    ``autoopt tune`` wrote (``recommendations/<study>.json``, or the folder
    ``AUTOOPT_RECOMMENDATIONS`` names), so a pipeline that ships the JSON alone works.

    ``storage`` defaults to ``AUTOOPT_STORAGE`` or ``sqlite:///autoopt.db``; ``study`` to the
    task name. With neither this raises ``UsageError`` naming the command to run, unless
    ``fallback="prior"``, which returns ``Recommendation.prior(task)``, or ``fallback="database"``,
    which returns the zero-shot answer of the storage's earlier studies (``autoopt.screen.prior``:
    ``"source": "database"``, ``"prior": {studies, ...}``) where it holds one. Looking creates nothing.

    >>> rec = recommend("digits", storage="sqlite:///no-such.db", fallback="prior")
    >>> rec.to_dict()["source"]
    'prior'
    """
    if not isinstance(task, str) or not task:
        raise UsageError(f"recommend(task): task must be a task name such as 'digits', got {task!r}")
    if study is not None and (not isinstance(study, str) or not study):
        raise UsageError(f"recommend(study=...): a study name such as 'digits', got {study!r}")
    if fallback not in (None, "prior", "database"):
        raise UsageError(f"fallback must be None, 'prior' or 'database', got {fallback!r}")
    url = storage or os.environ.get("AUTOOPT_STORAGE") or DEFAULT_STORAGE
    name = study or task
    data = load_stored(url, name)
    if data is not None:
        return Recommendation.from_dict(data)
    shipped = shipped_path(name)
    if shipped.is_file():
        return Recommendation.load(shipped)
    if fallback == "prior":
        return Recommendation.prior(task)
    if fallback == "database":
        from autoopt.screen.prior import zero_shot

        zero = zero_shot(url, task, exclude=name)
        if zero is not None:
            return Recommendation.from_dict(zero)
    hint = (f"run: autoopt tune --task {task}" + (f" --study {study}" if study else "")
            if task in BUILTIN or ":" in task else
            f"'{task}' is not a task autoopt knows (built-in: {', '.join(sorted(BUILTIN))}, or module:function)")
    raise UsageError(f"no recommendation for '{name}' in {mask_url(url)} nor in {shipped}; {hint} "
                     "(or pass fallback='prior')")


def shipped_path(study_name: str) -> Path:
    """Where ``autoopt tune`` writes the JSON of ``study_name`` by default."""
    folder = os.environ.get("AUTOOPT_RECOMMENDATIONS") or FOLDER
    return Path(folder) / f"{study_name.replace(':', '_')}.json"


def load_stored(url: str, study_name: str) -> dict[str, Any] | None:
    """The recommendation dict stored with a study, or None (no database, study or recommendation).

    A plain SQLite file is read with the standard library (``recommend`` answers at once);
    any other storage, or a file that cannot be read that way, through Optuna."""
    path = _plain_sqlite_path(url)
    if path is not None:
        if not path.exists():
            return None  # don't create an empty database just to look
        read, data = sqlite_study_attr(path, study_name, STUDY_ATTR)
        if read:
            return data
    from autoopt.study import load_existing_study, open_storage, sqlite_path

    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None  # don't create an empty database just to look
    study = load_existing_study(open_storage(url, heartbeat=False), study_name)
    if study is None:
        return None
    return study.user_attrs.get(STUDY_ATTR)


# A plain SQLite URL, ``sqlite:///path`` with no query, no driver and nothing to unquote: the
# path is the file, as SQLAlchemy reads it. Anything else is parsed by SQLAlchemy.
_PLAIN_SQLITE = re.compile(r"sqlite:///(?P<path>[^?#%]+)")


def _plain_sqlite_path(url: str) -> Path | None:
    """The file of a plain SQLite URL, or None (another URL: SQLAlchemy parses it)."""
    match = _PLAIN_SQLITE.fullmatch(url)
    path = match["path"] if match else ""
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path).expanduser()


def store(study: optuna.Study, rec: Recommendation) -> None:
    """Keep the recommendation with the study (what ``recommend()`` reads)."""
    study.set_user_attr(STUDY_ATTR, rec.to_dict())


def _fallback_arg(data: dict[str, Any]) -> str:
    """``, fallback='database'`` for a zero-shot answer (``'prior'`` for the documented prior), else nothing."""
    source = data.get("source")
    return f", fallback={source!r}" if source in ("prior", "database") else ""


def python_snippet(data: dict[str, Any]) -> str:
    """Python a user pastes into a training script to use the recommendation."""
    lines = [
        "from autoopt import recommend",
        "",
        f"rec = recommend({data['task']!r}{_fallback_arg(data)})  # {data['optimizer']} {data['optimizer_params']}",
        "optimizer = rec.build_optimizer(model)",
        "scheduler = rec.build_scheduler(optimizer, epochs=EPOCHS, steps_per_epoch=len(train_loader))",
    ]
    if data.get("scheduler_step") == "epoch":
        lines.append("# step the scheduler once per epoch: scheduler.step(val_loss)")
    elif data.get("scheduler") != "none":
        lines.append("# step the scheduler after every optimizer.step()")
    if data.get("grad_clip_norm"):
        lines.append(f"# before optimizer.step(): torch.nn.utils.clip_grad_norm_(model.parameters(), "
                     f"{data['grad_clip_norm']:.4g})")
    if data.get("train_eval_mode"):
        lines.append("# call optimizer.train() before training and optimizer.eval() before evaluating")
    return "\n".join(lines)
