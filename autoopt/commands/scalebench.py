"""``autoopt bench scale``: what the driver, the workers, the prior and the report cost as a
study and its database grow.

For each study size N (``--sizes 1000,10000``) a study of N - ``probe`` trivial trials is
filled straight into the storage (as ``tune`` records them: the config, its params), then
``tune`` runs the last ``probe`` trials on it (a linear model on 128 rows: a trial costs almost
only overhead). Measured:

* ``ms_per_trial``: the wall time per trial over the probe (trials finished one after the
  other, from their completion times), and ``growth_per_1000``: how many ms a trial gains per
  thousand trials in the study, between the smallest and the largest N;
* ``first_trial_s``: from calling ``tune`` to the first trial's start, for a new study on a
  database holding M earlier studies (``--earlier 0,500``, copies of a finished study of
  ``earlier_trials`` trials);
* ``zero_shot_s``: ``recommend --from-database`` (the prior's zero-shot answer) on that database;
* ``report_s``: ``autoopt report`` on the study of N trials;
* ``driver_rss_mb`` and ``worker_rss_mb``: peak resident memory of the driver (this process;
  the fill and the read back run in a helper process) and of the workers (each reports its own
  with every trial).

The storage is ``--storage`` (PostgreSQL is what it is for; each size gets its own study, and
studies named ``scale-*`` there are replaced), MLflow a SQLite file in a temporary folder.
"""

from __future__ import annotations

import contextlib
import logging
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoopt.data import Preprocess, Split
from autoopt.tasks.base import Task

log = logging.getLogger(__name__)

TASK = "autoopt.commands.scalebench:trivial"
REPORT_TIMEOUT_S = 300  # a report that takes longer is shown as "> 300"


def trivial(data_dir: Any = None) -> Task:
    """A task whose trial is nearly all overhead: a linear model on 128 rows of 6 features."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, generator=g)
    y = (x @ torch.randn(6, 1, generator=g)).squeeze(1).gt(0).long()
    split = Split(x, y)
    return Task("trivial", lambda: torch.nn.Linear(6, 2), split, split, split, batch_size=128,
                preprocess=Preprocess(scale=1.0))


@dataclass(frozen=True)
class ScaleOptions:
    storage: str
    sizes: tuple[int, ...] = (1000, 10_000)
    earlier: tuple[int, ...] = (0, 500)
    probe: int = 200
    earlier_trials: int = 30
    concurrency: int = 2


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _spec(opts: ScaleOptions, name: str, trials: int, tmp: Path, prior: str = "none") -> Any:
    from autoopt.spec import load_spec

    return load_spec(TASK, None, trials=trials, epochs=1, concurrency=opts.concurrency, confirm=False,
                     storage=opts.storage, mlflow_uri=f"sqlite:///{tmp / 'mlflow.db'}", study_name=name,
                     out=str(tmp / "recommendations"), prior=prior)


def _fresh(storage: Any, name: str) -> None:
    import optuna

    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=storage)


def fill(opts: ScaleOptions, name: str, n: int, seed: int = 0) -> None:
    """A study ``name`` of ``n`` finished trials as ``tune`` records them, written in one go."""
    import optuna

    from autoopt.space import suggest_config
    from autoopt.study import open_storage, open_study
    from autoopt.study.record import S_PER_EPOCH, write_config

    spec = _spec(opts, name, n, Path(tempfile.gettempdir()))
    space = spec.search_space()
    scratch = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = random.Random(seed)
    for _ in range(n):
        trial = scratch.ask()
        config = suggest_config(trial, space)
        write_config(trial, config.to_dict())
        trial.set_user_attr(S_PER_EPOCH, 0.01)
        scratch.tell(trial, 0.5 + 0.5 * rng.random())
    storage = open_storage(opts.storage, heartbeat=False)
    _fresh(storage, name)
    study = open_study(storage, name, direction="maximize", metric="val_accuracy")
    study.add_trials(scratch.trials)


@dataclass(frozen=True)
class SizeRow:
    """A study of ``trials`` trials: the driver's ms per trial at its end, the report's seconds
    (None: past ``REPORT_TIMEOUT_S``), the driver's and the workers' peak memory."""

    trials: int
    ms_per_trial: float
    report_s: float | None
    driver_rss_mb: float
    worker_rss_mb: float | None


@dataclass(frozen=True)
class EarlierRow:
    """A new study beside ``earlier`` earlier ones: its first trial's latency, the zero-shot answer's."""

    earlier: int
    first_trial_s: float
    zero_shot_s: float


@dataclass(frozen=True)
class ScaleResult:
    """What ``autoopt bench scale`` measured; ``to_dict`` is its ``--json``."""

    storage_backend: str
    probe: int
    sizes: list[SizeRow] = field(default_factory=list)
    earlier: list[EarlierRow] = field(default_factory=list)

    @property
    def growth_ms_per_1000(self) -> float | None:
        """ms per trial added per 1,000 trials in the study, from the smallest size to the largest."""
        first, last = (self.sizes[0], self.sizes[-1]) if self.sizes else (None, None)
        if first is None or last is None or last.trials <= first.trials:
            return None
        return round((last.ms_per_trial - first.ms_per_trial) / ((last.trials - first.trials) / 1000), 2)

    def to_dict(self) -> dict[str, Any]:
        growth = self.growth_ms_per_1000
        return asdict(self) | ({"growth_ms_per_1000": growth} if growth is not None else {})


def probe(opts: ScaleOptions, n: int, tmp: Path) -> SizeRow:
    """A study of ``n`` trials: all but the probe filled, the probe run by ``tune``; its cost per
    trial, its report's time and the memory of the driver and the workers. The fill and the
    read of the probe's times run in a helper process: the driver's peak memory (this process's,
    at the end of ``tune``) is what ``tune`` held, not what the fill or a read of every trial did."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from autoopt.commands.tuning import run
    from autoopt.study import open_storage

    name = f"scale-{n}"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as helper:
        helper.submit(fill, opts, name, n - opts.probe).result()
        run(_spec(opts, name, n, tmp))
        driver_mb = _rss_mb()
        per, workers = helper.submit(_probe_times, opts, name, n).result()
    report_s = _report_s(opts, name, tmp / f"report-{n}")
    _fresh(open_storage(opts.storage, heartbeat=False), name)  # not an earlier study of what follows
    return SizeRow(trials=n, ms_per_trial=round(per * 1000, 1),
                   report_s=None if report_s is None else round(report_s, 1),
                   driver_rss_mb=driver_mb, worker_rss_mb=max(workers, default=None))


def _probe_times(opts: ScaleOptions, name: str, n: int) -> tuple[float, list[float]]:
    """The probe's seconds per trial (from its trials' completion times, the workers' first
    trials left out) and the workers' peak memory as each trial recorded it."""
    import optuna

    from autoopt.study import open_storage
    from autoopt.study.record import record

    study = optuna.load_study(study_name=name, storage=open_storage(opts.storage, heartbeat=False))
    ran = [t for t in study.get_trials(deepcopy=False) if t.number >= n - opts.probe and t.datetime_complete]
    done = sorted(t.datetime_complete.timestamp() for t in ran if t.datetime_complete)
    skip = min(10, len(done) // 4)  # the workers' first trials warm them up
    per = (done[-1] - done[skip]) / max(1, len(done) - 1 - skip) if len(done) > skip + 1 else float("nan")
    return per, [float(record(t).worker.get("rss_mb") or 0) for t in ran]


def _report_s(opts: ScaleOptions, name: str, out: Path) -> float | None:
    """Seconds of ``autoopt report`` on the study (a process of its own, as a user runs it);
    None when it did not finish within ``REPORT_TIMEOUT_S``."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "autoopt", "report", "--task", TASK, "--study", name, "--storage", opts.storage,
           "--out", str(out)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=REPORT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    return time.perf_counter() - started


def earlier(opts: ScaleOptions, m: int, tmp: Path) -> EarlierRow:
    """A database of ``m`` earlier studies (copies of one finished study): a new study's first
    trial, and the zero-shot answer."""
    import optuna

    from autoopt.commands.tuning import run
    from autoopt.screen.prior import zero_shot
    from autoopt.study import open_storage
    from autoopt.study.pgstats import refresh

    storage = open_storage(opts.storage, heartbeat=False)
    for summary in optuna.get_all_study_summaries(storage):
        if summary.study_name.startswith(("scale-earlier-", "scale-new-")):
            _fresh(storage, summary.study_name)
    if m:
        run(_spec(opts, "scale-earlier-0", opts.earlier_trials, tmp))
        for i in range(1, m):
            optuna.copy_study(from_study_name="scale-earlier-0", from_storage=storage, to_storage=storage,
                              to_study_name=f"scale-earlier-{i}")
            if i % 50 == 0:  # as autovacuum would, where it is off: Optuna's copies never refresh them
                refresh(storage.engine)
    name = f"scale-new-{m}"
    started = time.time()
    run(_spec(opts, name, 4, tmp, prior="auto"))
    study = optuna.load_study(study_name=name, storage=storage)
    first = min(t.datetime_start.timestamp() for t in study.get_trials(deepcopy=False) if t.datetime_start)
    t0 = time.perf_counter()
    zero_shot(opts.storage, "scale:other")
    return EarlierRow(earlier=m, first_trial_s=round(first - started, 2),
                      zero_shot_s=round(time.perf_counter() - t0, 2))


def run_scale(opts: ScaleOptions, on_step: Callable[[str], None] | None = None) -> ScaleResult:
    """Every size and every count of earlier studies (see the module)."""
    step = on_step or (lambda _what: None)
    out = ScaleResult(storage_backend=opts.storage.split(":", 1)[0], probe=opts.probe)
    with tempfile.TemporaryDirectory(prefix="autoopt-scale-") as folder:
        tmp = Path(folder)
        for n in opts.sizes:
            step(f"a study of {n} trials")
            out.sizes.append(probe(opts, n, tmp))
        for m in opts.earlier:
            step(f"a new study beside {m} earlier studies")
            out.earlier.append(earlier(opts, m, tmp))
    return out


def command(sizes: str, earlier: str, storage: str | None, *, as_json: bool, out: Any, err: Any) -> None:
    """``autoopt bench scale``: parse, run, print (a table, or one JSON object)."""
    import json
    import os

    from rich.table import Table

    from autoopt.errors import UsageError

    def ints(text: str, what: str) -> tuple[int, ...]:
        try:
            return tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise UsageError(f"{what} takes whole numbers, comma-separated (e.g. 1000,10000), not {text!r}") from None

    url = storage or os.environ.get("AUTOOPT_STORAGE")
    if not url:
        raise UsageError("bench scale fills a storage: give --storage postgresql+psycopg://... (or AUTOOPT_STORAGE)")
    opts = ScaleOptions(storage=url, sizes=ints(sizes, "--sizes"), earlier=ints(earlier, "--earlier"))
    if min(opts.sizes, default=0) <= opts.probe:
        raise UsageError(f"--sizes: each study size must exceed the {opts.probe} trials it runs")
    result = run_scale(opts, on_step=lambda what: err.print(f"bench: {what} ...", highlight=False))
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    table = Table(title=f"autoopt bench scale on {result.storage_backend}")
    for col in ("trials", "ms per trial", "report (s)", "driver RSS (MiB)", "worker RSS (MiB)"):
        table.add_column(col, justify="right")
    for r in result.sizes:
        table.add_row(str(r.trials), f"{r.ms_per_trial:.0f}", _seconds(r.report_s),
                      f"{r.driver_rss_mb:.0f}", f"{r.worker_rss_mb or 0:.0f}")
    out.print(table)
    for e in result.earlier:
        out.print(f"{e.earlier} earlier studies: first trial {e.first_trial_s:.1f} s, "
                  f"zero-shot answer {e.zero_shot_s:.2f} s", highlight=False)
    if result.growth_ms_per_1000 is not None:
        out.print(f"growth: {result.growth_ms_per_1000:+.2f} ms per trial per 1,000 trials", highlight=False)


def _seconds(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else f"> {REPORT_TIMEOUT_S}"
