"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, offline, real).

The file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and the label a
row) is read as ``sklearn.datasets.load_digits`` reads it, without importing scikit-learn's
datasets package (three seconds of imports on a small machine, on the way to the first trial).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from autoopt.catalog import SOURCES
from autoopt.data import Preprocess, split_holdout
from autoopt.tasks.base import Task
from autoopt.tasks.models import SmallCNN

SOURCE = SOURCES["digits"]


def bundled() -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 8, 8) and labels (N,) of scikit-learn's bundled file, as ``load_digits``
    gives them."""
    found = importlib.util.find_spec("sklearn")  # where it is installed; nothing imported
    if found is None or found.origin is None:
        raise ModuleNotFoundError("the digits task needs scikit-learn: pip install scikit-learn")
    with gzip.open(Path(found.origin).parent / "datasets" / "data" / "digits.csv.gz", "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def load(data_dir: Path | None = None) -> Task:
    images, target = bundled()
    # Pixels are 0..16: store them as uint8 and scale on the device.
    x = torch.from_numpy(images).to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(target).long()
    # A fixed test split (20%), then validation held out from the rest (20%).
    train_full, test = split_holdout(x, y, 0.2, seed=1234)
    train, val = split_holdout(train_full.x, train_full.y, 0.2, seed=4321)
    return Task("digits", lambda: SmallCNN(side=8, width=16), train, val, test, batch_size=32,
                preprocess=Preprocess(scale=16.0, mean=(0.3,), std=(0.4,)), source=SOURCE)
