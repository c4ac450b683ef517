"""``digits_lstm`` and ``mnist_lstm``: the same images, read row by row by an LSTM.

The tutorial says RMSprop suits recurrent networks. These tasks keep the data, splits and
normalisation of ``digits`` and ``mnist`` and change only the model (each image is a
sequence of its rows, an ``nn.LSTM`` reads it and a linear head classifies its last state),
so the two recommendations show whether the best optimizer depends on the architecture.

>>> task = load_digits()
>>> task.name, task.metric, type(task.build_model()).__name__
('digits_lstm', 'val_accuracy', 'RowLSTM')
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoopt.catalog import SOURCES as _ALL_SOURCES
from autoopt.tasks import digits, mnist
from autoopt.tasks.base import Task

SOURCES = {name: _ALL_SOURCES[name] for name in ("digits_lstm", "mnist_lstm")}
SOURCE = "the digits or MNIST images read row by row by an LSTM"


class RowLSTM(nn.Module):
    """An image classifier that reads the image as a sequence of rows: ``nn.LSTM`` over the
    rows, a linear head on the last hidden state.

    >>> model = RowLSTM(cols=8, hidden=16)
    >>> model(torch.zeros(4, 1, 8, 8)).shape
    torch.Size([4, 10])
    """

    def __init__(self, cols: int, hidden: int = 64, layers: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(cols, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, 1, rows, cols) -> (N, rows, cols): one time step per row. reshape, not view: on a
        # GPU the batch arrives channels_last.
        seq = x.reshape(x.shape[0], x.shape[-2], x.shape[-1])
        out, _ = self.lstm(seq)
        return self.head(out[:, -1])


def as_sequence_task(image_task: Task, name: str, *, hidden: int) -> Task:
    """``image_task`` with its CNN replaced by a ``RowLSTM``: same splits, same preprocessing."""
    cols = image_task.train.x.shape[-1]
    return Task(name, lambda: RowLSTM(cols, hidden), image_task.train, image_task.val, image_task.test,
                image_task.loss, image_task.batch_size, image_task.preprocess, SOURCES[name])


def load_digits(data_dir: Path | None = None) -> Task:
    """``digits_lstm``: the 8x8 digits as 8 steps of 8 pixels, an LSTM with 64 units."""
    return as_sequence_task(digits.load(data_dir), "digits_lstm", hidden=64)


def load_mnist(data_dir: Path) -> Task:
    """``mnist_lstm``: MNIST as 28 steps of 28 pixels, an LSTM with 128 units."""
    return as_sequence_task(mnist.load(data_dir), "mnist_lstm", hidden=128)
