"""``autoopt bench``: how fast the data and training paths are, and what a trial costs
beyond its training.

Four measures, each against what a PyTorch user would otherwise run:

* **data**: one epoch of CIFAR-shaped batches (generated uint8 images, CIFAR-10's size by
  default) with the CIFAR-10 augmentation (random crop with 4 pixels of padding, horizontal
  flip) and normalisation: autoopt's device-resident pipeline (``Split.batches`` +
  ``Preprocess``) against the tutorial's ``DataLoader`` of PIL images with ``RandomCrop``,
  ``RandomHorizontalFlip``, ``ToTensor`` and ``Normalize``, on the same device, same batch size.
* **train**: one training epoch of the tutorial's SimpleCNN (forward, backward, SGD step, and
  the same small validation pass), ``autoopt.training.train.train`` against the tutorial's loop over
  that DataLoader.
* **overhead**: a real study through ``autoopt.commands.tuning.run`` (SQLite storage, MLflow on SQLite,
  a local Ray, in a temporary folder) of many short ``digits`` trials.
  ``overhead_s_per_trial = (study_s × concurrency − Σ train_s) / trials``: the slot-seconds a
  trial costs beyond its training (dispatch, storage, pruning round trips, tracking). The
  study runs from the first trial's start on a worker to the last trial recorded both in
  Optuna and in MLflow; the one-time costs around it (starting Ray, creating both databases, starting and
  warming the workers: ``startup_s``; choosing and writing the recommendation, stopping Ray:
  ``finish_s``) are reported apart, and ``overhead_s_per_trial_all_in`` spreads them over the
  trials too. ``train_s`` is what ``train`` measures per epoch (training steps and the
  validation pass), not the callbacks that report to Optuna and MLflow.
* **trials_per_hour**: the ``digits`` study at its default settings (``studies/digits.yaml``),
  without the confirmation runs, over the same study span; ``trials_per_hour_all_in`` counts
  its start-up and finish too.
* **packing** (a GPU only, not run by default): the overhead study at a whole GPU per trial,
  then at ``gpus_per_trial`` (0.25: four per GPU), and the throughput gained.

Timings are the best of ``repeats`` interleaved runs (autoopt and the DataLoader alternate),
so that a load that comes and goes on a shared machine biases neither side.

>>> BenchOptions().data_images
50000
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset  # autoopt.data imports torch anyway

from autoopt.data import Preprocess, Split
from autoopt.dispatch.gpus import GPU_PACK
from autoopt.errors import UsageError
from autoopt.space import TrialConfig
from autoopt.spec import load_spec
from autoopt.study.record import record
from autoopt.tasks.base import Task
from autoopt.tasks.models import SimpleCNN
from autoopt.tracking import child_runs, latest_study_run
from autoopt.training.train import train

if TYPE_CHECKING:
    import torch
from autoopt.commands.tuning import run

log = logging.getLogger(__name__)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR_TRAIN_IMAGES = 50_000
PARTS = ("data", "train", "overhead", "digits", "packing")
DEFAULT_PARTS = ("data", "train", "overhead", "digits")
TUTORIAL_SGD = {"lr": 0.001, "momentum": 0.9}  # the tutorial's optimizer
VAL_IMAGES = 512  # the validation pass both training loops end an epoch with


@dataclass
class BenchOptions:
    """What ``autoopt bench`` measures, and how big. The defaults run in a few minutes on a
    2-core CPU; ``full_cifar`` and ``device="cuda"`` are for a GPU machine."""

    device: str = "auto"
    data_images: int = CIFAR_TRAIN_IMAGES
    train_images: int | None = None  # None: 2,048 on a CPU, all of data_images on a GPU
    batch_size: int = 128
    loader_workers: int | None = None  # None: 0 on a CPU (a trial's one core), 2 on a GPU (the tutorial's)
    threads: int = 1  # torch threads on a CPU: what a trial with one CPU gets
    repeats: int = 2
    compile: bool = False
    trials: int = 60
    epochs: int = 2
    concurrency: int | None = None
    gpus_per_trial: float = 0.0
    ray_address: str | None = None
    parts: tuple[str, ...] = DEFAULT_PARTS
    seed: int = 0

    def check(self) -> None:
        """Bad options are a ``UsageError`` naming the fix."""
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise UsageError(f"unknown bench part {unknown[0]!r}; parts: {', '.join(PARTS)}")
        for name in ("data_images", "batch_size", "repeats", "trials", "epochs", "threads"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.train_images is not None and self.train_images < 1:
            raise UsageError("--train-images must be at least 1")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise UsageError(f"unknown device {self.device!r}; use auto, cpu or cuda")
        gpus = self.gpus_per_trial
        if gpus < 0 or (gpus > 1 and gpus != int(gpus)):
            raise UsageError("--gpus-per-trial: a fraction of one GPU (0.25 packs four) or a whole number")


def resolve_device(name: str) -> Any:
    """``auto`` is the GPU when there is one; asking for a missing GPU is a ``UsageError``."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible here; use --device cpu")
    return torch.device(name)


def cifar_like(n: int, seed: int = 0) -> tuple[Any, Any]:
    """``n`` generated CIFAR-shaped images (uint8, N×3×32×32) and labels in 0..9."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x, y


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _threads(device: torch.device, threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- the tutorial's pipeline ------------------------------------------------------------------

class PILImages(Dataset[tuple[Any, int]]):
    """A dataset served the way torchvision serves CIFAR-10: an HWC uint8 array, each item turned
    into a PIL image and passed through ``transform``."""

    def __init__(self, images_hwc: Any, labels: Any, transform: Callable[[Any], Any]) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def tutorial_loader(x: Any, y: Any, *, batch_size: int, workers: int, train: bool) -> Any:
    """The tutorial's ``DataLoader``: PIL images, ``ToTensor`` and ``Normalize``, with the
    CIFAR-10 augmentation (``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``) for training."""
    import torch
    import torchvision.transforms as T

    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    transform = T.Compose([*steps, T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    data = PILImages(x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy(), transform)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=train, num_workers=workers)


def tutorial_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any, val_loader: Any,
                   device: torch.device) -> float:
    """One epoch of the tutorial's training loop, then a validation pass; returns the mean loss."""
    import torch
    import torch.nn.functional as F

    model.train()
    running = 0.0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        running += loss.item()
    model.eval()
    with torch.no_grad():
        for inputs, labels in val_loader:
            model(inputs.to(device)).argmax(1).eq(labels.to(device)).sum().item()
    return running / max(1, len(loader))


# -- the measures -----------------------------------------------------------------------------

def _best(times: list[float]) -> float:
    return min(times) if times else math.nan


def bench_data(opts: BenchOptions, device: torch.device) -> dict[str, Any]:
    """Seconds per epoch of augmented, normalised CIFAR-shaped batches, both ways."""
    import torch


    x, y = cifar_like(opts.data_images, opts.seed)
    split = Split(x, y).to(device)
    prep = Preprocess(255.0, CIFAR_MEAN, CIFAR_STD, crop_pad=4, flip=True)
    gen = torch.Generator(device=device).manual_seed(opts.seed)
    workers = _loader_workers(opts, device)
    loader = tutorial_loader(x, y, batch_size=opts.batch_size, workers=workers, train=True)

    def ours() -> float:
        _sync(device)
        t0 = time.perf_counter()
        for xb, _ in split.batches(opts.batch_size, generator=gen, augment=prep.augment):
            prep.normalise(xb)
        _sync(device)
        return time.perf_counter() - t0

    def theirs() -> float:
        t0 = time.perf_counter()
        for xb, yb in loader:
            xb.to(device), yb.to(device)
        _sync(device)
        return time.perf_counter() - t0

    ours()  # warm-up: allocator, kernels
    ours_s, theirs_s = [], []
    for _ in range(opts.repeats):
        ours_s.append(ours())
        theirs_s.append(theirs())
    best, base = _best(ours_s), _best(theirs_s)
    return {"data_epoch_s": round(best, 4), "dataloader_data_epoch_s": round(base, 4),
            "data_speedup": round(base / best, 2), "data_images": opts.data_images, "loader_workers": workers}


def _loader_workers(opts: BenchOptions, device: torch.device) -> int:
    if opts.loader_workers is not None:
        return opts.loader_workers
    return 0 if device.type == "cpu" else 2


def bench_train(opts: BenchOptions, device: torch.device) -> dict[str, Any]:
    """Seconds per SimpleCNN training epoch, ``autoopt.training.train.train`` against the tutorial's loop."""
    import torch


    n = opts.train_images or (2048 if device.type == "cpu" else opts.data_images)
    x, y = cifar_like(n + VAL_IMAGES, opts.seed)
    xt, yt, xv, yv = x[:n], y[:n], x[n:], y[n:]
    prep = Preprocess(255.0, CIFAR_MEAN, CIFAR_STD, crop_pad=4, flip=True)
    task = Task("cifar-shaped", SimpleCNN, Split(xt, yt).to(device), Split(xv, yv).to(device),
                batch_size=opts.batch_size, preprocess=prep)
    config = TrialConfig("sgd", dict(TUTORIAL_SGD))
    workers = _loader_workers(opts, device)
    loader = tutorial_loader(xt, yt, batch_size=opts.batch_size, workers=workers, train=True)
    val_loader = tutorial_loader(xv, yv, batch_size=opts.batch_size, workers=workers, train=False)

    def ours(epochs: int = 1) -> float:
        result = train(task, config, epochs=epochs, seed=opts.seed, compile_model=opts.compile)
        return result.history[-1]["epoch_s"]

    def theirs() -> float:
        torch.manual_seed(opts.seed)
        model = SimpleCNN().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=TUTORIAL_SGD["lr"], momentum=TUTORIAL_SGD["momentum"])
        _sync(device)
        t0 = time.perf_counter()
        tutorial_epoch(model, optimizer, loader, val_loader, device)
        _sync(device)
        return time.perf_counter() - t0

    # Warm-up, not timed: the first epoch pays kernel selection (and compilation with --compile).
    ours(epochs=2 if opts.compile or device.type == "cuda" else 1)
    ours_s, theirs_s = [], []
    for _ in range(opts.repeats):
        ours_s.append(ours(epochs=2 if opts.compile else 1))
        theirs_s.append(theirs())
    best, base = _best(ours_s), _best(theirs_s)
    return {"train_epoch_s": round(best, 4), "dataloader_train_epoch_s": round(base, 4),
            "train_speedup": round(base / best, 3), "train_images": n, "compile": opts.compile}


@contextlib.contextmanager
def _in_folder(path: Path) -> Iterator[None]:
    """Run inside ``path``: ``tune`` writes its recommendation and MLflow artifacts beside it."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@dataclass(frozen=True)
class StudyTiming:
    """One timed study (``study_timing``): wall seconds by stage, the trials' training seconds,
    the trials by state."""

    trials: int
    epochs: int
    concurrency: int
    epochs_trained: int
    study_s: float
    startup_s: float
    finish_s: float
    mlflow_lag_s: float
    train_s: float
    states: dict[str, int]
    pruner: str


def study_timing(task: str, *, concurrency: int, trials: int | None = None, epochs: int | None = None,
                 gpus_per_trial: float = 0.0, ray_address: str | None = None, seed: int = 0) -> StudyTiming:
    """Run a study through ``autoopt.commands.tuning.run`` in a temporary folder (SQLite storage, MLflow
    on SQLite, Ray local unless ``ray_address``) with ``concurrency`` trials at once, and time it.

    ``study_s`` spans the first trial's start on a worker (its MLflow run opened) to the last
    trial recorded (told to Optuna, and its MLflow run closed); ``startup_s`` comes before it,
    ``finish_s`` after it; ``train_s`` is the sum of the trials' ``train_s``.
    """
    import optuna


    with tempfile.TemporaryDirectory(prefix="autoopt-bench-") as tmp, _in_folder(Path(tmp)):
        storage, tracking = f"sqlite:///{tmp}/autoopt.db", f"sqlite:///{tmp}/mlflow.db"
        spec = load_spec(task, None, trials=trials, epochs=epochs, concurrency=concurrency, confirm=False,
                         storage=storage, mlflow_uri=tracking, out=str(Path(tmp) / "recommendations"),
                         study_name=f"bench-{task}", gpus_per_trial=gpus_per_trial or None,
                         ray_address=ray_address, seed=seed)
        t0 = time.time()
        run(spec)
        t_end = time.time()
        study = optuna.load_study(study_name=spec.name, storage=storage)
        done = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None]
        if not done:
            raise RuntimeError(f"the bench study of {task} finished no trial")
        asked = min(t.datetime_start for t in done if t.datetime_start is not None).timestamp()
        last_told = max(t.datetime_complete for t in done if t.datetime_complete is not None).timestamp()
        parent = latest_study_run(tracking, spec.task, spec.name)
        runs = child_runs(tracking, spec.task, parent) if parent else []
        ends = [r["end_time_ms"] / 1000 for r in runs if r.get("end_time_ms")]
        # The first trial is asked while the workers warm up; the study starts when it starts
        # on a worker (its run opens there), the warm-up is start-up.
        starts = [r["start_time_ms"] / 1000 for r in runs if r.get("start_time_ms")]
        first = max(asked, min(starts)) if starts else asked
        last = max([last_told, *ends])
        states: dict[str, int] = {}
        for t in done:
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        return StudyTiming(trials=len(done), epochs=spec.epochs, concurrency=max(1, min(concurrency, spec.trials)),
                           epochs_trained=sum(len(t.intermediate_values) for t in done),
                           study_s=last - first, startup_s=first - t0, finish_s=t_end - last,
                           mlflow_lag_s=max(0.0, last - last_told),
                           train_s=sum(record(t).train_s or 0.0 for t in done), states=states, pruner=spec.pruner)


def default_concurrency(device: torch.device, gpus_per_trial: float) -> int:
    """What a study runs at once here: one trial per CPU, or 1/gpus_per_trial per GPU."""
    import torch

    from autoopt.dispatch.pool import slots

    if gpus_per_trial > 0 and device.type == "cuda":
        return slots(torch.cuda.device_count(), gpus_per_trial)
    return slots(os.cpu_count() or 1, 1.0)


def bench_overhead(opts: BenchOptions, device: torch.device) -> dict[str, Any]:
    """Slot-seconds per trial beyond training, over a study of many short digits trials."""
    concurrency = opts.concurrency or default_concurrency(device, opts.gpus_per_trial)
    t = study_timing("digits", trials=opts.trials, epochs=opts.epochs, concurrency=concurrency,
                     gpus_per_trial=opts.gpus_per_trial, ray_address=opts.ray_address, seed=opts.seed)
    n, k = t.trials, t.concurrency
    per_trial = (t.study_s * k - t.train_s) / n
    all_in = ((t.startup_s + t.study_s + t.finish_s) * k - t.train_s) / n
    return {"overhead_s_per_trial": round(per_trial, 4), "overhead_trials": n, "overhead_epochs": t.epochs,
            "overhead_concurrency": k, "overhead_study_s": round(t.study_s, 2),
            "overhead_train_s": round(t.train_s, 2), "overhead_states": t.states,
            "startup_s": round(t.startup_s, 2), "finish_s": round(t.finish_s, 2),
            "mlflow_lag_s": round(t.mlflow_lag_s, 3), "overhead_s_per_trial_all_in": round(all_in, 4)}


def bench_digits(opts: BenchOptions, device: torch.device) -> dict[str, Any]:
    """Trials per hour of the digits study at its default settings (no confirmation runs)."""
    # The default concurrency is what fits; the bench names it, to count slot-seconds right.
    concurrency = opts.concurrency or default_concurrency(device, opts.gpus_per_trial)
    t = study_timing("digits", concurrency=concurrency, gpus_per_trial=opts.gpus_per_trial,
                     ray_address=opts.ray_address, seed=opts.seed)
    n = t.trials
    all_in = t.startup_s + t.study_s + t.finish_s
    return {"trials_per_hour": round(3600 * n / t.study_s, 1),
            "trials_per_hour_all_in": round(3600 * n / all_in, 1), "digits_trials": n,
            "digits_epochs": t.epochs, "digits_concurrency": t.concurrency,
            "digits_study_s": round(t.study_s, 2), "digits_states": t.states,
            "digits_epochs_trained": t.epochs_trained,
            "digits_epochs_saved_by_pruning": n * t.epochs - t.epochs_trained}


def bench_packing(opts: BenchOptions, device: torch.device) -> dict[str, Any]:
    """Several trials per GPU: the overhead study's trials at a whole GPU each, then packed at
    ``gpus_per_trial`` (0.25 unless a fraction is given), with throughput of each."""
    if device.type != "cuda":
        raise UsageError("the packing part needs a GPU (--device cuda)")
    fraction = opts.gpus_per_trial if 0 < opts.gpus_per_trial < 1 else GPU_PACK
    out: dict[str, Any] = {"packing_fraction": fraction}
    for label, gpus in (("whole", 1.0), ("packed", fraction)):
        t = study_timing("digits", concurrency=default_concurrency(device, gpus), trials=opts.trials,
                         epochs=opts.epochs, gpus_per_trial=gpus, ray_address=opts.ray_address, seed=opts.seed)
        out[f"packing_{label}_concurrency"] = t.concurrency
        out[f"packing_{label}_trials_per_hour"] = round(3600 * t.trials / t.study_s, 1)
    out["packing_speedup"] = round(out["packing_packed_trials_per_hour"] / out["packing_whole_trials_per_hour"], 2)
    return out


def run_bench(opts: BenchOptions, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the parts of the bench in ``opts.parts``; returns one flat dict (the JSON of ``--json``)."""
    import torch

    opts.check()
    device = resolve_device(opts.device)
    if device.type == "cuda" and not opts.gpus_per_trial:
        opts = replace(opts, gpus_per_trial=GPU_PACK)  # the studies' trials on the GPU, as tune packs them
    started = time.perf_counter()
    out: dict[str, Any] = {"device": _describe(device), "batch_size": opts.batch_size,
                           "repeats": opts.repeats, "threads": opts.threads if device.type == "cpu" else None,
                           "load_before": _load(), "started_at": datetime.now().isoformat(timespec="seconds")}
    steps: list[tuple[str, str, Callable[[BenchOptions, Any], dict[str, Any]]]] = [
        ("data", "data pipeline: autoopt vs the tutorial's DataLoader", bench_data),
        ("train", "SimpleCNN training epoch: autoopt vs the tutorial's loop", bench_train),
        ("overhead", f"overhead: a study of {opts.trials} short digits trials", bench_overhead),
        ("digits", "trials per hour: the digits study at its defaults", bench_digits),
        ("packing", "several trials per GPU: whole GPUs, then packed", bench_packing),
    ]
    for name, what, fn in steps:
        if name not in opts.parts:
            continue
        if on_step is not None:
            on_step(what)
        if name in ("data", "train"):
            with _threads(device, opts.threads):
                out.update(fn(opts, device))
        else:
            out.update(fn(opts, device))
    out["load_after"] = _load()
    out["bench_s"] = round(time.perf_counter() - started, 1)
    out["torch"] = torch.__version__
    out["options"] = {k: v for k, v in asdict(opts).items() if k != "parts"} | {"parts": list(opts.parts)}
    return out


def _describe(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


__all__ = ["BenchOptions", "bench_data", "bench_digits", "bench_overhead", "bench_train", "cifar_like",
           "run_bench", "study_timing", "tutorial_loader"]
