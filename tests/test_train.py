"""The training loop: reproducible, reports per epoch, stops on divergence, frees memory."""

from __future__ import annotations

import math

import pytest
import torch

from autoopt.data import Split
from autoopt.space import TrialConfig
from autoopt.tasks import Task, load_task
from autoopt.training.train import train


@pytest.fixture(scope="module")
def digits() -> Task:
    return load_task("digits")


@pytest.mark.slow
def test_seeded_runs_repeat_exactly_on_cpu(digits: Task) -> None:
    cfg = TrialConfig("sgd", {"lr": 0.05, "momentum": 0.9}, "cosine", {"eta_min_ratio": 0.01}, 1.0)
    a = train(digits, cfg, epochs=2, seed=3)
    b = train(digits, cfg, epochs=2, seed=3)
    c = train(digits, cfg, epochs=2, seed=4)
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    assert a.value == b.value
    assert a.history[-1]["train_loss"] != c.history[-1]["train_loss"]


@pytest.mark.slow
def test_reports_every_epoch_and_learns(digits: Task) -> None:
    seen: list[tuple[int, dict]] = []
    result = train(digits, TrialConfig("adam", {"lr": 3e-3}), epochs=3, seed=0,
                   on_epoch=lambda e, m: seen.append((e, m)) is not None)
    assert [e for e, _ in seen] == [1, 2, 3]
    assert set(seen[0][1]) >= {"train_loss", "val_loss", "val_accuracy", "lr", "epoch_s"}
    assert result.status == "complete" and result.value > 0.9
    assert seen[-1][1]["train_loss"] < seen[0][1]["train_loss"]
    assert result.test == {}  # test is only scored for the recommendation


@pytest.mark.slow
def test_on_epoch_true_stops_as_pruned(digits: Task) -> None:
    result = train(digits, TrialConfig("adam", {"lr": 1e-3}), epochs=5, seed=0, on_epoch=lambda e, m: e == 2)
    assert result.status == "pruned" and len(result.history) == 2


def test_a_trial_that_would_end_past_its_deadline_stops_after_its_first_epoch(digits: Task) -> None:
    """Under a time budget a trial is stopped, with its reason, once the seconds per epoch it has
    taken project its end past the search's share: the race keeps its reserve."""
    import time

    from autoopt.dispatch.worker import TrialRef, past_deadline

    ref = TrialRef("sqlite://", "s", 1, 1, "none", 5, 0.0, deadline=time.time() + 0.001)
    seen: list[float] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool | str:
        seen.append(metrics["epoch_s"])
        return past_deadline(ref, epoch, seen) or False

    result = train(digits, TrialConfig("adam", {"lr": 1e-3}), epochs=5, seed=0, on_epoch=on_epoch)
    assert result.status == "pruned" and len(result.history) == 1
    assert result.reason.startswith("stopped at epoch 1:") and "time budget" in result.reason
    far = TrialRef("sqlite://", "s", 1, 1, "none", 5, 0.0, deadline=time.time() + 3600)
    assert past_deadline(far, 1, seen) is None and past_deadline(ref, 5, seen) is None  # the last epoch: done


def test_divergence_ends_the_run_with_a_reason(digits: Task) -> None:
    result = train(digits, TrialConfig("sgd", {"lr": 1e8, "momentum": 0.99}), epochs=3, seed=0)
    assert result.status == "diverged"
    assert "is nan" in result.reason or "is inf" in result.reason


def test_test_split_scored_only_when_asked(digits: Task) -> None:
    result = train(digits, TrialConfig("adam", {"lr": 3e-3}), epochs=1, seed=0, evaluate_test=True)
    assert set(result.test) == {"test_loss", "test_accuracy"}
    assert 0.0 <= result.test["test_accuracy"] <= 1.0


def test_regression_task_reports_rmse() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    task = Task("reg", lambda: torch.nn.Linear(4, 1), Split(x[:200], y[:200]), Split(x[200:], y[200:]),
                loss="mse", batch_size=32)
    result = train(task, TrialConfig("adam", {"lr": 0.05}), epochs=20, seed=0)
    assert task.metric == "val_rmse"
    assert math.isclose(result.value, math.sqrt(result.history[-1]["val_loss"]), rel_tol=1e-6)
    assert result.value < result.history[0]["val_rmse"]


def test_memory_is_released_after_a_trial(digits: Task) -> None:
    import gc
    import weakref

    from autoopt.tasks.models import SmallCNN

    refs = []

    def build() -> torch.nn.Module:
        model = SmallCNN(side=8, width=16)
        refs.append(weakref.ref(model))
        return model

    task = Task("digits", build, digits.train, digits.val, digits.test, batch_size=64,
                preprocess=digits.preprocess)
    train(task, TrialConfig("adam", {"lr": 1e-3}), epochs=1, seed=0)
    gc.collect()
    assert refs and refs[0]() is None, "the trial's model outlived the trial"
