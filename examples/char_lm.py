"""A user's own training loop: a character-level language model, scored by ``val_loss`` (the
mean cross-entropy of the next character, in nats; minimize), with its perplexity alongside.

The text ships with every Python: six of the documentation's topics that ``help()`` prints
(``pydoc_data.topics``: statements, the execution model, special methods, the built-in types),
about 183,000 characters once runs of whitespace are one space, the same for a given Python
version. It is cut, in order, into train (80%), validation (10%) and test (10%). The model is a
one-layer LSTM of width 128; an epoch is a pass over the training text in windows of 64
characters (about 1.5 s on one CPU core with bf16 instructions; 6 epochs of AdamW at lr 1e-3
reach a validation perplexity of about 6.6, against a unigram model's 29.6).

Run it with the folder holding this file on PYTHONPATH (on a cluster, on every worker's too)::

    PYTHONPATH=examples autoopt tune --task char_lm:train --epochs 6

and read the pick from any process that can import this module::

    from autoopt import recommend; recommend("char_lm:train")

``setup(data_dir)`` runs once per worker process and its loaders serve every trial of that
worker; ``data_dir`` (``--data-dir``) is unused here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import autoopt

# Topics that share no passage (other topics repeat parts of these), in sorted order.
TOPICS = ("compound", "execmodel", "specialnames", "types", "typesmapping", "typesseq")
WINDOW = 64  # characters a training sequence holds
BATCH = 16


class Windows(Dataset):
    """Consecutive, non-overlapping windows of a split: item i is the ``WINDOW`` characters from
    ``i * WINDOW`` and, as the target, the same characters one position later."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return (len(self.ids) - 1) // WINDOW

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.ids[i * WINDOW:(i + 1) * WINDOW + 1]
        return chunk[:-1], chunk[1:]


@dataclass
class Data:
    """What ``setup`` returns: the three splits' loaders and the size of the vocabulary."""

    train: DataLoader
    val: DataLoader
    test: DataLoader
    vocab: int  # distinct characters of the text


def setup(data_dir: Path | None = None) -> Data:
    """The text, its three contiguous splits and their loaders: once per worker process."""
    text = " ".join(" ".join(topics[name].split()) for name in TOPICS)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    n_train, n_val = int(0.8 * len(ids)), int(0.1 * len(ids))
    train, val, test = ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:]
    # Shuffled by torch's generator, which autoopt seeds with run.seed before each trial.
    return Data(DataLoader(Windows(train), batch_size=BATCH, shuffle=True),
                DataLoader(Windows(val), batch_size=256),
                DataLoader(Windows(test), batch_size=256), len(chars))


class CharLSTM(nn.Module):
    """Character ids (B, T) -> logits of the next character (B, T, V)."""

    def __init__(self, vocab: int, width: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed(x))
        return self.head(hidden)


def char_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each next character in nats: cross_entropy takes the classes on dim 1,
    (B, V, T) against targets (B, T); computed in float32 from bf16 logits under autocast."""
    return F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction=reduction)


def bf16(device: torch.device) -> bool:
    """Whether to run the model under bf16 autocast: on a GPU with bf16, or on a CPU with AVX512-BF16
    instructions (there an epoch took 1.5 s on one core against float32's 2.2 s, at the same
    perplexity). Elsewhere in float32: on a CPU with AVX2 only, oneDNN has no bf16 LSTM at all
    ("could not create a primitive descriptor for the LSTM forward propagation primitive")."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.cpu._is_avx512_bf16_supported()


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Mean loss per character over a split (inside ``run.evaluating``: eval mode, no_grad)."""
    total, count, low = torch.zeros((), device=device), 0, bf16(device)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low):
            total += char_loss(model(x), y, reduction="sum")
        count += y.numel()
    return total.item() / count


@autoopt.trainable(metric="val_loss", direction="minimize", setup=setup)
def train(run: autoopt.Run, data: Data) -> None:
    """One trial: the trial's optimizer, schedule and clipping in this loop, one report per epoch."""
    model = CharLSTM(data.vocab).to(run.device)
    opt = run.optimizer(model)
    sched = run.scheduler(opt, steps_per_epoch=len(data.train))
    low = bf16(run.device)
    for _ in range(run.epochs):
        model.train()
        train_sum = torch.zeros((), device=run.device)
        for x, y in data.train:
            x, y = x.to(run.device), y.to(run.device)
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=low):
                loss = char_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            run.clip(model)
            opt.step()
            if sched is not None:
                sched.step()  # once per optimizer step
            train_sum += loss.detach()
        with run.evaluating(model, opt):
            val_loss = evaluate(model, data.val, run.device)
            # Perplexity is exp(loss); capped, so a diverging trial's loss does not overflow it.
            run.report(val_loss=val_loss, val_perplexity=math.exp(min(val_loss, 100.0)),
                       train_loss=train_sum.item() / len(data.train))
    with run.evaluating(model, opt):
        run.report_test(evaluate(model, data.test, run.device))
