"""How a task is scored: a label per token, integer ids as model inputs, a task judged by its loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoopt.commands.tuning import check_model_fits
from autoopt.data import Preprocess, Split
from autoopt.decide.confirm import _counts
from autoopt.errors import UsageError
from autoopt.space import TrialConfig
from autoopt.tasks import Task, load_task
from autoopt.training import train as train_mod
from autoopt.training.train import evaluate, train

VOCAB, STEPS = 6, 4


class Echo(nn.Module):
    """Predicts every token to be its own label: one-hot class scores (N, VOCAB, T) of the ids.
    ``F.one_hot`` takes only torch.long, so it also checks how the ids arrive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x, VOCAB).float().movedim(-1, 1)


class Tagger(nn.Module):
    """A tiny token tagger: an embedding and a linear head, class scores (N, VOCAB, T). It keeps
    the dtypes of the inputs it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.dtype)
        return self.head(self.embed(x)).movedim(-1, 1)


def token_split(rows: int, seed: int, dtype: torch.dtype = torch.int64) -> Split:
    """Token ids (rows, STEPS) labelled by a fixed map of the id, so a tagger can learn it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (rows, STEPS), generator=g)
    return Split(x.to(dtype), (x * 5 + 1) % VOCAB)


def echo_task(score: str = "") -> tuple[Task, int]:
    """A task whose Echo model gets 13 of its 20 validation labels right (7 labels changed)."""
    x = torch.tensor([[0, 1, 2, 3], [4, 5, 0, 1], [2, 3, 4, 5], [1, 1, 1, 1], [5, 4, 3, 2]])
    y = x.clone()
    for row, col in [(0, 0), (0, 3), (1, 2), (2, 1), (3, 0), (3, 1), (4, 3)]:
        y[row, col] = (y[row, col] + 1) % VOCAB
    split = Split(x, y)
    return Task("echo", Echo, split, split, score=score), 13


def test_a_label_per_token_is_scored_per_label(monkeypatch: pytest.MonkeyPatch) -> None:
    task, right = echo_task()
    monkeypatch.setattr(train_mod, "EVAL_BATCH", 2)  # batches of 2, 2 and 1 rows
    metrics = evaluate(Echo(), task)
    assert metrics["val_accuracy"] == pytest.approx(right / 20)
    # One-hot scores: a right label costs -log(e / (e + 5)), a wrong one -log(1 / (e + 5)).
    z = math.e + VOCAB - 1
    expected = (right * -math.log(math.e / z) + (20 - right) * -math.log(1 / z)) / 20
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert _counts(task.val, task) == 20  # labels, not rows: the margin of an accuracy counts them


def test_one_label_a_row_is_scored_as_before() -> None:
    x = torch.eye(4).repeat(2, 1)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 3, 3])
    task = Task("one", lambda: nn.Identity(), Split(x, y), Split(x, y))
    assert evaluate(nn.Identity(), task)["val_accuracy"] == pytest.approx(7 / 8)
    assert _counts(task.val, task) == 8


def test_integer_ids_reach_an_embedding_as_long_through_train() -> None:
    models: list[Tagger] = []

    def build() -> Tagger:
        models.append(Tagger())
        return models[-1]

    task = Task("tagger", build, token_split(64, 0, torch.int32), token_split(16, 1, torch.int32),
                batch_size=16)
    result = train(task, TrialConfig("adam", {"lr": 1e-2}), epochs=1, seed=0)
    assert result.status == "complete" and len(result.history) == 1
    assert 0.0 <= result.value <= 1.0
    assert set(models[0].seen) == {torch.long}


def test_inputs_that_are_numbers_still_become_floats() -> None:
    images = torch.randint(0, 17, (2, 1, 8, 8), dtype=torch.uint8)
    digits = Preprocess(scale=16.0, mean=(0.3,), std=(0.4,))
    floats = digits(images, train=False)
    assert floats.dtype == torch.float32 and torch.allclose(floats, (images.float() / 16.0 - 0.3) / 0.4)
    assert Preprocess(scale=1.0)(images, train=False).dtype == torch.float32  # images, even unscaled
    assert Preprocess(scale=1.0)(torch.ones(2, 3, dtype=torch.bool), train=False).dtype == torch.float32
    assert Preprocess(scale=2.0)(torch.ones(2, 3, dtype=torch.int64), train=False).dtype == torch.float32
    ids = torch.tensor([[3, 1, 4]], dtype=torch.int16)
    kept = Preprocess(scale=1.0)(ids, train=False)
    assert kept.dtype == torch.long and torch.equal(kept, ids.long())


@pytest.mark.parametrize("name", ["digits", "digits_lstm"])
def test_builtin_images_still_reach_their_models_as_floats(name: str) -> None:
    task = load_task(name)
    x = task.train.x[:2]
    assert x.dtype == torch.uint8 and task.preprocess(x, train=False).dtype == torch.float32
    assert task.build_model()(task.preprocess(x, train=False)).shape == (2, 10)


def test_a_task_scored_by_its_loss_minimises_it_and_reports_perplexity() -> None:
    task, _ = echo_task(score="loss")
    assert (task.score, task.metric, task.direction) == ("loss", "val_loss", "minimize")
    assert task.to("cpu").metric == "val_loss"
    metrics = evaluate(Echo(), task)
    assert set(metrics) == {"val_loss", "val_perplexity"}
    assert metrics["val_perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert _counts(task.val, task) is None
    default, _ = echo_task()
    assert (default.score, default.metric, default.direction) == ("accuracy", "val_accuracy", "maximize")


def test_a_regression_scored_by_its_loss_has_no_perplexity() -> None:
    x = torch.randn(8, 3)
    task = Task("reg", lambda: nn.Linear(3, 1), Split(x, x[:, :1]), Split(x, x[:, :1]), loss="mse", score="loss")
    assert set(evaluate(nn.Linear(3, 1), task)) == {"val_loss"}


@pytest.mark.parametrize(("loss", "score"), [("cross_entropy", "rmse"), ("mse", "accuracy"), ("mse", "perplexity")])
def test_a_score_the_loss_does_not_have_is_refused(loss: str, score: str) -> None:
    split = Split(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(UsageError, match="'loss'") as info:
        Task("bad", lambda: nn.Linear(3, 2), split, split, loss=loss, score=score)
    assert score in str(info.value) and "\n" not in str(info.value)


def test_check_model_fits_takes_scores_per_token() -> None:
    check_model_fits("tagger", Task("tagger", Tagger, token_split(4, 0), token_split(4, 1)))


def test_check_model_fits_still_refuses_a_mismatch() -> None:
    x = torch.randn(4, 3)
    floaty = Task("floaty", lambda: nn.Linear(3, 2), Split(x, x[:, :2]), Split(x, x[:, :2]))
    with pytest.raises(UsageError, match="loss='mse'"):
        check_model_fits("floaty", floaty)

    class TokensLast(Tagger):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(x))  # (N, T, classes)

    last = Task("last", TokensLast, token_split(4, 0), token_split(4, 1))
    with pytest.raises(UsageError, match=r"movedim\(-1, 1\)") as info:
        check_model_fits("last", last)
    assert "(2, 4, 6)" in str(info.value) and "\n" not in str(info.value)
    one_per_row = Task("rows", lambda: nn.Linear(3, 2), Split(x, torch.zeros(4, 2, dtype=torch.long)),
                       Split(x, torch.zeros(4, 2, dtype=torch.long)))
    with pytest.raises(UsageError, match="classes on dim 1"):
        check_model_fits("rows", one_per_row)
