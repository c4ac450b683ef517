"""Device-resident data: one tensor per split, batched, shuffled and augmented on the device.

The whole split lives on the trial's device as one uint8 (or fp16/fp32) tensor. An epoch is a
permutation of its rows; the rows are gathered a chunk at a time, augmented as one batched
tensor op per chunk (as in airbench), and cut into batches by slicing. No DataLoader, worker
process or PIL image is involved, and every row is seen exactly once per epoch.

>>> import torch
>>> split = Split(torch.zeros(10, 1, 8, 8, dtype=torch.uint8), torch.arange(10))
>>> [len(y) for _, y in split.batches(4, generator=torch.Generator().manual_seed(0))]
[4, 4, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

# Rows gathered and augmented at once: a chunk's ~20 tensor ops cost the same for 8 rows as
# for 8,192, while the copy it makes stays small (25 MB of CIFAR-10 uint8).
CHUNK_ROWS = 8192

Augment = Callable[..., torch.Tensor]


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
        """The split on ``device`` (once per worker; the data then stays there)."""
        return Split(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None, drop_last: bool = False,
                augment: Augment | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) batches of stored (not yet normalised) inputs.

        With a ``generator`` the rows come in a fresh random order each epoch, in order
        otherwise. ``augment(x, generator=..., index=rows)`` (e.g. ``Preprocess.augment``)
        returns the rows ``x[rows]`` augmented; it runs once per chunk of rows, not per batch.
        """
        n = len(self)
        if n == 0:
            return
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        if generator is None:
            order = None
        else:
            order = torch.randperm(n, generator=generator, device=generator.device).to(self.x.device)
        chunk = batch_size * max(1, CHUNK_ROWS // batch_size)
        for c0 in range(0, stop, chunk):
            c1 = min(c0 + chunk, stop)
            if order is None:
                rows = None
                xc, yc = self.x[c0:c1], self.y[c0:c1]
            else:
                rows = order[c0:c1]
                xc, yc = None, self.y[rows]
            if augment is not None:
                xc = augment(self.x, generator=generator, index=rows if rows is not None
                             else torch.arange(c0, c1, device=self.x.device))
            elif xc is None:
                assert rows is not None  # xc is left unset only for shuffled rows
                xc = self.x.index_select(0, rows)  # a row memcpy, unlike self.x[rows] on the CPU
            for b0 in range(0, c1 - c0, batch_size):
                yield xc[b0:b0 + batch_size], yc[b0:b0 + batch_size]


@dataclass(frozen=True)
class Preprocess:
    """How stored inputs become model inputs.

    Training images are augmented in their stored form (random crop after zero padding by
    ``crop_pad``, then a random horizontal flip: torchvision's ``RandomCrop(size,
    padding=crop_pad)`` and ``RandomHorizontalFlip()``, so the padding is black as in the
    tutorial), then normalised per channel: ``(x / scale - mean) / std``.

    Integer inputs that are not images (token ids, say) under an identity preprocess (scale 1,
    mean 0, std 1, no augmentation: a ``Task``'s default) are ids, not numbers: they reach the
    model unchanged, as ``torch.long``, so that an ``nn.Embedding`` takes them. Images (N, C, H,
    W) and inputs with a scale, mean or std become floats.

    >>> import torch
    >>> p = Preprocess(scale=255.0, mean=(0.5,), std=(0.5,))
    >>> p(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), train=False).flatten().tolist()
    [1.0, 1.0, 1.0, 1.0]
    >>> Preprocess(scale=1.0)(torch.tensor([[3, 1, 4]], dtype=torch.int32), train=False)
    tensor([[3, 1, 4]])
    """

    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    crop_pad: int = 0
    flip: bool = False
    _stats: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def augments(self) -> bool:
        """Whether training inputs are augmented (crop or flip)."""
        return bool(self.crop_pad or self.flip)

    @property
    def identity(self) -> bool:
        """Whether inputs are taken as stored: scale 1, mean 0, std 1 and no augmentation."""
        return (self.scale == 1 and all(m == 0 for m in self.mean) and all(s == 1 for s in self.std)
                and not self.augments)

    def keeps_ids(self, x: torch.Tensor) -> bool:
        """Whether ``x`` holds ids the model takes as integers: integer (not bool) inputs that
        are not images, under an identity preprocess."""
        if x.ndim == 4 or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            return False
        return self.identity

    def __call__(self, x: torch.Tensor, *, train: bool, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """One batch: augmented when ``train`` (and the preprocess augments), then normalised."""
        if train and self.augments and x.ndim == 4:
            x = self.augment(x, generator=generator)
        return self.normalise(x, dtype)

    def augment(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """Crop and flip the images ``x[index]`` (all of ``x`` without an index), in x's dtype."""
        if x.ndim != 4 or not self.augments:
            return x if index is None else x.index_select(0, index)
        return augment(x, pad=self.crop_pad, flip=self.flip, generator=generator, index=index)

    def normalise(self, x: torch.Tensor, dtype: torch.dtype = torch.float32, *,
                  memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """``(x / scale - mean) / std`` per channel, as a new ``dtype`` tensor (images laid out
        in ``memory_format``, in the same pass); ids (see ``keeps_ids``) as ``torch.long``."""
        if self.keeps_ids(x):
            return x.long()
        if x.ndim != 4:
            return (x.to(dtype) / self.scale - self.mean[0]) / self.std[0]
        key = (x.device, dtype, x.shape[1])
        if key not in self._stats:
            # Scale, mean and std folded into one multiply and one subtract.
            mul = [1.0 / (self.scale * s) for s in self.std]
            sub = [m / s for m, s in zip(self.mean, self.std, strict=True)]
            self._stats[key] = tuple(torch.tensor(v, device=x.device, dtype=dtype).view(1, -1, 1, 1)
                                     for v in (mul, sub))
        mul, sub = self._stats[key]
        # copy=True: a fresh tensor even for float storage, so the in-place ops below never
        # touch the stored split (and allocate nothing more).
        return x.to(dtype, copy=True, memory_format=memory_format).mul_(mul).sub_(sub)


def augment(x: torch.Tensor, *, pad: int, flip: bool, generator: torch.Generator | None = None,
            index: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop after zero padding ``pad``, then random horizontal flip, of ``x[index]``.

    Every image draws its own shift (dy, dx) in [-pad, pad]² and its own flip. The images are
    sorted by what they drew, so that all images with one (flip, dy, dx) are moved by a single
    copy: a chunk costs one gather, one zero fill, at most (2 pad + 1)² block copies, one flip
    and one gather back into order, instead of a gather per pixel.
    """
    rows = torch.arange(len(x), device=x.device) if index is None else index
    n = len(rows)
    h, w = x.shape[2:]
    if n == 0:
        return x.index_select(0, rows)
    gdev = generator.device if generator is not None else x.device
    k = 2 * pad + 1
    # key = shift for unflipped images, k² + shift for flipped ones: sorted, the flipped come last.
    key = torch.randint(0, k * k, (n,), generator=generator, device=gdev)
    if flip:
        key += k * k * torch.randint(0, 2, (n,), generator=generator, device=gdev)
    key = key.to(x.device)
    by_key = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=2 * k * k).tolist()  # one host sync per chunk
    src = x.index_select(0, rows[by_key])  # index_select: a row memcpy, unlike x[rows] on the CPU
    out = torch.zeros_like(src) if pad else src
    if pad:
        flat_src, flat_out = src.flatten(2), out.flatten(2)
        hw, start = h * w, 0
        for value, count in enumerate(counts):
            if not count:
                continue
            dy, dx = divmod(value % (k * k), k)
            dy, dx = dy - pad, dx - pad
            # out[r, col] = x[r + dy, col + dx]: on the flattened image that is one contiguous
            # shift by dy * w + dx; the columns it wraps across rows are zeroed after.
            shift = dy * w + dx
            j0, j1 = max(0, -shift), min(hw, hw - shift)
            block = slice(start, start + count)
            flat_out[block, :, j0:j1] = flat_src[block, :, j0 + shift:j1 + shift]
            if dx > 0:
                out[block, :, :, w - dx:] = 0
            elif dx < 0:
                out[block, :, :, :-dx] = 0
            start += count
    if flip:
        first_flipped = sum(counts[:k * k])
        out[first_flipped:] = out[first_flipped:].flip(3)
    # Back into the chunk's order: image i sits at the position where by_key holds i.
    inverse = torch.empty_like(by_key)
    inverse[by_key] = torch.arange(n, device=by_key.device)
    return out.index_select(0, inverse)


def split_holdout(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int = 0) -> tuple[Split, Split]:
    """Split a training set into (train, validation), holding out ``fraction`` of the rows,
    stratified by nothing but a seeded permutation (the same split every time)."""
    n = len(x)
    n_val = max(1, round(n * fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])
