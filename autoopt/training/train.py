"""One trial's training loop: a task and a config in, metrics out.

It imports no Optuna, Ray or MLflow: the Optuna trial, the Ray worker and the MLflow run
all observe it through ``on_epoch(epoch, metrics) -> stop``.

>>> from autoopt.tasks import load_task
>>> from autoopt.space import TrialConfig
>>> result = train(load_task("digits"), TrialConfig("adam", {"lr": 1e-3}), epochs=1, seed=0)
>>> result.status, len(result.history)
(<Ending.COMPLETE: 'complete'>, 1)
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from autoopt.data import Preprocess
from autoopt.errors import UsageError
from autoopt.space import Family, TrialConfig, build_optimizer, build_scheduler, schedule
from autoopt.space import family as registered
from autoopt.tasks.base import Task

OnEpoch = Callable[[int, dict[str, float]], bool | str]  # truthy stops the run; a str is the reason
EVAL_BATCH = 2048


@runtime_checkable
class TrainEvalOptimizer(Protocol):
    """An optimizer with a training and an evaluation mode (Schedule-Free: a family with ``train_eval``)."""

    def train(self) -> Any: ...

    def eval(self) -> Any: ...


def _modes(optimizer: torch.optim.Optimizer, fam: Family) -> TrainEvalOptimizer | None:
    """The optimizer whose ``train()``/``eval()`` the loop calls, or None for a family without them."""
    if not fam.train_eval:
        return None
    if not isinstance(optimizer, TrainEvalOptimizer):
        raise UsageError(f"optimizer family {fam.name!r} says train_eval, but {type(optimizer).__name__} "
                         "has no train() and eval()")
    return optimizer


class Ending(StrEnum):
    """How a training run ended (``TrialResult.status``); the worker maps it to a ``JobState``."""

    COMPLETE = "complete"  # every epoch trained
    PRUNED = "pruned"  # ``on_epoch`` said stop (the pruner, the screen's rung, the time budget)
    DIVERGED = "diverged"  # a loss or the metric went non-finite


@dataclass
class TrialResult:
    """What one training run produced, and how it ended (``status``)."""

    status: Ending
    metric: str
    history: list[dict[str, float]] = field(default_factory=list)
    reason: str | None = None
    train_s: float = 0.0
    test: dict[str, float] = field(default_factory=dict)

    @property
    def value(self) -> float | None:
        """The validation metric after the last epoch trained."""
        return self.history[-1][self.metric] if self.history else None


def _loss_fn(task: Task) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The task's loss of a batch, averaged over its targets. Cross-entropy takes class scores
    (N, C) for labels (N,), or (N, C, ...) for labels (N, ...) (a label per token, say)."""
    if task.loss == "mse":
        return lambda out, y: F.mse_loss(out, y.to(out.dtype).view_as(out))
    return F.cross_entropy


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, split_name: str = "val", *,
             autocast: bool = False, channels_last: bool = False) -> dict[str, float]:
    """Loss and score of ``model`` on one split: the accuracy (over labels: a row may hold
    several), the RMSE, or, for a task scored by its loss, the loss alone and, for
    cross-entropy, the perplexity beside it."""
    split = getattr(task, split_name)
    model.eval()
    loss_fn = _loss_fn(task)
    total_loss = torch.zeros((), device=split.x.device)
    correct = torch.zeros((), device=split.x.device)
    counts_correct = task.score == "accuracy"
    device_type = split.x.device.type
    for xb, yb in split.batches(EVAL_BATCH):
        x = task.preprocess(xb, train=False)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x).float()
        # Every row holds as many targets, so a batch's mean weighted by its rows is the split's mean.
        total_loss += loss_fn(out, yb) * len(yb)
        if counts_correct:
            correct += (out.argmax(1) == yb).sum()
    # One host sync for the split.
    loss, accuracy = torch.stack((total_loss / len(split), correct / split.y.numel())).tolist()
    return {f"{split_name}_loss": loss, **_scores(task, split_name, loss, accuracy)}


def _scores(task: Task, split_name: str, loss: float, accuracy: float) -> dict[str, float]:
    """The split's score beside its loss: its accuracy or RMSE, or the perplexity of a
    cross-entropy task scored by its loss (whose score is the loss itself)."""
    if task.score == "accuracy":
        return {f"{split_name}_accuracy": accuracy}
    if task.score == "rmse":
        return {f"{split_name}_rmse": math.sqrt(loss)}
    if task.loss == "cross_entropy":
        return {f"{split_name}_perplexity": _perplexity(loss)}
    return {}


def _perplexity(loss: float) -> float:
    """``exp(loss)`` of a mean cross-entropy in nats; inf past what a float holds."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def train(task: Task, config: TrialConfig, *, epochs: int, seed: int = 0,
          on_epoch: OnEpoch | None = None, evaluate_test: bool = False,
          compile_model: bool = False, family: Family | None = None) -> TrialResult:
    """Train ``task``'s model with ``config`` for ``epochs`` epochs on the task's device.

    After each epoch, ``on_epoch(epoch, metrics)`` sees ``train_loss``, ``val_loss``, the
    validation score, ``lr`` and ``epoch_s``; returning True (or a reason) stops the run as ``pruned``.
    A non-finite loss stops it as ``diverged`` with the reason. Seeded runs repeat exactly on
    the CPU. Images run in ``channels_last`` where the model takes it (convolutions are 20-30%
    faster in it, on the CPU too); on a GPU, matmuls run in bf16 autocast. ``family`` is the
    config's optimizer family (a worker passes the one its job carries); by default the
    registry's.

    ``epoch_s`` is the wall time of the epoch's training and validation on the task's device
    (both end in a host sync: the loss and the score are read back).
    """
    device = task.train.x.device
    on_gpu = device.type == "cuda"
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    model = task.build_model().to(device)
    channels_last = _try_channels_last(model, task)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    fam = family or registered(config.optimizer)
    optimizer = build_optimizer(model, fam, config.optimizer_params)
    modes = _modes(optimizer, fam)
    steps_per_epoch = math.ceil(len(task.train) / task.batch_size)
    sched = schedule(config.scheduler if fam.schedulers else "none")
    scheduler = build_scheduler(optimizer, sched.name, config.scheduler_params, epochs=epochs,
                                steps_per_epoch=steps_per_epoch)
    step_model = torch.compile(model) if compile_model else model
    loss_fn = _loss_fn(task)
    # A Preprocess augments a whole chunk of the epoch at once; another callable sees batches.
    prep = task.preprocess
    own = isinstance(prep, Preprocess)
    augment = prep.augment if own and prep.augments else None
    result = TrialResult(Ending.COMPLETE, task.metric)
    try:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            model.train()
            if modes is not None:
                modes.train()
            total = torch.zeros((), device=device)
            for xb, yb in task.train.batches(task.batch_size, generator=gen, augment=augment):
                if own:  # augmented per chunk by batches() already: normalise, in the model's layout
                    x = prep.normalise(xb, memory_format=fmt)
                else:
                    x = prep(xb, train=True, generator=gen)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
                    loss = loss_fn(step_model(x).float(), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
                optimizer.step()
                if scheduler is not None and not sched.per_epoch:
                    scheduler.step()
                total += loss.detach() * len(yb)
            # One host sync per epoch: a NaN mid-epoch propagates into the sum.
            train_loss = (total / len(task.train)).item()
            if modes is not None:
                modes.eval()  # Schedule-Free evaluates at its averaged weights
            metrics = {"train_loss": train_loss,
                       **evaluate(model, task, "val", autocast=on_gpu, channels_last=channels_last)}
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            metrics["epoch_s"] = time.perf_counter() - t0
            result.train_s += metrics["epoch_s"]
            result.history.append(metrics)
            bad = [k for k in ("train_loss", "val_loss") if not math.isfinite(metrics[k])]
            if bad:
                result.status = Ending.DIVERGED
                result.reason = f"{bad[0]} is {metrics[bad[0]]} at epoch {epoch}"
                return result
            if scheduler is not None and sched.per_epoch:
                scheduler.step(metrics["val_loss"])
            stop = on_epoch(epoch, metrics) if on_epoch is not None else False
            if stop:
                result.status = Ending.PRUNED
                result.reason = stop if isinstance(stop, str) else f"pruned at epoch {epoch}"
                return result
        if evaluate_test and task.test is not None:
            t0 = time.perf_counter()
            if modes is not None:
                modes.eval()
            result.test = evaluate(model, task, "test", autocast=on_gpu, channels_last=channels_last)
            result.train_s += time.perf_counter() - t0
        return result
    finally:
        del model, step_model, optimizer, modes, scheduler
        release_memory(on_gpu)


def _try_channels_last(model: torch.nn.Module, task: Task) -> bool:
    """Put ``model`` in ``channels_last`` if it takes images so laid out: oneDNN on the CPU and
    cuDNN on the GPU run convolutions faster in it. A model that calls ``.view()`` on its
    activations (the tutorial's ``x.view(-1, 16 * 5 * 5)``) cannot: probed on two samples, in
    eval mode and without gradients, it stays as it is."""
    if task.train.x.ndim != 4 or len(task.train) == 0:
        return False
    training = model.training
    model.to(memory_format=torch.channels_last)
    model.eval()
    try:
        with torch.no_grad():
            model(task.preprocess(task.train.x[:2], train=False).contiguous(memory_format=torch.channels_last))
        return True
    except RuntimeError:
        model.to(memory_format=torch.contiguous_format)
        return False
    finally:
        model.train(training)


def warm_up(task: Task, config: TrialConfig, family: Family | None = None) -> None:
    """One training step on one batch, thrown away: a warm worker pays torch's one-time costs
    (lazy imports such as torch._dynamo on the first optimizer, kernel selection, the autograd
    engine's start) here rather than in its first trial."""
    device = task.train.x.device
    torch.manual_seed(0)
    model = task.build_model().to(device)
    optimizer = build_optimizer(model, family or registered(config.optimizer), config.optimizer_params)
    xb, yb = next(task.train.batches(task.batch_size))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = _loss_fn(task)(model(task.preprocess(xb, train=False)).float(), yb)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        evaluate(model, task, "val", autocast=device.type == "cuda")
    del model, optimizer


def release_memory(cuda: bool | None = None) -> None:
    """Free what a finished trial left behind on the GPU (cycles and the CUDA cache).

    On the CPU reference counting already frees a trial's tensors; a full collection would
    only add its cost to every trial."""
    if cuda if cuda is not None else torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
