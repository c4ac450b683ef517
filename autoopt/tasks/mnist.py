"""``mnist``: torchvision's MNIST, downloaded into the data folder and parsed from its IDX files."""

from __future__ import annotations

from pathlib import Path

from autoopt.catalog import SOURCES
from autoopt.data import Preprocess, Split, split_holdout
from autoopt.errors import UsageError
from autoopt.tasks.base import Task
from autoopt.tasks.models import SmallCNN

SOURCE = SOURCES["mnist"]


def read_mnist(root: Path, *, download: bool = True) -> tuple[Split, Split]:
    """(train, test) as uint8 tensors (N, 1, 28, 28), read from ``root/MNIST/raw``.

    Uses torchvision's downloader and IDX parser; the files are fetched only when missing.
    """
    from torchvision.datasets import MNIST

    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=download)
    except (RuntimeError, OSError) as exc:
        raise UsageError(f"MNIST is not in {root}/MNIST/raw and could not be downloaded ({exc}); "
                         "run once on a connected machine or copy the IDX files there") from None
    return (Split(train.data.unsqueeze(1).contiguous(), train.targets.long()),
            Split(test.data.unsqueeze(1).contiguous(), test.targets.long()))


def load(data_dir: Path) -> Task:
    train_full, test = read_mnist(data_dir)
    train, val = split_holdout(train_full.x, train_full.y, 1 / 12, seed=4321)
    return Task("mnist", lambda: SmallCNN(side=28, width=32), train, val, test, batch_size=128,
                preprocess=Preprocess(scale=255.0, mean=(0.1307,), std=(0.3081,)), source=SOURCE)
