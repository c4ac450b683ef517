"""Device-resident data: one tensor per split, batched, shuffled and augmented on the device.

The whole split lives on the trial's device as one uint8 (or fp16/fp32) tensor. A batch is
an index into it; normalisation and augmentation are batched tensor ops (as in airbench),
so no DataLoader, worker process or PIL image is involved.

>>> import torch
>>> split = Split(torch.zeros(10, 1, 8, 8, dtype=torch.uint8), torch.arange(10))
>>> [len(y) for _, y in split.batches(4, generator=torch.Generator().manual_seed(0))]
[4, 4, 2]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass
class Split:
    """One split of a dataset: inputs ``x`` (N, ...) and targets ``y`` (N, ...)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) batches; shuffled when a ``generator`` is given, in order otherwise."""
        n = len(self)
        if generator is None:
            order = None
        else:
            order = torch.randperm(n, generator=generator, device=generator.device).to(self.x.device)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            if order is None:
                yield self.x[start:start + batch_size], self.y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                yield self.x[idx], self.y[idx]


@dataclass(frozen=True)
class Preprocess:
    """How raw stored inputs become model inputs: ``(x / scale - mean) / std`` per channel,
    plus optional augmentation on the training split (random crop with ``pad`` and
    horizontal flip)."""

    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    crop_pad: int = 0
    flip: bool = False
    _stats: dict = field(default_factory=dict, compare=False, repr=False)

    def __call__(self, x: torch.Tensor, *, train: bool, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not x.is_floating_point() or x.dtype != dtype:
            x = x.to(dtype)
        if x.ndim == 4:
            key = (x.device, dtype, x.shape[1])
            if key not in self._stats:
                shape = (1, -1, 1, 1)
                mean = torch.tensor(self.mean, device=x.device, dtype=dtype).view(shape)
                std = torch.tensor(self.std, device=x.device, dtype=dtype).view(shape)
                # Fold scale, mean and std into one multiply-add.
                self._stats[key] = (1.0 / (self.scale * std), mean / std)
            mul, sub = self._stats[key]
            x = x * mul - sub
            if train and (self.crop_pad or self.flip):
                x = augment(x, pad=self.crop_pad, flip=self.flip, generator=generator)
            return x
        return (x / self.scale - self.mean[0]) / self.std[0]


def augment(x: torch.Tensor, *, pad: int, flip: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, batched on x's device."""
    n, _, h, w = x.shape
    dev = x.device
    gdev = generator.device if generator is not None else dev
    if flip:
        mask = torch.rand(n, generator=generator, device=gdev).to(dev) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
    if pad:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        # One random (dy, dx) per image: gather the crop with per-sample index arithmetic.
        shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=gdev).to(dev)
        rows = (torch.arange(h, device=dev).view(1, h) + shifts[0].view(n, 1))  # n, h
        cols = (torch.arange(w, device=dev).view(1, w) + shifts[1].view(n, 1))  # n, w
        batch = torch.arange(n, device=dev).view(n, 1, 1)
        # advanced indexing: (n, h, w) positions, channels kept
        x = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
    return x.contiguous()


def split_holdout(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int = 0) -> tuple[Split, Split]:
    """Split a training set into (train, validation), holding out ``fraction`` of the rows,
    stratified by nothing but a seeded permutation (the same split every time)."""
    n = len(x)
    n_val = max(1, int(round(n * fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])
