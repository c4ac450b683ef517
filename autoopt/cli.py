"""The ``autoopt`` command: parse, validate, call the API, print. No logic of its own.

Exit codes: 0 done, 1 the run failed, 2 bad input (one line naming the fix), 130 Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from functools import wraps
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from autoopt.errors import UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Pick the optimizer, its settings and its schedule for a PyTorch task.")
out = Console()
err = Console(stderr=True)


class Sampler(StrEnum):
    tpe = "tpe"
    random = "random"
    cmaes = "cmaes"
    gp = "gp"


class Pruner(StrEnum):
    none = "none"
    median = "median"
    hyperband = "hyperband"


class Format(StrEnum):
    json = "json"
    yaml = "yaml"
    python = "python"


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the API's exceptions into one line and an exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from rich.markup import escape

        from autoopt.study import StorageDown

        # Messages are escaped: rich would eat "[modern]" in "pip install 'autoopt[modern]'" as markup.
        try:
            return fn(*args, **kwargs)
        except UsageError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except StorageDown as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}; finished trials are kept, run the same command "
                      "again when the database is back", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted: the study is saved; run the same command again to finish it")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as exc:
            if os.environ.get("AUTOOPT_DEBUG"):
                raise
            from autoopt.study import redact  # a library's message may quote a URL with its password

            err.print(f"[red]error:[/red] {type(exc).__name__}: {escape(redact(str(exc)))}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


TaskOpt = Annotated[str, typer.Option("--task", "-t", help="digits, mnist, cifar10 or module:function")]
StorageOpt = Annotated[str | None, typer.Option(help="SQLAlchemy URL of the Optuna storage "
                                                     "[default: AUTOOPT_STORAGE or sqlite:///autoopt.db]")]


@app.command()
@_errors
def tune(
    task: Annotated[str | None, typer.Option("--task", "-t", help="digits, mnist, cifar10 or module:function")] = None,
    study_file: Annotated[str | None, typer.Option(help="a study YAML file (default: studies/<task>.yaml)")] = None,
    trials: Annotated[int | None, typer.Option(help="the study's total number of trials")] = None,
    timeout: Annotated[float | None, typer.Option(help="stop starting trials after this many seconds")] = None,
    epochs: Annotated[int | None, typer.Option(help="epochs per trial")] = None,
    optimizers: Annotated[str | None, typer.Option(help="families or a preset: classic, modern, all")] = None,
    schedulers: Annotated[str | None, typer.Option(help="e.g. none,cosine,onecycle")] = None,
    sampler: Annotated[Sampler | None, typer.Option(help="Optuna sampler")] = None,
    pruner: Annotated[Pruner | None, typer.Option(help="Optuna pruner")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the sampler and the trials")] = None,
    storage: StorageOpt = None,
    study: Annotated[str | None, typer.Option(help="study name [default: the task name]")] = None,
    mlflow_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI [default: sqlite:///mlflow.db]")] = None,
    ray_address: Annotated[str | None, typer.Option(help="join this Ray cluster [default: a local Ray]")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPUs per trial (0.25 packs four per GPU)")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs per trial")] = None,
    concurrency: Annotated[int | None, typer.Option(help="trials in flight [default: what fits]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="override the task's batch size")] = None,
    data_dir: Annotated[str | None, typer.Option(help="data folder [default: ~/.cache/autoopt/data]")] = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="where <task>.json goes")] = None,
    confirm: Annotated[bool | None, typer.Option("--confirm/--no-confirm",
                                                 help="retrain the best configs and baselines on seeds")] = None,
    confirm_top: Annotated[int | None, typer.Option(help="configs to confirm")] = None,
    confirm_seeds: Annotated[int | None, typer.Option(help="seeds per confirmed config")] = None,
    compile_model: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile")] = None,
) -> None:
    """Run (or resume) the study for a task and write its recommendation."""
    _setup_logging()
    from autoopt.spec import load_spec

    spec = load_spec(task, study_file, trials=trials, timeout_s=timeout, epochs=epochs, optimizers=optimizers,
                     schedulers=schedulers, sampler=sampler.value if sampler else None,
                     pruner=pruner.value if pruner else None, seed=seed, storage=storage, study_name=study,
                     mlflow_uri=mlflow_uri, ray_address=ray_address, gpus_per_trial=gpus_per_trial,
                     cpus_per_trial=cpus_per_trial, concurrency=concurrency, batch_size=batch_size,
                     data_dir=data_dir, out=out_dir, confirm=confirm, confirm_top=confirm_top,
                     confirm_seeds=confirm_seeds, compile=compile_model)
    from autoopt.progress import TuneDisplay
    from autoopt.study import mask_url
    from autoopt.tuning import run

    err.print(f"tuning [bold]{spec.task}[/bold]: {spec.trials} trials x {spec.epochs} epochs, "
              f"{','.join(spec.optimizers)}; storage {mask_url(spec.storage)}, "
              f"MLflow {mask_url(spec.mlflow_uri)}", highlight=False)
    with TuneDisplay(err, spec.trials) as display:
        rec = run(spec, on_progress=display.update)
    _print_recommendation(rec.to_dict(), spec.out)


def _print_recommendation(data: dict[str, Any], out_folder: str | None = None) -> None:
    table = Table(title=f"recommendation for {data['task']}", show_header=False)
    table.add_row("optimizer", f"{data['optimizer']} {json.dumps(data['optimizer_params'])}")
    table.add_row("scheduler", f"{data['scheduler']} {json.dumps(data['scheduler_params'])}")
    table.add_row("grad clip", str(data["grad_clip_norm"]))
    if data.get("value") is not None:
        table.add_row(data["metric"], f"{data['value']:.4f}")
    if data.get("improvement"):
        imp = data["improvement"]
        table.add_row("vs best baseline", f"{imp['metric']} {imp['delta']:+.4f} (spread {imp['spread']:.4f}, "
                                          f"{imp.get('versus')})")
    out.print(table)
    if out_folder:
        out.print(f"written to {out_folder}/{data['task']}.json; load it with "
                  f"`from autoopt import recommend; recommend({data['task']!r})`", highlight=False)


@app.command()
@_errors
def recommend(
    task: TaskOpt,
    storage: StorageOpt = None,
    study: Annotated[str | None, typer.Option(help="study name [default: the task name]")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="json, yaml or python")] = Format.json,
) -> None:
    """Print the stored recommendation for a task."""
    from autoopt.recommendation import recommend as load

    data = load(task, storage=storage, study=study).to_dict()
    if fmt is Format.json:
        print(json.dumps(data, indent=2))
    elif fmt is Format.yaml:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        from autoopt.recommendation import python_snippet

        print(python_snippet(data))


@app.command()
@_errors
def tasks() -> None:
    """List the built-in tasks and where their data comes from."""
    from autoopt.tasks import task_sources

    table = Table("task", "data", "metric")
    for name, source in task_sources().items():
        table.add_row(name, source, "val_accuracy (maximize)")
    table.add_row("module:function", "your function returning an autoopt Task", "yours (accuracy or rmse)")
    out.print(table)


MlflowOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI [default: sqlite:///mlflow.db]")]
RayOpt = Annotated[str | None, typer.Option(help="join this Ray cluster [default: a local Ray]")]
StudyNameOpt = Annotated[str | None, typer.Option(help="study name [default: the task name]")]


@app.command()
@_errors
def report(
    task: TaskOpt,
    storage: StorageOpt = None,
    study: StudyNameOpt = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="report folder [default: reports/<task>]")
                       ] = None,
    mlflow_uri: MlflowOpt = None,
) -> None:
    """Write plots and a one-minute summary of a finished study; log them to its MLflow run."""
    _setup_logging()
    from autoopt.report import write_report

    result = write_report(task, storage=storage, study_name=study, out=out_dir, mlflow_uri=mlflow_uri)
    for name in result.files:
        out.print(f"wrote {result.folder / name}", highlight=False)
    where = f"MLflow run {result.run_id}" if result.run_id else "not logged to MLflow (no tune run found)"
    out.print(f"summary: {result.folder / 'summary.md'}; {where}", highlight=False)


@app.command()
@_errors
def compare(
    task: TaskOpt,
    optimizers: Annotated[str, typer.Option(help="families to compare, or a preset: classic, modern, all")
                          ] = "sgd,adam,rmsprop",
    lrs: Annotated[str | None, typer.Option(help="learning rates to try for each family, e.g. "
                                                 "0.1,0.01,0.001,0.0001 [default: each family's default]")
                   ] = None,
    seeds: Annotated[int, typer.Option(help="seeds per row (mean ± std)")] = 3,
    epochs: Annotated[int | None, typer.Option(help="epochs per run [default: the task's study file]")
                      ] = None,
    seed: Annotated[int | None, typer.Option(help="first seed")] = None,
    mlflow_uri: MlflowOpt = None,
    ray_address: RayOpt = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPUs per run")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs per run")] = None,
    concurrency: Annotated[int | None, typer.Option(help="runs in flight [default: what fits]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="override the task's batch size")] = None,
    data_dir: Annotated[str | None, typer.Option(help="data folder [default: ~/.cache/autoopt/data]")] = None,
    out_dir: Annotated[str, typer.Option("--out", help="where <task>.png and <task>.json go")] = "compare",
) -> None:
    """Compare optimizers at fixed settings (no search), as the tutorial does: a table and the
    train-loss curves."""
    _setup_logging()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from autoopt.compare import parse_lrs, plan_compare, run_compare

    # Validate everything before the progress bar starts: bad input is one line, nothing else.
    plan = plan_compare(task, optimizers, lrs=parse_lrs(lrs), seeds=seeds, epochs=epochs, seed=seed,
                        mlflow_uri=mlflow_uri, ray_address=ray_address, gpus_per_trial=gpus_per_trial,
                        cpus_per_trial=cpus_per_trial, concurrency=concurrency, batch_size=batch_size,
                        data_dir=data_dir)
    with Progress(TextColumn("compare"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=err) as bar:
        job = bar.add_task("compare", total=None, info="starting")

        def progress(done: int, total: int, what: str) -> None:
            bar.update(job, completed=done, total=total, info=what)

        result = run_compare(plan, out=out_dir, on_progress=progress)
    _print_comparison(result)


def _mean_std(stats: dict[str, Any], digits: int = 4) -> str:
    if stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:.{digits}f}±{stats['std']:.{digits}f}"  # compact: fits 80 columns


def _print_comparison(result: Any) -> None:
    n_seeds = len(result.rows[0].seeds) if result.rows else 0
    table = Table(title=f"{result.task}: {result.epochs} epochs, constant lr; at the last epoch, "
                        f"mean±std over {n_seeds} seed(s)")
    # The label names the family: never wrap or cut it. Settings get their own column only
    # where the terminal is wide; otherwise they are listed under the table.
    wide = out.width >= 140
    width = max((len(r.label) for r in result.rows), default=9)
    table.add_column("optimizer", no_wrap=True, min_width=width)
    if wide:
        table.add_column("settings", overflow="fold")
    for name in (result.metric, "train_loss", result.test_metric):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("ok", justify="right", no_wrap=True)
    settings = {row.label: ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in row.config.optimizer_params.items()) for row in result.rows}
    for row in result.rows:
        cells = [_mean_std(row.val), _mean_std(row.train_loss), _mean_std(row.test),
                 f"{row.val.get('complete', 0)}/{len(row.seeds)}"]
        table.add_row(row.label, *([settings[row.label]] if wide else []), *cells)
    out.print(table)
    if not wide:
        for row in result.rows:
            out.print(f"  {row.label:<{width}}  {settings[row.label]}", highlight=False)
    for row in result.rows:
        for reason in row.failed:
            out.print(f"[yellow]{row.label}[/yellow] {reason}", highlight=False)
    out.print(f"loss curves: {result.plot}; table: {result.json_path}", highlight=False)


@app.command()
@_errors
def bench(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of a table")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    full_cifar: Annotated[bool, typer.Option("--full-cifar", help="train on all data images")] = False,
    data_images: Annotated[int, typer.Option(help="images per data epoch (CIFAR-10's 50,000)")] = 50_000,
    train_images: Annotated[int | None, typer.Option(help="images per training epoch [default: 2,048 "
                                                           "on a CPU, all on a GPU]")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size, both pipelines")] = 128,
    repeats: Annotated[int, typer.Option(help="timed epochs per pipeline; the best counts")] = 2,
    loader_workers: Annotated[int | None, typer.Option(help="DataLoader workers of the tutorial's pipeline "
                                                            "[default: 0 on a CPU, 2 on a GPU]")] = None,
    threads: Annotated[int, typer.Option(help="torch threads on a CPU (a trial gets 1 per CPU)")] = 1,
    compile_model: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model")]
    = False,
    trials: Annotated[int, typer.Option(help="trials of the overhead study")] = 60,
    epochs: Annotated[int, typer.Option(help="epochs per trial of the overhead study")] = 2,
    concurrency: Annotated[int | None, typer.Option(help="trials at once [default: one per CPU, or "
                                                         "1/gpus-per-trial per GPU]")] = None,
    gpus_per_trial: Annotated[float, typer.Option(help="GPUs per trial of the studies (0.25 packs four) "
                                                     "[default: 0.25 with a GPU, else none]")] = 0.0,
    ray_address: Annotated[str | None, typer.Option(help="join this Ray cluster [default: local]")] = None,
    parts: Annotated[str, typer.Option(help="what to measure: data,train,overhead,digits (and packing "
                                            "on a GPU)")] = "data,train,overhead,digits",
) -> None:
    """Measure the data pipeline, a training epoch and the per-trial overhead against the tutorial's way."""
    _setup_logging()
    from autoopt.bench import BenchOptions, run_bench

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


def main() -> None:
    """Entry point of the ``autoopt`` console script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
