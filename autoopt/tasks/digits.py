"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, offline, real)."""

from __future__ import annotations

from pathlib import Path

import torch

from autoopt.catalog import SOURCES
from autoopt.data import Preprocess, split_holdout
from autoopt.tasks.base import Task
from autoopt.tasks.models import SmallCNN

SOURCE = SOURCES["digits"]


def load(data_dir: Path | None = None) -> Task:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixels are 0..16: store them as uint8 and scale on the device.
    x = torch.from_numpy(bunch.images).to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(bunch.target).long()
    # A fixed test split (20%), then validation held out from the rest (20%).
    train_full, test = split_holdout(x, y, 0.2, seed=1234)
    train, val = split_holdout(train_full.x, train_full.y, 0.2, seed=4321)
    return Task("digits", lambda: SmallCNN(side=8, width=16), train, val, test, batch_size=32,
                preprocess=Preprocess(scale=16.0, mean=(0.3,), std=(0.4,)), source=SOURCE)
