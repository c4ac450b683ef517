"""The ``autoopt`` command: parse, validate, call the API, print. No logic of its own.

Exit codes: 0 done, 1 the run failed, 2 bad input (one line naming the fix, click's own
errors included), 130 Ctrl-C. Options shared by several commands are defined once, below, as
``Annotated`` aliases; ``--help`` shows every default and fits 80 columns.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from functools import wraps
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from autoopt.base.redact import mask_url, redact

# Light modules only (the standard library, typer, rich, yaml): each command imports what pulls
# torch, Ray, MLflow or Optuna itself, so --help, --version, tasks and recommend answer at once.
from autoopt.catalog import SOURCES, check_task_name
from autoopt.commands.progress import print_comparison, print_recommendation
from autoopt.errors import StorageDown, StudyStopped, UsageError
from autoopt.space import PRUNERS, SAMPLERS

if TYPE_CHECKING:
    from autoopt.commands.tuning import Prepared

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Pick the optimizer, its settings and its schedule for a PyTorch task.")
out = Console(emoji=False)  # a task named module:train is not the :train: emoji
err = Console(stderr=True, emoji=False)


Sampler = StrEnum("Sampler", [(name, name) for name in SAMPLERS])  # type: ignore[misc]


Pruner = StrEnum("Pruner", [(name, name) for name in PRUNERS])  # type: ignore[misc]


class Format(StrEnum):
    json = "json"
    yaml = "yaml"
    python = "python"


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the API's exceptions into one line and an exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError as exc:
            _fail(str(exc))
        except StorageDown as exc:
            _fail(f"{exc}; finished trials are kept, run the same command again when the database is back", 1)
        except StudyStopped as exc:
            _fail(str(exc), 1)
        except KeyboardInterrupt:
            err.print("interrupted: the study is saved; run the same command again to finish it")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as exc:
            if os.environ.get("AUTOOPT_DEBUG"):
                raise
            # A library's message may quote a URL with its password.
            _fail(f"{type(exc).__name__}: {redact(str(exc))}", 1)

    return wrapper


def _fail(message: str, code: int = 2) -> None:
    # One line, escaped: rich would eat "[modern]" in a message as markup.
    text = " ".join(message.split())
    err.print(f"[red]error:[/red] {escape(text)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def _setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autoopt")
    except PackageNotFoundError:  # a source tree that is not installed
        from autoopt import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        print(f"autoopt {_installed_version()}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", help="print autoopt's version and exit", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    # No docstring: the app's help stays the one given to typer.Typer.
    pass


# --- options shared between commands ---------------------------------------------------------
# Defaults that come from the environment or a study file are spelt out as text (show_default):
# the help shows them without rich reading brackets as markup.

# A command's --help lists its common options first (click's own panel, "Options"), then where
# it runs and stores (CLUSTER), then what rarely needs changing (EXPERT).
CLUSTER, EXPERT = "Storage and cluster", "Expert"

TaskOpt = Annotated[str, typer.Option("--task", "-t", help="digits, mnist, cifar10, digits_lstm, mnist_lstm "
                                                           "or module:function")]
OptionalTaskOpt = Annotated[str | None, typer.Option(
    "--task", "-t", help="digits, mnist, cifar10, digits_lstm, mnist_lstm or module:function",
    show_default="the study file's task")]
StorageOpt = Annotated[str | None, typer.Option(
    help="SQLAlchemy URL of the Optuna storage", show_default="AUTOOPT_STORAGE, else sqlite:///autoopt.db",
    rich_help_panel=CLUSTER)]
StudyNameOpt = Annotated[str | None, typer.Option(
    "--study", help="study name", show_default="the task name", rich_help_panel=CLUSTER)]
MlflowOpt = Annotated[str | None, typer.Option(
    help="MLflow tracking URI", show_default="MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
    rich_help_panel=CLUSTER)]
RayOpt = Annotated[str | None, typer.Option(
    help="join this Ray cluster", show_default="RAY_ADDRESS, else a local Ray", rich_help_panel=CLUSTER)]
GpusOpt = Annotated[float | None, typer.Option(
    help="GPUs per trial (0.25 packs four per GPU)", show_default="0.25 where Ray sees a GPU, else 0",
    rich_help_panel=CLUSTER)]
CpusOpt = Annotated[float | None, typer.Option(help="CPUs per trial", show_default="1", rich_help_panel=CLUSTER)]
ConcurrencyOpt = Annotated[int | None, typer.Option(
    help="trials in flight", show_default="what the free CPUs or GPUs fit", rich_help_panel=CLUSTER)]
BatchSizeOpt = Annotated[int | None, typer.Option(
    help="override the task's batch size", show_default="the task's", rich_help_panel=EXPERT)]
DataDirOpt = Annotated[str | None, typer.Option(
    help="data folder", show_default="AUTOOPT_DATA, else ~/.cache/autoopt/data", rich_help_panel=CLUSTER)]
CompileOpt = Annotated[bool | None, typer.Option(
    "--compile/--no-compile", help="torch.compile the model", show_default="no", rich_help_panel=EXPERT)]
EpochsOpt = Annotated[int | None, typer.Option(help="epochs per trial", show_default="5, or the study file's epochs")]
SeedOpt = Annotated[int | None, typer.Option(help="seed of the sampler and the trials", show_default="0")]


# --- tune ------------------------------------------------------------------------------------


@app.command()
@_errors
def tune(
    task: OptionalTaskOpt = None,
    study_file: Annotated[str | None, typer.Option(help="a study YAML file", show_default="studies/<task>.yaml")
                          ] = None,
    trials: Annotated[int | None, typer.Option(help="the study's trials in all; not given, the search gets these "
                                               "and the screen of published defaults comes on top",
                                               show_default="20, or the study file's trials")] = None,
    epochs: EpochsOpt = None,
    time_budget: Annotated[str | None, typer.Option(
        help="the whole command, launch to exit, ends within this (90s, 20m, 2h) with a confirmed pick",
        show_default="none")] = None,
    quick: Annotated[bool | None, typer.Option(
        "--quick", help="screen the prior's first 3 families and its warm starts, confirm; no search",
        show_default="no")] = None,
    optimizers: Annotated[str | None, typer.Option(help="families (sgd,adam) or a preset: all, classic, modern",
                                                   show_default="all")] = None,
    seed: SeedOpt = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="where <study>.json goes",
                                                show_default="recommendations")] = None,
    storage: StorageOpt = None,
    study: StudyNameOpt = None,
    mlflow_uri: MlflowOpt = None,
    ray_address: RayOpt = None,
    gpus_per_trial: GpusOpt = None,
    cpus_per_trial: CpusOpt = None,
    concurrency: ConcurrencyOpt = None,
    data_dir: DataDirOpt = None,
    timeout: Annotated[float | None, typer.Option(help="stop starting trials after this many seconds",
                                                  show_default="none", rich_help_panel=EXPERT)] = None,
    prior: Annotated[str | None, typer.Option(
        help="order the screen and warm-start from the storage's earlier studies: auto, none or STUDY,STUDY",
        show_default="auto", rich_help_panel=EXPERT)] = None,
    schedulers: Annotated[str | None, typer.Option(help="e.g. none,cosine,onecycle", show_default="all six",
                                                   rich_help_panel=EXPERT)] = None,
    sampler: Annotated[Sampler | None, typer.Option(help="Optuna sampler", show_default="tpe",
                                                    rich_help_panel=EXPERT)] = None,
    pruner: Annotated[Pruner | None, typer.Option(help="Optuna pruner", show_default="median",
                                                  rich_help_panel=EXPERT)] = None,
    batch_size: BatchSizeOpt = None,
    max_slowdown: Annotated[float | None, typer.Option(
        help="leave configs slower per epoch than R x the fastest baseline out of the pick", metavar="R",
        show_default="no limit", rich_help_panel=EXPERT)] = None,
    confirm: Annotated[bool | None, typer.Option("--confirm/--no-confirm", show_default="confirm",
                                                 help="retrain the best configs and baselines on seeds",
                                                 rich_help_panel=EXPERT)] = None,
    confirm_top: Annotated[int | None, typer.Option(help="configs to confirm", show_default="3",
                                                    rich_help_panel=EXPERT)] = None,
    confirm_seeds: Annotated[int | None, typer.Option(help="seeds per confirmed config", show_default="3",
                                                      rich_help_panel=EXPERT)] = None,
    compile_model: CompileOpt = None,
) -> None:
    """Run (or resume) the study for a task and write its recommendation."""
    _setup_logging()
    options = dict(locals())  # the options, by name: the spec's keys once renamed
    from autoopt.commands.launch import launch

    launch(options, _tune)


def _tune(prepared: Prepared, *, restart_ray: bool) -> None:
    """Run the prepared study with the progress display, then print the recommendation."""
    from autoopt.commands.progress import TuneDisplay
    from autoopt.commands.tuning import run as run_study
    from autoopt.dispatch.session import stop_ray
    from autoopt.spec import BUDGET_TRIALS

    if restart_ray:  # a study file named another cluster than the one joined early
        stop_ray()
    spec = prepared.spec
    place = spec.placement
    families = ",".join(spec.optimizers) if len(spec.optimizers) <= 6 else f"{len(spec.optimizers)} families"
    within = f" within {spec.time_budget:g}s" if spec.time_budget else ""
    open_ended = spec.time_budget is not None and spec.trials >= BUDGET_TRIALS
    planned = ("quick (the prior's first families and warm starts)" if spec.quick
               else "the screen, then the search while the budget lasts" if open_ended
               else f"{spec.screen_on_top} screened, then {spec.trials - spec.screen_on_top} search trials"
               if spec.screen_on_top else f"{spec.trials} trials")
    err.print(f"tuning [bold]{escape(spec.task)}[/bold]: {planned} x {spec.epochs} epochs{within}, "
              f"{escape(families)}; storage "
              f"{escape(mask_url(place.storage))}, MLflow {escape(mask_url(place.mlflow_uri))}", highlight=False)
    with TuneDisplay(err, None if open_ended else spec.trials) as display:
        rec = run_study(spec, on_progress=display.update, prepared=prepared, since=_launched())
    print_recommendation(rec, out, f"{place.out}/{spec.name.replace(':', '_')}.json")  # as Recommendation.save names it


def _launched() -> float:
    """When this command was launched: a time budget counts from there."""
    from autoopt.budget import launch_time

    return launch_time()


# --- recommend, tasks, report ---------------------------------------------------------------


@app.command()
@_errors
def recommend(
    task: TaskOpt,
    storage: StorageOpt = None,
    study: StudyNameOpt = None,
    fmt: Annotated[Format, typer.Option("--format", help="json, yaml or python")] = Format.json,
    from_database: Annotated[bool, typer.Option(
        "--from-database", help="no study of the task: the zero-shot answer of the storage's earlier studies")
    ] = False,
) -> None:
    """Print the stored recommendation for a task."""
    # Light: Optuna is imported only where there is a database to read, torch never.
    from autoopt.recommendation import python_snippet
    from autoopt.recommendation import recommend as load_recommendation

    check_task_name(task)  # an unknown task names the known ones, not a command that cannot work
    data = load_recommendation(task, storage=storage, study=study,
                               fallback="database" if from_database else None).to_dict()
    if fmt is Format.json:
        print(json.dumps(data, indent=2))
    elif fmt is Format.yaml:
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(python_snippet(data))


@app.command()
@_errors
def tasks() -> None:
    """List the built-in tasks and where their data comes from."""
    table = Table("task", "data", "metric")
    table.columns[1].overflow = "fold"
    for name, source in SOURCES.items():  # light data: no task is imported
        table.add_row(name, source, "val_accuracy (maximize)")
    table.add_row("module:function", "your function returning an autoopt Task", "yours (accuracy or rmse)")
    out.print(table)


@app.command()
@_errors
def report(
    task: TaskOpt,
    storage: StorageOpt = None,
    study: StudyNameOpt = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="report folder", show_default="reports/<task>")
                       ] = None,
    mlflow_uri: MlflowOpt = None,
) -> None:
    """Write plots and a one-minute summary of a finished study; log them to its MLflow run."""
    from autoopt.commands.report import write_report

    _setup_logging()
    result = write_report(task, storage=storage, study_name=study, out=out_dir, mlflow_uri=mlflow_uri)
    for name in result.files:
        out.print(f"wrote {escape(str(result.folder / name))}", highlight=False)
    where = f"MLflow run {result.run_id}" if result.run_id else "not logged to MLflow (no tune run found)"
    out.print(f"summary: {escape(str(result.folder / 'summary.md'))}; {where}", highlight=False)


# --- compare ---------------------------------------------------------------------------------


@app.command()
@_errors
def compare(
    task: TaskOpt,
    optimizers: Annotated[str, typer.Option(help="families to compare, or a preset: all, classic, modern")
                          ] = "sgd,adam,rmsprop",
    lrs: Annotated[str | None, typer.Option(help="learning rates to try for each family, e.g. "
                                                 "0.1,0.01,0.001", show_default="each family's default")
                   ] = None,
    seeds: Annotated[int, typer.Option(help="seeds per row (mean ± std)")] = 3,
    epochs: EpochsOpt = None,
    seed: SeedOpt = None,
    out_dir: Annotated[str, typer.Option("--out", help="where <task>.png and <task>.json go")] = "compare",
    mlflow_uri: MlflowOpt = None,
    ray_address: RayOpt = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPUs per run (0.25 packs four per GPU)",
                                                         show_default="0", rich_help_panel=CLUSTER)] = None,
    cpus_per_trial: CpusOpt = None,
    concurrency: ConcurrencyOpt = None,
    data_dir: DataDirOpt = None,
    batch_size: BatchSizeOpt = None,
) -> None:
    """Compare optimizers at fixed settings (no search), as the tutorial does: a table and loss curves."""
    from autoopt.commands.compare import parse_lrs, plan_compare, run_compare

    _setup_logging()
    # Validate everything before the progress bar starts: bad input is one line, nothing else.
    plan = plan_compare(task, optimizers, lrs=parse_lrs(lrs), seeds=seeds, epochs=epochs, seed=seed,
                        mlflow_uri=mlflow_uri, ray_address=ray_address, gpus_per_trial=gpus_per_trial,
                        cpus_per_trial=cpus_per_trial, concurrency=concurrency, batch_size=batch_size,
                        data_dir=data_dir)
    with Progress(TextColumn("compare"), BarColumn(bar_width=10), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err) as bar:
        job = bar.add_task("compare", total=None, info="starting")

        def progress(done: int, total: int, what: str) -> None:
            bar.update(job, completed=done, total=total, info=what)

        result = run_compare(plan, out=out_dir, on_progress=progress)
    print_comparison(result, out)


# --- bench -----------------------------------------------------------------------------------

BENCH_DEFAULT = "speed"
# The options of ``bench`` before its modes were commands: the command each belongs to now, and
# its name there. The first two chose the mode; their values are the new command's.
_MOVED_MODES = {"--scale": ("scale", "--sizes"), "--leave-one-out": ("prior", "--tasks")}
_MOVED_OPTIONS = {"--earlier": "scale", "--storage": "scale", "--seeds": "prior", "--time-budget": "prior",
                  "--out": "prior"}


class _BenchGroup(TyperGroup):
    """``autoopt bench``: nothing, or options first, runs ``speed`` (as ``bench`` did before it had
    commands, so ``autoopt bench --json`` still works); an option of another mode given to
    ``speed`` is refused with the command it belongs to."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ctx.help_option_names):
            args = [BENCH_DEFAULT, *args]
        if args[0] == BENCH_DEFAULT:
            moved = _moved_option(args[1:])
            if moved:
                ctx.fail(moved)
        return super().parse_args(ctx, args)


def _moved_option(args: list[str]) -> str | None:
    """The message for an option of ``scale`` or ``prior`` among ``speed``'s arguments, else None.
    Only a mode's own value (sizes, task names) is quoted back: another may hold a password."""
    args = args[:args.index("--")] if "--" in args else args
    flags = [arg.partition("=")[0] for arg in args]
    for i, flag in enumerate(flags):
        if flag in _MOVED_MODES:
            command, renamed = _MOVED_MODES[flag]
            _, eq, value = args[i].partition("=")
            if not eq:
                value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else ""
            return f"{flag} is a command of its own now: autoopt bench {command} {renamed} {value}".strip()
    for flag in flags:
        if flag in _MOVED_OPTIONS:
            return f"{flag} belongs to autoopt bench {_MOVED_OPTIONS[flag]} now"
    return None


bench_app = typer.Typer(
    cls=_BenchGroup, add_completion=False, pretty_exceptions_enable=False,
    help="Measure autoopt: its speed against the tutorial's way (speed: what `autoopt bench` alone runs), "
         "its cost as studies grow (scale), and what the prior buys on an unseen task (prior).",
    short_help="Measure autoopt: speed (the default), scale, prior.")
app.add_typer(bench_app, name="bench")

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object instead of a table")]


@bench_app.command("speed")
@_errors
def bench_speed(
    as_json: JsonOpt = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    full_cifar: Annotated[bool, typer.Option("--full-cifar", help="train on all data images")] = False,
    data_images: Annotated[int, typer.Option(help="images per data epoch (CIFAR-10's 50,000)")] = 50_000,
    train_images: Annotated[int | None, typer.Option(help="images per training epoch",
                                                     show_default="2,048 on a CPU, all on a GPU")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size, both pipelines")] = 128,
    repeats: Annotated[int, typer.Option(help="timed epochs per pipeline; the best counts")] = 2,
    loader_workers: Annotated[int | None, typer.Option(help="DataLoader workers of the tutorial's pipeline",
                                                       show_default="0 on a CPU, 2 on a GPU")] = None,
    threads: Annotated[int, typer.Option(help="torch threads on a CPU (a trial gets 1 per CPU)")] = 1,
    compile_model: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model")
                             ] = False,
    trials: Annotated[int, typer.Option(help="trials of the overhead study")] = 60,
    epochs: Annotated[int, typer.Option(help="epochs per trial of the overhead study")] = 2,
    concurrency: Annotated[int | None, typer.Option(help="trials at once",
                                                    show_default="one per CPU, or 1/gpus-per-trial per GPU")
                           ] = None,
    gpus_per_trial: Annotated[float, typer.Option(help="GPUs per trial of the studies (0.25 packs four)",
                                                  show_default="0.25 with a GPU, else none")] = 0.0,
    ray_address: RayOpt = None,
    parts: Annotated[str, typer.Option(help="what to measure: data,train,overhead,digits (and packing "
                                            "on a GPU)")] = "data,train,overhead,digits",
) -> None:
    """Measure the data pipeline, a training epoch and the per-trial overhead against the tutorial's way."""
    from autoopt.commands.bench import BenchOptions, run_bench

    _setup_logging()
    opts = BenchOptions(device=device, data_images=data_images,
                        train_images=data_images if full_cifar and train_images is None else train_images,
                        batch_size=batch_size, repeats=repeats, loader_workers=loader_workers,
                        threads=threads, compile=compile_model, trials=trials, epochs=epochs,
                        concurrency=concurrency, gpus_per_trial=gpus_per_trial, ray_address=ray_address,
                        parts=tuple(p.strip() for p in parts.split(",") if p.strip()))
    result = run_bench(opts, on_step=lambda what: err.print(f"bench: {what} ...", highlight=False))
    if as_json:
        print(json.dumps(result))
        return
    _print_bench(result)


@bench_app.command("scale")
@_errors
def bench_scale(
    sizes: Annotated[str, typer.Option(help="study sizes, comma-separated: the cost per trial at each")
                     ] = "1000,10000",
    earlier: Annotated[str, typer.Option(help="counts of earlier studies in the database: the first trial "
                                              "and the zero-shot answer beside each")] = "0,500",
    storage: Annotated[str | None, typer.Option(help="the storage it fills (PostgreSQL)",
                                                show_default="AUTOOPT_STORAGE")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure what a trial costs as a study and its database grow.

    Also the first trial's and the zero-shot answer's latency beside earlier studies, the report's
    time, and the memory of the driver and of a worker."""
    from autoopt.commands.scalebench import command

    _setup_logging()
    command(sizes, earlier, storage, as_json=as_json, out=out, err=err)


@bench_app.command("prior")
@_errors
def bench_prior(
    tasks: Annotated[str, typer.Option(help="the tasks, comma-separated (two or more): each held out in turn")],
    seeds: Annotated[int, typer.Option(help="whole studies per task and arm", min=1)] = 3,
    time_budget: Annotated[str, typer.Option(help="each held-out study's time budget")] = "60s",
    out_dir: Annotated[str, typer.Option("--out", help="its folder (storages, table)")] = "loto",
    as_json: JsonOpt = False,
) -> None:
    """Measure what the prior from earlier studies buys on a task it has not seen.

    Each task is held out in turn: a new study of it runs with the prior of the other tasks' studies
    and without one, on the same seeds and time budget."""
    _setup_logging()
    _bench_prior(tasks, seeds, time_budget, out_dir, as_json)


def _bench_prior(tasks: str, seeds: int, time_budget: str, out_dir: str, as_json: bool) -> None:
    from pathlib import Path

    from autoopt.budget import parse_duration
    from autoopt.commands.priorbench import leave_one_task_out, markdown

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if len(names) < 2:
        raise UsageError(f"--tasks {tasks}: name at least two tasks, comma-separated")
    for name in names:
        check_task_name(name)
    rows = leave_one_task_out(names, seeds=seeds, budget_s=parse_duration(time_budget), folder=out_dir,
                              on_progress=lambda what: err.print(f"bench: {what} ...", highlight=False))
    table = markdown(rows)
    (Path(out_dir) / "leave-one-out.json").write_text(json.dumps(rows, indent=2) + "\n")
    (Path(out_dir) / "leave-one-out.md").write_text(table + "\n")
    print(json.dumps(rows) if as_json else table)


def _print_bench(b: dict[str, Any]) -> None:
    def s(key: str, digits: int = 3) -> str:
        return f"{b[key]:.{digits}f} s" if b.get(key) is not None else "-"

    table = Table("measure", "autoopt", "the tutorial's way", "speed-up",
                  title=f"autoopt bench on {b['device']}")
    if "data_epoch_s" in b:
        table.add_row(f"data epoch ({b['data_images']:,} images, crop+flip)", s("data_epoch_s"),
                      s("dataloader_data_epoch_s"), f"x{b['data_speedup']:.1f}")
    if "train_epoch_s" in b:
        table.add_row(f"SimpleCNN epoch ({b['train_images']:,} images)", s("train_epoch_s"),
                      s("dataloader_train_epoch_s"), f"x{b['train_speedup']:.2f}")
    if "overhead_s_per_trial" in b:
        table.add_row(f"overhead per trial ({b['overhead_trials']} trials x {b['overhead_epochs']} epochs, "
                      f"{b['overhead_concurrency']} at once)", s("overhead_s_per_trial"), "", "")
        once = f"{b['startup_s']:.1f} s / {b['finish_s']:.1f} s"
        table.add_row("  one-time: start-up / finish", once, "", "")
    if "packing_speedup" in b:
        table.add_row(f"{1 / b['packing_fraction']:.0f} trials per GPU vs 1 (trials/h)",
                      f"{b['packing_packed_trials_per_hour']:,.0f}", f"{b['packing_whole_trials_per_hour']:,.0f}",
                      f"x{b['packing_speedup']:.2f}")
    if "trials_per_hour" in b:
        table.add_row(f"digits at its defaults ({b['digits_trials']} trials x {b['digits_epochs']} epochs)",
                      f"{b['trials_per_hour']:,.0f} trials/h", "", "")
    out.print(table)
    out.print(f"load average {b.get('load_before')} before, {b.get('load_after')} after; "
              f"{b['bench_s']:.0f} s in all", highlight=False)


# --- entry point -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``autoopt`` console script. click's own errors (an unknown option, a
    bad choice) are one line too: ``error: ...`` and exit 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=list(argv) if argv is not None else None, prog_name="autoopt",
                            standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors
        text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `autoopt`: the help, as click prints it
            print(text)
            sys.exit(0)
        name = getattr(getattr(exc, "ctx", None), "command_path", "autoopt")
        err.print(f"[red]error:[/red] {escape(' '.join(text.split()))} (see {name} --help)",
                  highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
