"""The recommendation: chosen from the study, saved with it and as JSON, loaded by ``recommend()``.

>>> rec = Recommendation.prior("digits")
>>> rec.to_dict()["source"], rec.optimizer
('prior', 'adamw')
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autoopt.errors import UsageError
from autoopt.space import TrialConfig, family, schedule

STUDY_ATTR = "recommendation"
CORE_KEYS = ("task", "optimizer", "optimizer_params", "scheduler", "scheduler_params", "grad_clip_norm",
             "metric", "direction", "value", "study_name", "trial_number", "created_at")

# What autoopt recommends with no study: AdamW with cosine decay and a short warmup, the
# usual strong default for small vision models (Loshchilov & Hutter 2019).
PRIOR = TrialConfig("adamw", {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2},
                    "cosine", {"eta_min_ratio": 0.01, "warmup_ratio": 0.05}, None)


@dataclass
class Recommendation:
    """A recommended optimizer config for one task.

    >>> import torch
    >>> rec = Recommendation.prior("digits")
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = rec.build_optimizer(model)
    >>> sched = rec.build_scheduler(opt, epochs=3, steps_per_epoch=10)
    >>> type(opt).__name__, type(sched).__name__
    ('AdamW', 'SequentialLR')
    """

    task: str
    optimizer: str
    optimizer_params: dict[str, Any]
    scheduler: str = "none"
    scheduler_params: dict[str, Any] = field(default_factory=dict)
    grad_clip_norm: float | None = None
    metric: str = "val_accuracy"
    direction: str = "maximize"
    value: float | None = None
    study_name: str | None = None
    trial_number: int | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> TrialConfig:
        return TrialConfig(self.optimizer, dict(self.optimizer_params), self.scheduler,
                           dict(self.scheduler_params), self.grad_clip_norm)

    def family(self) -> Any:
        """The optimizer's registry entry. A family this process has not registered (a user's
        own class, recommended by a study run elsewhere) is registered from the stored
        ``optimizer_class`` import path."""
        from autoopt.space import FAMILIES, Fixed, register_optimizer

        path = self.extra.get("optimizer_class")
        if self.optimizer in FAMILIES or not isinstance(path, str) or ":" not in path:
            return family(self.optimizer)
        return register_optimizer(self.optimizer, path, {"lr": Fixed(self.optimizer_params.get("lr", 1e-3))},
                                  train_eval=bool(self.extra.get("train_eval_mode", False)))

    def build_optimizer(self, model_or_params: Any) -> Any:
        """The optimizer, built on a module (preferred: parameter splits need it) or on
        ``model.parameters()``. Biases and norm weights get no weight decay."""
        from autoopt.space import build_optimizer

        self.family()
        return build_optimizer(model_or_params, self.optimizer, self.optimizer_params)

    def build_scheduler(self, optimizer: Any, *, epochs: int, steps_per_epoch: int) -> Any:
        """The scheduler, or None. Step it after every ``optimizer.step()``; a ``plateau``
        scheduler instead once per epoch with the validation loss (``scheduler_step`` says)."""
        from autoopt.space import build_scheduler

        name = self.scheduler if self.family().schedulers else "none"
        return build_scheduler(optimizer, name, self.scheduler_params, epochs=epochs,
                               steps_per_epoch=steps_per_epoch)

    def to_dict(self) -> dict[str, Any]:
        fam = self.family() if self.optimizer else None
        cls = fam.optimizer_class if fam else None
        if cls is not None and not isinstance(cls, str):
            cls = f"{cls.__module__}:{cls.__qualname__}"
        out: dict[str, Any] = {
            "task": self.task, "optimizer": self.optimizer, "optimizer_params": self.optimizer_params,
            "scheduler": self.scheduler, "scheduler_params": self.scheduler_params,
            "grad_clip_norm": self.grad_clip_norm, "metric": self.metric, "direction": self.direction,
            "value": self.value, "study_name": self.study_name, "trial_number": self.trial_number,
            "created_at": self.created_at,
            "scheduler_step": "epoch" if schedule(self.scheduler).per_epoch else "batch",
            "train_eval_mode": bool(fam and fam.train_eval),
            # where the class comes from: recommend() in another process rebuilds a user's own family
            "optimizer_class": cls,
        }
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recommendation:
        core = {k: data[k] for k in CORE_KEYS if k in data}
        derived = {"scheduler_step"}  # train_eval_mode stays: family() re-registers a user's class with it
        extra = {k: v for k, v in data.items() if k not in CORE_KEYS and k not in derived}
        return cls(**core, extra=extra)

    @classmethod
    def prior(cls, task: str) -> Recommendation:
        """The documented prior: AdamW (lr 1e-3, weight decay 1e-2) with cosine decay and 5%
        linear warmup, marked ``"source": "prior"``."""
        return cls(task=task, **PRIOR.to_dict(), extra={"source": "prior"})

    def save(self, out_dir: str | Path) -> Path:
        path = Path(out_dir) / f"{self.task}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)  # never a half-written file
        return path


def recommend(task: str, *, storage: str | None = None, study: str | None = None,
              fallback: str | None = None) -> Recommendation:
    """The recommendation stored with the study of ``task``.

    ``storage`` defaults to ``AUTOOPT_STORAGE`` or ``sqlite:///autoopt.db``; ``study`` to the
    task name. With no tuned study this raises ``UsageError`` naming the command to run,
    unless ``fallback="prior"``, which returns ``Recommendation.prior(task)``.

    >>> rec = recommend("digits", storage="sqlite:///no-such.db", fallback="prior")
    >>> rec.to_dict()["source"]
    'prior'
    """
    from autoopt.spec import DEFAULT_STORAGE

    if fallback not in (None, "prior"):
        raise UsageError(f"fallback must be None or 'prior', got {fallback!r}")
    url = storage or os.environ.get("AUTOOPT_STORAGE") or DEFAULT_STORAGE
    data = load_stored(url, study or task)
    if data is not None:
        return Recommendation.from_dict(data)
    if fallback == "prior":
        return Recommendation.prior(task)
    from autoopt.study import mask_url

    raise UsageError(f"no recommendation for task '{task}' in {mask_url(url)}; "
                     f"run: autoopt tune --task {task}  (or pass fallback='prior')")


def load_stored(url: str, study_name: str) -> dict[str, Any] | None:
    """The recommendation dict stored with a study, or None (no database, study or recommendation)."""
    from autoopt.study import load_existing_study, open_storage, sqlite_path

    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None  # don't create an empty database just to look
    study = load_existing_study(open_storage(url, heartbeat=False), study_name)
    if study is None:
        return None
    return study.user_attrs.get(STUDY_ATTR)


def store(study: Any, rec: Recommendation) -> None:
    """Keep the recommendation with the study (what ``recommend()`` reads)."""
    study.set_user_attr(STUDY_ATTR, rec.to_dict())


def python_snippet(data: dict[str, Any]) -> str:
    """Python a user pastes into a training script to use the recommendation."""
    lines = [
        "from autoopt import recommend",
        "",
        f"rec = recommend({data['task']!r})  # {data['optimizer']} {data['optimizer_params']}",
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
