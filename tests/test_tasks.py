"""Tasks: real data formats written by the tests, parsed by the real loaders."""

from __future__ import annotations

import pickle
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from autoopt.errors import UsageError
from autoopt.tasks import check_task_name, load_task
from autoopt.tasks.models import SimpleCNN


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (the MNIST on-disk format): magic, big-endian dims, unsigned bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 120, n_test: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(root / "MNIST" / "raw" / name, arr)
    return arrays


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> dict[str, dict]:
    """Write the CIFAR-10 python pickle batches (rows of 3072 bytes: R plane, G plane, B plane)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                 b"batch_label": name.encode()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
        batches[name] = batch
    return batches


def test_mnist_parses_idx_files(tmp_path: Path) -> None:
    arrays = write_mnist(tmp_path)
    task = load_task("mnist", tmp_path)
    assert task.train.x.dtype == torch.uint8 and task.train.x.shape[1:] == (1, 28, 28)
    assert len(task.train) + len(task.val) == 120 and len(task.val) == 10
    assert len(task.test) == 30
    # Test images are the file's images, in order.
    assert torch.equal(task.test.x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(task.test.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    # Validation rows come out of the training file, never the test file.
    train_rows = {bytes(r) for r in arrays["train-images-idx3-ubyte"].reshape(120, -1)}
    assert all(bytes(r) in train_rows for r in task.val.x.reshape(len(task.val), -1).numpy())
    out = task.build_model()(task.preprocess(task.train.x[:4], train=True))
    assert out.shape == (4, 10)


def test_cifar10_parses_pickle_batches(tmp_path: Path) -> None:
    batches = write_cifar10(tmp_path)
    task = load_task("cifar10", tmp_path)
    assert task.train.x.shape[1:] == (3, 32, 32) and task.train.x.dtype == torch.uint8
    assert len(task.train) + len(task.val) == 100 and len(task.test) == 20
    first = batches["test_batch"][b"data"][0]
    # Channel planes: the first 1024 bytes are red, row-major.
    assert torch.equal(task.test.x[0, 0].flatten(), torch.from_numpy(first[:1024]))
    assert torch.equal(task.test.x[0, 2].flatten(), torch.from_numpy(first[2048:]))
    assert task.test.y.tolist() == batches["test_batch"][b"labels"]
    assert isinstance(task.build_model(), SimpleCNN)
    # Augmentation (crop + flip) is on for the training split and keeps shapes.
    x = task.preprocess(task.train.x[:8], train=True, generator=torch.Generator().manual_seed(0))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32


def test_missing_data_is_a_usage_error_naming_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No network here: the real torchvision download fails and the message says what to do.
    monkeypatch.setenv("no_proxy", "")
    with pytest.raises(UsageError, match="cifar-10-batches-py"):
        from autoopt.tasks.cifar10 import read_cifar10

        (tmp_path / "cifar-10-batches-py").mkdir()
        read_cifar10(tmp_path, download=False)


def test_simple_cnn_is_the_tutorials() -> None:
    model = SimpleCNN()
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(32, 3, 3, 3), (32,), (64, 32, 3, 3), (64,), (512, 4096), (512,), (10, 512), (10,)]


def test_digits_reads_scikit_learns_file_as_load_digits_does() -> None:
    from sklearn.datasets import load_digits

    from autoopt.tasks.digits import bundled

    images, target = bundled()
    reference = load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)
    assert images.shape == (1797, 8, 8) and sorted(set(target.tolist())) == list(range(10))


def test_digits_is_offline_and_held_out() -> None:
    task = load_task("digits")
    assert (len(task.train), len(task.val), len(task.test)) == (1150, 288, 359)
    assert task.metric == "val_accuracy" and task.direction == "maximize"
    assert int(task.train.x.max()) <= 16


def test_user_task_module_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mytask.py").write_text(textwrap.dedent("""
        import torch
        from autoopt import Task, Split

        def make(data_dir):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(64, 3, generator=g)
            y = x.sum(1, keepdim=True)
            return Task("reg", lambda: torch.nn.Linear(3, 1), Split(x[:48], y[:48]), Split(x[48:], y[48:]),
                        loss="mse", batch_size=16)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    task = load_task("mytask:make")
    assert task.metric == "val_rmse" and task.direction == "minimize"
    with pytest.raises(UsageError, match="has no function"):
        check_task_name("mytask:nope")
    with pytest.raises(UsageError, match="no module named no_such_module_xyz"):
        check_task_name("no_such_module_xyz:make")
    with pytest.raises(UsageError, match="known tasks: cifar10, digits"):
        check_task_name("cifar")
