"""One trial in the user's own loop: ``Run``, the handle a ``@autoopt.trainable`` function gets,
and ``run_loop``, which calls the function and returns what it reported as a ``TrialResult``.

The user's loop owns its model, data, loss, metric and precision; ``Run`` hands it the trial's
optimizer (family, settings, parameter-group rules), schedule and clipping, and takes its
reports. Like ``train`` (autoopt's own loop), it imports no Optuna, Ray or MLflow: the trial,
the worker and the MLflow run observe it through ``on_epoch(epoch, metrics) -> stop``. When
that says stop (the pruner, the screen's rung, the time budget) ``Run.report`` ends the trial
there, by raising ``TrialEnded`` through the user's loop; the user writes no handling for it.

>>> from autoopt.space import TrialConfig
>>> from autoopt.tasks.loop import UserLoop
>>> from autoopt.mark import Trainable
>>> def fit(run):
...     for epoch in range(run.epochs):
...         run.report(val_mae=1.0 / (epoch + 1), note=3.0)
>>> loop = UserLoop("m:fit", fit, Trainable("val_mae", "minimize"))
>>> result = run_loop(loop, TrialConfig("adam", {"lr": 1e-3}), epochs=2, seed=0)
>>> result.status, [h["val_mae"] for h in result.history]
(<Ending.COMPLETE: 'complete'>, [1.0, 0.5])
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from autoopt.space import Family, TrialConfig, build_optimizer, build_scheduler, schedule
from autoopt.space import family as registered
from autoopt.tasks.loop import UserLoop
from autoopt.training.train import Ending, OnEpoch, TrialResult, release_memory


class TrialEnded(BaseException):
    """Raised by ``Run.report`` to end the user's loop where it reported: pruned, diverged, or a
    report without the declared metric (``status`` None: the trial fails with ``LoopError``). A
    ``BaseException``, so that a loop's own ``except Exception`` does not swallow it."""

    def __init__(self, status: Ending | None, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class LoopError(RuntimeError):
    """The user's loop broke the contract (it reported nothing, or not the declared metric):
    the trial fails with this reason."""


class _EpochCadence:
    """A per-epoch schedule (plateau) behind the per-step ``step()`` the loop calls: the calls
    are no-ops, and ``Run.report`` steps it once per epoch with the declared metric."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Once per optimizer step in the user's loop: the schedule moves at the epoch's report."""

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.scheduler.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return dict(self.scheduler.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class Run:
    """The trial, as the user's loop sees it: ``seed`` (generators already seeded with it),
    ``epochs``, ``device`` (the worker's GPU or the CPU), ``config`` (the trial's
    ``TrialConfig``), ``number`` (the Optuna trial's, or None for a confirmation run), and
    ``testing`` (whether a test score is wanted: ``report_test`` is recorded only then)."""

    def __init__(self, loop: UserLoop, config: TrialConfig, *, epochs: int, seed: int, device: torch.device,
                 family: Family, on_epoch: OnEpoch | None, testing: bool, number: int | None = None) -> None:
        self.config, self.epochs, self.seed, self.device, self.number = config, epochs, seed, device, number
        self.testing = testing
        self.history: list[dict[str, float]] = []
        self.test: dict[str, float] = {}
        self._loop, self._family, self._on_epoch = loop, family, on_epoch
        self._optimizers: list[torch.optim.Optimizer] = []
        self._plateaus: list[_EpochCadence] = []
        self._mark = time.perf_counter()

    def optimizer(self, model: torch.nn.Module | Iterable[Any]) -> torch.optim.Optimizer:
        """The trial's optimizer on ``model`` (a module: its family's parameter-group rules, such
        as no weight decay on norms and biases, and Muon's split, apply) or on parameters."""
        opt = build_optimizer(model, self._family, self.config.optimizer_params)
        if self._family.train_eval:
            opt.train()  # type: ignore[attr-defined]  # Schedule-Free: training mode until evaluating()
        self._optimizers.append(opt)
        return opt

    def scheduler(self, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int) -> Any:
        """The trial's schedule on ``optimizer``, or None without one. Step it once per optimizer
        step; a per-epoch schedule (plateau) takes those steps as no-ops and moves once per
        epoch, at the report, on the declared metric."""
        sched = schedule(self.config.scheduler if self._family.schedulers else "none")
        built = build_scheduler(optimizer, sched.name, self.config.scheduler_params, epochs=self.epochs,
                                steps_per_epoch=max(1, int(steps_per_epoch)))
        if built is None or not sched.per_epoch:
            return built
        if self._loop.direction == "maximize":  # plateau on a score that improves upwards
            from torch.optim.lr_scheduler import ReduceLROnPlateau

            built = ReduceLROnPlateau(optimizer, mode="max", factor=built.factor, patience=built.patience)
        cadence = _EpochCadence(built)
        self._plateaus.append(cadence)
        return cadence

    def clip(self, model: torch.nn.Module | Iterable[torch.Tensor]) -> None:
        """Clip the gradients' norm to the trial's ``grad_clip_norm`` (nothing without one): call
        it between ``backward()`` and ``step()``."""
        if self.config.grad_clip_norm:
            params = model.parameters() if isinstance(model, torch.nn.Module) else model
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip_norm)

    @contextlib.contextmanager
    def evaluating(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Iterator[None]:
        """Evaluate inside: ``model`` in eval mode, no gradients, and a Schedule-Free optimizer
        at its averaged weights; both back in training mode after."""
        modes = optimizer if optimizer is not None and self._family.train_eval else None
        training = model.training
        model.eval()
        if modes is not None:
            modes.eval()  # type: ignore[attr-defined]
        try:
            with torch.no_grad():
                yield
        finally:
            if modes is not None:
                modes.train()  # type: ignore[attr-defined]
            model.train(training)

    def report(self, **metrics: float) -> None:
        """One epoch's metrics: logged (MLflow, every one of them, at step=epoch), the declared
        metric reported to the trial, which may end here (pruned, its rung, the time budget).
        Seconds per epoch are measured between reports."""
        now = time.perf_counter()
        epoch = len(self.history) + 1
        declared = self._loop.metric
        if declared not in metrics:
            got = ", ".join(sorted(metrics)) or "nothing"
            raise TrialEnded(None, f"run.report got {got} at epoch {epoch}, but the trainable declared "
                                       f"metric {declared}: report {declared}=... every epoch")
        row = {k: _number(k, v) for k, v in metrics.items()}
        if self._optimizers and "lr" not in row:
            row["lr"] = float(self._optimizers[0].param_groups[0]["lr"])
        row["epoch_s"] = now - self._mark
        self.history.append(row)
        value = row[declared]
        if not math.isfinite(value):
            raise TrialEnded(Ending.DIVERGED, f"{declared} is {value} at epoch {epoch}")
        for cadence in self._plateaus:
            cadence.scheduler.step(value)
        stop = self._on_epoch(epoch, row) if self._on_epoch is not None else False
        if stop:
            raise TrialEnded(Ending.PRUNED, stop if isinstance(stop, str) else f"pruned at epoch {epoch}")
        self._mark = time.perf_counter()  # the report's own work is not the next epoch's

    def report_test(self, value: float | None = None, **metrics: float) -> None:
        """The declared metric on the test split (``value``), and any other test metrics: recorded
        where ``testing`` (the trials and the confirmation's runs, whose complete runs give the
        recommendation's test score; no choice reads it)."""
        if not self.testing:
            return
        if value is not None:
            self.test[f"test_{self._loop.score}"] = _number("value", value)
        for k, v in metrics.items():
            self.test[k if k.startswith("test_") else f"test_{k}"] = _number(k, v)


def _number(name: str, value: Any) -> float:
    """A reported value as a float (a 0-d tensor or numpy scalar included); anything else is the
    loop's error, named."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise LoopError(f"run.report got {name}={type(value).__name__}, not a number") from None


def seed_everything(seed: int) -> None:
    """torch's, numpy's and Python's generators, seeded before the user's loop starts."""
    random.seed(seed)
    torch.manual_seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)


def run_loop(loop: UserLoop, config: TrialConfig, *, epochs: int, seed: int = 0,
             device: torch.device | str = "cpu", on_epoch: OnEpoch | None = None, evaluate_test: bool = False,
             family: Family | None = None, number: int | None = None) -> TrialResult:
    """Call the user's marked function for one trial and return what it reported.

    ``status`` is ``complete`` (every report taken), ``pruned`` (``on_epoch`` said stop) or
    ``diverged`` (the declared metric went non-finite). A loop that raises raises here (the
    worker fails the trial with it); one that never reports, or reports without the declared
    metric, raises ``LoopError`` naming what it reported and what was declared.
    """
    seed_everything(seed)
    run = Run(loop, config, epochs=epochs, seed=seed, device=torch.device(device),
              family=family or registered(config.optimizer), on_epoch=on_epoch, testing=evaluate_test,
              number=number)
    result = TrialResult(Ending.COMPLETE, loop.metric)
    try:
        if loop.mark.setup is not None:
            loop.fn(run, loop.data)
        else:
            loop.fn(run)
    except TrialEnded as ended:
        if ended.status is None:
            raise LoopError(ended.reason) from None
        result.status, result.reason = ended.status, ended.reason
    finally:
        result.history, result.test = run.history, run.test
        result.train_s = sum(h["epoch_s"] for h in run.history)
        release_memory(run.device.type == "cuda")
    if not run.history:
        raise LoopError(f"the trainable never called run.report: report {loop.metric}=... every epoch")
    return result
