"""``cifar10``: torchvision's CIFAR-10, downloaded into the data folder; the tutorial's SimpleCNN."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from autoopt.catalog import SOURCES
from autoopt.data import Preprocess, Split, split_holdout
from autoopt.errors import UsageError
from autoopt.tasks.base import Task
from autoopt.tasks.models import SimpleCNN

SOURCE = SOURCES["cifar10"]
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]


def _read_batches(folder: Path, names: list[str]) -> Split:
    xs, ys = [], []
    for name in names:
        with open(folder / name, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return Split(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))


def read_cifar10(root: Path, *, download: bool = True) -> tuple[Split, Split]:
    """(train, test) as uint8 tensors (N, 3, 32, 32) from ``root/cifar-10-batches-py``.

    Downloads with torchvision (checksummed) only when the batches are missing.
    """
    folder = root / FOLDER
    if download and not all((folder / n).exists() for n in TRAIN_BATCHES + TEST_BATCHES):
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(root), train=True, download=True)
        except (RuntimeError, OSError) as exc:
            raise UsageError(f"CIFAR-10 is not in {folder} and could not be downloaded ({exc}); "
                             "run once on a connected machine or copy cifar-10-batches-py there") from None
    try:
        return _read_batches(folder, TRAIN_BATCHES), _read_batches(folder, TEST_BATCHES)
    except FileNotFoundError as exc:
        raise UsageError(f"CIFAR-10 batch missing: {exc.filename}; download it or fix --data-dir") from None


def load(data_dir: Path) -> Task:
    train_full, test = read_cifar10(data_dir)
    train, val = split_holdout(train_full.x, train_full.y, 0.1, seed=4321)
    return Task("cifar10", SimpleCNN, train, val, test, batch_size=128,
                preprocess=Preprocess(scale=255.0, mean=(0.4914, 0.4822, 0.4465),
                                      std=(0.2470, 0.2435, 0.2616), crop_pad=4, flip=True),
                source=SOURCE)
