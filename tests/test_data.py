"""The device-resident pipeline: every sample once per epoch, the CIFAR-10 augmentation exactly
as the tutorial's transforms define it, normalisation, and runs that repeat with a seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import refused, run_main

from autoopt import data
from autoopt.cli import main
from autoopt.commands.bench import CIFAR_MEAN, CIFAR_STD, cifar_like
from autoopt.data import Preprocess, Split, augment
from autoopt.space import TrialConfig
from autoopt.tasks.base import Task
from autoopt.tasks.models import SimpleCNN
from autoopt.training.train import train

CIFAR = Preprocess(255.0, CIFAR_MEAN, CIFAR_STD, crop_pad=4, flip=True)


def ids_split(n: int) -> Split:
    """Images whose every pixel holds (a function of) their index, labels = the index."""
    x = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    return Split(x, torch.arange(n))


@pytest.mark.parametrize(("n", "batch", "drop_last"), [(50, 7, False), (50, 7, True), (64, 16, False)])
def test_every_sample_once_per_epoch_in_a_new_order(monkeypatch: pytest.MonkeyPatch, n: int, batch: int,
                                                    drop_last: bool) -> None:
    monkeypatch.setattr(data, "CHUNK_ROWS", 20)  # several chunks per epoch, batches across chunk edges
    split = ids_split(n)
    gen = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):
        seen = [(xb, yb) for xb, yb in split.batches(batch, generator=gen, drop_last=drop_last,
                                                     augment=CIFAR.augment)]
        sizes = [len(yb) for _, yb in seen]
        assert all(s == batch for s in sizes[:-1]) and 0 < sizes[-1] <= batch
        labels = torch.cat([yb for _, yb in seen])
        if drop_last:
            assert len(labels) == n - n % batch and len(set(labels.tolist())) == len(labels)
        else:
            assert sorted(labels.tolist()) == list(range(n))
        # Augmentation moves pixels, never mixes images: each image still holds only its own
        # index and the zero padding.
        for xb, yb in seen:
            for img, label in zip(xb, yb, strict=True):
                assert set(img.unique().tolist()) <= {0, int(label) % 256}
        epochs.append(labels.tolist())
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    # Without a generator: in order, no augmentation needed.
    assert torch.cat([yb for _, yb in split.batches(batch)]).tolist() == list(range(n))


def tutorial_crop_flip(img: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """torchvision's RandomCrop(32, padding=4) at offset (4 + dy, 4 + dx), then the flip."""
    out = TF.crop(TF.pad(img, [4]), 4 + dy, 4 + dx, img.shape[-2], img.shape[-1])
    return TF.hflip(out) if flip else out


def test_crop_and_flip_are_the_tutorials_transforms_with_every_shift_drawn() -> None:
    x, _ = cifar_like(2000, seed=1)
    gen = torch.Generator().manual_seed(0)
    out = augment(x, pad=4, flip=True, generator=gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    drawn = set()
    for img, src in zip(out[:400], x[:400], strict=True):
        matches = [(dy, dx, f) for dy in range(-4, 5) for dx in range(-4, 5) for f in (False, True)
                   if torch.equal(img, tutorial_crop_flip(src, dy, dx, f))]
        assert len(matches) == 1, "each output is exactly one crop (+ flip) of its own input"
        drawn.add(matches[0])
    assert len(drawn) > 120  # of the 162: the (dy, dx, flip) are drawn per image, all over the range
    flips = sum(f for _, _, f in drawn)
    assert 0.3 < flips / len(drawn) < 0.7


def test_flip_is_a_true_mirror_and_a_batch_call_augments_too() -> None:
    x, _ = cifar_like(64, seed=2)
    flip_only = Preprocess(255.0, CIFAR_MEAN, CIFAR_STD, flip=True)
    out = flip_only.augment(x, generator=torch.Generator().manual_seed(0))
    mirrored = [torch.equal(o, s.flip(-1)) for o, s in zip(out, x, strict=True)]
    kept = [torch.equal(o, s) for o, s in zip(out, x, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True)) and 10 < sum(mirrored) < 54
    # The per-batch call (a user's own loop) gives normalised floats of the augmented images.
    batch = CIFAR(x, train=True, generator=torch.Generator().manual_seed(0))
    assert batch.shape == x.shape and batch.dtype == torch.float32
    assert not torch.equal(batch, CIFAR(x, train=False))


def test_padding_is_black_as_in_the_tutorial_and_values_normalise_per_channel() -> None:
    white = torch.full((500, 3, 32, 32), 255, dtype=torch.uint8)
    split = Split(white, torch.zeros(500, dtype=torch.long))
    xb, _ = next(split.batches(500, generator=torch.Generator().manual_seed(0), augment=CIFAR.augment))
    out = CIFAR.normalise(xb)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    pad_value, white_value = (0 - mean) / std, (1 - mean) / std
    is_pad = torch.isclose(out, pad_value.expand_as(out), atol=1e-5)
    is_white = torch.isclose(out, white_value.expand_as(out), atol=1e-5)
    assert bool((is_pad | is_white).all())
    padded_pixels = is_pad[:, 0].flatten(1).sum(1)
    assert padded_pixels.min() == 0 and padded_pixels.max() == 32 * 32 - 28 * 28
    # Padding sits on the borders only: the 24x24 centre is never padding.
    assert not bool(is_pad[:, :, 4:28, 4:28].any())


def test_normalise_is_exact_and_never_touches_the_stored_split() -> None:
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    out = CIFAR.normalise(x)
    expected = (x.double() / 255 - torch.tensor(CIFAR_MEAN).double().view(1, 3, 1, 1)) \
        / torch.tensor(CIFAR_STD).double().view(1, 3, 1, 1)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    assert out.min() < -1.8 and out.max() > 2.0
    stored = torch.rand(4, 3, 8, 8)
    before = stored.clone()
    Preprocess(1.0, (0.5,), (0.25,)).normalise(stored)
    assert torch.equal(stored, before)


@pytest.mark.slow
def test_seeded_epochs_and_training_repeat_exactly() -> None:
    x, y = cifar_like(300, seed=3)
    split = Split(x, y)

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        return list(split.batches(64, generator=gen, augment=CIFAR.augment))

    a, b, c = epoch(5), epoch(5), epoch(6)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    assert not all(torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c, strict=True))

    task = Task("cifar-shaped", SimpleCNN, Split(x[:256], y[:256]), Split(x[256:], y[256:]), batch_size=64,
                preprocess=CIFAR)
    cfg = TrialConfig("sgd", {"lr": 0.01, "momentum": 0.9})
    runs = [train(task, cfg, epochs=2, seed=s).history for s in (1, 1, 2)]
    assert runs[0][-1]["train_loss"] == runs[1][-1]["train_loss"]
    assert runs[0][-1]["train_loss"] != runs[2][-1]["train_loss"]


def test_other_shapes_pass_through_without_augmentation() -> None:
    rows = Split(torch.arange(40, dtype=torch.float32).view(20, 2), torch.arange(20))
    gen = torch.Generator().manual_seed(0)
    labels = torch.cat([yb for _, yb in rows.batches(6, generator=gen, augment=CIFAR.augment)])
    assert sorted(labels.tolist()) == list(range(20))
    xb, yb = next(rows.batches(20, generator=torch.Generator().manual_seed(0), augment=CIFAR.augment))
    assert torch.equal(xb[:, 0], 2.0 * yb.float())  # rows stay with their labels, unchanged


class ViewNet(torch.nn.Module):
    """The tutorial's habit: ``x.view(-1, n)`` on conv activations (fails on channels_last)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(-1, 4 * 32 * 32))


def test_images_train_channels_last_unless_the_model_cannot() -> None:
    x, y = cifar_like(192, seed=4)
    cfg = TrialConfig("sgd", {"lr": 0.01, "momentum": 0.9})
    for build in (SimpleCNN, ViewNet):
        task = Task("cifar-shaped", build, Split(x[:128], y[:128]), Split(x[128:], y[128:]), batch_size=64,
                    preprocess=CIFAR)
        result = train(task, cfg, epochs=1, seed=0)
        assert result.status == "complete" and result.value is not None, build.__name__
    with pytest.raises(RuntimeError):  # what the probe saw: this model cannot take channels_last
        ViewNet().to(memory_format=torch.channels_last)(
            CIFAR.normalise(x[:2], memory_format=torch.channels_last))
    assert CIFAR.normalise(x[:2], memory_format=torch.channels_last).is_contiguous(
        memory_format=torch.channels_last)


@pytest.mark.slow
def test_bench_prints_one_json_object_with_both_pipelines_measured(workdir: Path,
                                                                    capfd: pytest.CaptureFixture[str]) -> None:
    # In this process (the entry point the console script calls); capfd: all that reaches stdout,
    # the DataLoader's worker processes' included.
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--json", "--parts", "data,train", "--data-images", "640", "--train-images", "256",
              "--repeats", "1"])
    out, err = capfd.readouterr()
    assert exc.value.code == 0, err[-2000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1
    bench = json.loads(lines[0])
    for key in ("data_epoch_s", "dataloader_data_epoch_s", "train_epoch_s", "dataloader_train_epoch_s"):
        assert bench[key] > 0, key
    # How much faster is the bench's to report (`autoopt bench`), never a timed test's to judge:
    # here, only that it reports it.
    assert {"data_speedup", "train_speedup"} <= set(bench)
    assert bench["data_images"] == 640 and bench["train_images"] == 256 and bench["device"].startswith("cpu")
    assert bench["options"]["parts"] == ["data", "train"] and "trials_per_hour" not in bench


def test_bench_refuses_an_unknown_part(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "unknown bench part 'nope'" in refused(capsys, "bench", "--parts", "data,nope", folder=workdir)


def test_bench_alone_or_with_options_first_runs_speed(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from autoopt.commands import bench

    asked: list[bench.BenchOptions] = []

    def measured(opts: bench.BenchOptions, on_step: object = None) -> dict[str, object]:
        asked.append(opts)
        return {"device": "cpu", "bench_s": 1.0, "load_before": 0.0, "load_after": 0.0}

    monkeypatch.setattr(bench, "run_bench", measured)
    for args in (["bench", "--json", "--parts", "data"], ["bench", "speed", "--json", "--parts", "data"]):
        code, out, _ = run_main(capsys, *args)
        assert code == 0 and json.loads(out)["device"] == "cpu"
    code, out, _ = run_main(capsys, "bench")
    assert code == 0 and "autoopt bench on cpu" in out
    assert [o.parts for o in asked] == [("data",), ("data",), bench.DEFAULT_PARTS]


@pytest.mark.parametrize(("command", "own", "others"), [
    ("speed", ("--parts", "--data-images", "--json"), ("--sizes", "--tasks", "--storage", "--seeds")),
    ("scale", ("--sizes", "--earlier", "--storage", "--json"), ("--parts", "--tasks", "--seeds")),
    ("prior", ("--tasks", "--seeds", "--time-budget", "--out", "--json"), ("--parts", "--sizes", "--storage")),
])
def test_each_bench_command_shows_only_its_own_options(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, command: str,
                                                       own: tuple[str, ...], others: tuple[str, ...]) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, text, _ = run_main(capsys, "bench", command, "--help")
    assert code == 0
    assert all(name in text for name in own), text
    assert not any(name in text for name in others), text


@pytest.mark.parametrize(("args", "says"), [
    (("--scale", "1000,10000"), "--scale is a command of its own now: autoopt bench scale --sizes 1000,10000"),
    (("--leave-one-out=digits,mnist", "--seeds", "2"),
     "--leave-one-out is a command of its own now: autoopt bench prior --tasks digits,mnist"),
    (("--storage", "postgresql://me:secret@db/x"), "--storage belongs to autoopt bench scale now"),
    (("speed", "--time-budget", "60s"), "--time-budget belongs to autoopt bench prior now"),
])
def test_the_old_bench_modes_name_their_command(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                args: tuple[str, ...], says: str) -> None:
    line = refused(capsys, "bench", *args, folder=workdir)
    assert says in line and "secret" not in line
