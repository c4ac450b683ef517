"""``tune()``: the whole path of DESIGN.md, from a StudySpec to a saved Recommendation.

spec → preflight (everything checked, nothing created) → Optuna study on SQL storage → Ray
workers run trials (MLflow nested runs) → best trials → confirmation over seeds against the
baselines → Recommendation (stored with the study, JSON file, MLflow artifact).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoopt import dispatch, tracking
from autoopt import recommendation as recommend_mod
from autoopt.base.direction import best as best_by
from autoopt.base.redact import mask_url, redact, redact_logs
from autoopt.budget import Budget
from autoopt.decide.confirm import confirm
from autoopt.errors import UsageError
from autoopt.evidence import BudgetUse, Effort
from autoopt.plots import optimization_history
from autoopt.recommendation import Recommendation, family_origin
from autoopt.screen import prior as prior_mod
from autoopt.screen.portfolio import PortfolioFirst, PriorRecord, left_on_cost
from autoopt.spec import StudySpec, load_spec
from autoopt.study import (
    StorageDown,
    absolute_sqlite,
    check_storage,
    full_trials,
    open_storage,
    open_study,
    slim_log,
    sqlite_path,
    with_retry,
)
from autoopt.study.record import CONFIG, TrialKind, record
from autoopt.tasks import BUILTIN, Loaded, Task, UserLoop, load_task

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


# A study's figures logged to its parent run: artifact path -> figure(study).
Figures = Mapping[str, Callable[["optuna.Study"], Any]]
DEFAULT_FIGURES: Figures = {"plots/optimization_history.png": optimization_history}


def tune(task: str | None = None, *, study_file: str | Path | None = None,
         on_progress: dispatch.Progress | None = None, figures: Figures | None = None,
         **options: Any) -> Recommendation:
    """Tune the optimizer for ``task`` and return the recommendation.

    Takes the CLI's options as keyword arguments (``trials``, ``epochs``, ``optimizers``,
    ``sampler``, ``pruner``, ``seed``, ``storage``, ``study_name``, ``mlflow_uri``,
    ``ray_address``, ``gpus_per_trial``, ``cpus_per_trial``, ``concurrency``, ``data_dir``,
    ``out``, ``timeout_s``, ``confirm``, ``confirm_top``, ``confirm_seeds``, ``prior``: ``"auto"``,
    ``"none"`` or earlier study names, ``quick``).

    >>> rec = tune("digits", trials=2, epochs=1, confirm=False)  # doctest: +SKIP
    >>> rec.build_optimizer(model)                               # doctest: +SKIP
    """
    spec = load_spec(task, study_file, **options)
    return run(spec, on_progress=on_progress, figures=figures)


def describe(spec: StudySpec) -> dict[str, Any]:
    """The spec as MLflow parent-run params, secrets masked, placement flattened."""
    data = spec.model_dump(exclude={"custom_optimizers", "space", "placement"})
    data.update(spec.placement.model_dump())
    data["storage"] = mask_url(spec.placement.storage)
    data["mlflow_uri"] = mask_url(spec.placement.mlflow_uri)
    if spec.placement.gpus_per_trial is None:
        data["gpus_per_trial"] = "auto"
    data["optimizers"] = ",".join(spec.optimizers)
    data["schedulers"] = ",".join(spec.schedulers)
    if spec.space:
        data["space"] = spec.space
    return data


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def preflight(spec: StudySpec) -> Loaded:
    """Check everything ``run`` needs before anything exists (a study, an MLflow run, a file,
    Ray): the spec, the GPUs asked for, the task (loaded and validated), the storage and the
    tracking store. Returns the task; any problem is a one-line ``UsageError``."""
    place = spec.placement
    if not place.ray_address:
        dispatch.resolve_gpus(place.gpus_per_trial, gpus_seen=_local_gpus() if place.gpus_per_trial else 0)
    task = _load_task(spec)
    _check_distinct(place.storage, place.mlflow_uri)
    check_storage(absolute_sqlite(place.storage))
    names = prior_mod.parse(spec.prior)
    if isinstance(names, list):
        prior_mod.check_sources(absolute_sqlite(place.storage), names)
    tracking.check_tracking(place.mlflow_uri)
    return task


def _check_distinct(storage: str, mlflow_uri: str) -> None:
    """Optuna's and MLflow's tables never share a SQLite file (each would take the other's for its own)."""
    a, b = sqlite_path(absolute_sqlite(storage)), sqlite_path(absolute_sqlite(mlflow_uri))
    if a is not None and b is not None and a.resolve() == b.resolve():
        raise UsageError(f"--storage and --mlflow-uri both name {a}; give each its own file "
                         "(sqlite:///autoopt.db and sqlite:///mlflow.db)")


def _load_task(spec: StudySpec) -> Loaded:
    """Load the task (for ``module:function``, call the function: the space, the classes and the
    task's module were checked by ``load_spec``) and check that its model fits its data. A
    user's loop runs its setup here once, as the check that it runs; its data is not kept (each
    worker runs its own setup)."""
    try:
        task = load_task(spec.task, spec.placement.data_dir)
    except (UsageError, StorageDown, KeyboardInterrupt):
        raise
    except Exception as exc:
        if spec.task in BUILTIN:
            raise
        raise UsageError(f"task '{spec.task}' failed to load: {type(exc).__name__}: {_first_line(exc)}; "
                         "fix the task function") from None
    if isinstance(task, UserLoop):
        return task.facts()
    check_model_fits(spec.task, task)
    return task


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no message"


def check_model_fits(name: str, task: Task) -> None:
    """A task's splits are not empty, and its model takes two validation rows and returns
    what its loss needs: for cross_entropy, class scores (N, classes) for integer labels (N,),
    or (N, classes, ...) for labels (N, ...) (a label per token); for mse, one value per target."""
    import torch

    from autoopt.data import Preprocess

    for split in ("train", "val"):
        if len(getattr(task, split)) == 0:
            raise UsageError(f"task '{name}': the {split} split is empty; give it rows")
    x, y = task.val.x[:2], task.val.y[:2]
    try:
        model = task.build_model()
        with torch.no_grad():
            out = model(task.preprocess(x, train=False))
    except Exception as exc:
        ids = isinstance(task.preprocess, Preprocess) and task.preprocess.keeps_ids(x)
        hint = (" (its integer inputs reach it as torch.long ids, as an nn.Embedding takes them; store x as "
                "float for numbers)" if ids else "")
        raise UsageError(f"task '{name}': its model fails on two validation rows: {type(exc).__name__}: "
                         f"{_first_line(exc)}; fix build_model or preprocess{hint}") from None
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"task '{name}': its model returns {type(out).__name__}, not a tensor")
    if task.loss == "cross_entropy":
        if y.is_floating_point() or y.dtype == torch.bool:
            raise UsageError(f"task '{name}': loss cross_entropy needs integer labels; got {y.dtype} targets "
                             f"{tuple(y.shape)} (store class ids as integers, or use loss='mse' for regression)")
        if out.ndim < 2 or out.shape[:1] + out.shape[2:] != y.shape:
            last = out.ndim == y.ndim + 1 >= 3 and out.shape[1:-1] == y.shape[1:]
            fix = "its classes come last: return out.movedim(-1, 1)" if last else "return the classes on dim 1"
            raise UsageError(f"task '{name}': loss cross_entropy needs class scores (N, classes, ...) for labels "
                             f"(N, ...); got outputs {tuple(out.shape)} for labels {tuple(y.shape)}; {fix}")
    elif out.numel() != y.numel():
        raise UsageError(f"task '{name}': loss mse needs one output per target; got outputs {tuple(out.shape)} "
                         f"for targets {tuple(y.shape)}")


def run(spec: StudySpec, *, on_progress: dispatch.Progress | None = None,
        figures: Figures | None = None, checked: Loaded | None = None, since: float | None = None,
        prepared: Prepared | None = None) -> Recommendation:
    """Run a validated spec end to end (see the module docstring). ``checked`` is the task
    ``preflight(spec)`` returned, where the caller ran it already; ``prepared`` what
    ``prepare(spec)`` returned, where the caller ran that (the CLI, while Ray starts); ``since``
    when the command was launched (wall clock): a time budget counts from there (default: now)."""
    redact_logs()  # no password of a storage or tracking URL in any log line of this process
    budget = Budget(spec.time_budget, since=time.time() if since is None else since) if spec.time_budget else None
    t0 = time.monotonic()
    if prepared is None:
        prepared = prepare(spec, checked)  # bad input stops here, with nothing created
    spec, task, study, start = prepared.spec, prepared.task, prepared.study, prepared.start
    with dispatch.RunSession(spec.placement.ray_address) as session:
        try:
            rec = _searched(session, prepared, budget=budget, figures=figures, on_progress=on_progress, t0=t0)
        except StorageDown:
            # The workers are stuck waiting for the database: no flush; the next run closes
            # the runs they leave open.
            session.flush_pool = False
            raise
        except BaseException as exc:
            start.stop()  # what it does ends before the session closes
            if isinstance(exc, KeyboardInterrupt) and session.tracker is not None:
                _save_best_so_far(spec, study, task, session.tracker, figures)
            raise
        finally:
            tracker = session.tracker or start.tracker()
            if tracker is not None:
                session.tracker = tracker
                session.on_close.append(lambda: _close_orphans(tracker, study))
    if budget is not None:
        rec = _close_budget(spec, study, rec, budget)
    return rec


@dataclass
class Prepared:
    """What a study needs before Ray (``prepare``): the spec as the study opened it, the task,
    the study, the portfolio policy, and the start-up's background work (the MLflow parent run
    and the portfolio enqueued)."""

    spec: StudySpec
    task: Loaded
    study: optuna.Study
    policy: PortfolioFirst
    start: _StartUp


def prepare(spec: StudySpec, checked: Loaded | None = None) -> Prepared:
    """Everything before Ray: the spec checked (``preflight``, unless ``checked`` is its task),
    the study opened (or resumed) with its prior, and, in the background, the MLflow parent run
    made and the portfolio enqueued. No trial is asked: that waits for a placed, warm worker.
    The CLI runs this while Ray starts; ``run`` runs it itself otherwise."""
    task = checked if checked is not None else preflight(spec)
    storage_url = absolute_sqlite(spec.placement.storage)
    study, spec, policy = _opened(spec, task, storage_url)
    return Prepared(spec, task, study, policy, _StartUp(spec, study, storage_url, policy))


def _opened(spec: StudySpec, task: Loaded, storage_url: str) -> tuple[optuna.Study, StudySpec, PortfolioFirst]:
    """The study, opened (or resumed) with what it records of the task and of the earlier studies'
    prior (``autoopt.screen.prior``: a new study screens by it and records it); the spec (``--quick``: as
    many trials as the screen and the warm starts; without ``--trials``: the screen on top of the
    search's trials); the portfolio policy."""
    storage = open_storage(storage_url)
    study = open_study(storage, spec.name, direction=task.direction, metric=task.metric,
                       sampler=spec.sampler, seed=spec.seed)
    slim_log(study)  # the driver keeps a finished trial's few fields: its memory stays flat as the study grows
    with_retry(lambda: study.set_user_attr("metric", task.metric), what="open the study")
    info = prior_mod.TaskInfo.of_task(spec.task, task)
    with_retry(lambda: study.set_user_attr(prior_mod.TASK_ATTR, info.to_dict()), what="open the study")
    prior = with_retry(lambda: prior_mod.for_study(study, storage, spec, info), what="read the earlier studies")
    policy = PortfolioFirst(spec.search_space(), seed=spec.seed, prior=prior,
                            quick=prior_mod.QUICK_FAMILIES if spec.quick else None)
    kept = PriorRecord.of_attrs(study.user_attrs) or prior
    screen = len(policy.plan(kept)) + len(policy.warm_starts(kept))
    if spec.quick:  # the screen and the warm starts, nothing else
        spec = spec.model_copy(update={"trials": screen, "screen_on_top": None})
    elif spec.screen_on_top == 0:  # --trials not given: the search's own, the screen on top
        spec = spec.model_copy(update={"trials": spec.trials + screen, "screen_on_top": screen})
    return study, spec, policy


class _StartUp:
    """What runs in the background while Ray starts: the MLflow parent run opened, and the search
    begun (``begin_search``: a resumed study's costs read, the portfolio enqueued). It asks no
    trial: a trial is asked only for a placed, warm worker."""

    def __init__(self, spec: StudySpec, study: optuna.Study, storage_url: str, policy: PortfolioFirst) -> None:
        background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="autoopt-start")
        self.opening = background.submit(_open_tracker, spec)
        self.beginning = background.submit(dispatch.begin_search, study, storage_url, spec.trials, policy)
        background.shutdown(wait=False)

    def stop(self) -> None:
        """Wait for both to end (their errors are the caller's to see through ``result``)."""
        self.opening.exception()
        self.beginning.exception()

    def tracker(self) -> tracking.StudyRun | None:
        """The parent run, where it was opened."""
        if self.opening.done() and self.opening.exception() is None:
            return self.opening.result()
        return None


def _searched(session: dispatch.RunSession, prepared: Prepared, *, budget: Budget | None, figures: Figures | None,
              on_progress: dispatch.Progress | None, t0: float) -> Recommendation:
    """With Ray up: the pool (warming on the task loaded here), the parent run, the search, the
    confirmation; the session marked FINISHED."""
    spec, task, study, policy, start = prepared.spec, prepared.task, prepared.study, prepared.policy, prepared.start
    spec, auto_gpus = _placed(spec)
    place = spec.placement
    storage_url = absolute_sqlite(place.storage)
    pool = session.open_pool(spec.trials, concurrency=place.concurrency, cpus=place.cpus_per_trial,
                             gpus=place.gpus_per_trial)
    pool.warm(dispatch.warm_job(spec, storage_url, study.study_name,
                                tracking.RunRef(tracking.local_tracking_uri(place.mlflow_uri))),
              task=task if isinstance(task, Task) else None)  # a user's loop: each worker runs its setup
    tracker = session.tracker = start.opening.result()
    if auto_gpus is not None:
        tracker.set_tags({tracking.GPUS_TAG: auto_gpus})
    loop = dispatch.SearchLoop(study, spec=spec, storage_url=storage_url, tracking=tracker.ref, pool=pool,
                               on_progress=on_progress, policy=policy, budget=budget,
                               begun=start.beginning.result())
    loop.run()
    rec = finish(spec, study, task, tracker, pool, on_progress=on_progress, figures=figures,
                 budget=budget, effort=effort_of(loop, budget))
    tracker.log_metrics({"search_s": time.monotonic() - t0, "trials_here": loop.progress.finished_here})
    session.status = tracking.RunStatus.FINISHED
    return rec


def _close_budget(spec: StudySpec, study: optuna.Study, rec: Recommendation, budget: Budget) -> Recommendation:
    """The JSON's ``budget`` once everything is closed: the seconds of the end included."""
    budget.phases["finish"] = time.time() - (budget.confirm_ended or time.time())
    rec = dataclasses.replace(rec, budget=budget.record())
    try:
        recommend_mod.store(study, rec)
        rec.save(spec.placement.out)
    except Exception as exc:
        log.warning("could not record the budget's last seconds: %s", exc)
    return rec


def effort_of(loop: dispatch.SearchLoop, budget: Budget | None) -> Effort:
    """What the screen and the search spent: epochs by phase and the seconds of each phase (the
    screen ends when its last trial does)."""
    tally = loop.tally
    timeline = tally.timeline
    first = min((t.started for t in timeline), default=None)
    last = max((t.ended for t in timeline), default=None)
    screen_end = max((t.ended for t in timeline if t.kind == TrialKind.SCREEN), default=first)
    searched = loop.focus.why()
    if first is None or last is None or screen_end is None:
        return Effort(epochs=dict(tally.epochs_run), trials=len(timeline), searched=searched)
    seconds: dict[str, float] = {TrialKind.SCREEN: round(screen_end - first, 2),
                                 TrialKind.SEARCH: round(last - screen_end, 2)}
    if budget is not None:
        budget.phases.update(seconds)
    if tally.setup_s:  # a user loop's setup, summed over the workers: its own phase, in no trial's cost
        seconds["setup"] = round(tally.setup_s, 3)
    return Effort(epochs=dict(tally.epochs_run), seconds=seconds, trials=len(timeline), searched=searched,
                  first_trial_s=round(first - budget.since, 2) if budget is not None else None)


def check_placement(spec: StudySpec) -> None:
    """With Ray up: refuse (``UsageError``) trials no node of the cluster can hold, and a
    concurrency above its total (``dispatch.pool.check_fits``)."""
    from autoopt.dispatch.pool import check_fits

    place = _placed(spec)[0].placement
    check_fits(place.cpus_per_trial, place.gpus_per_trial or 0.0, place.concurrency)


def _placed(spec: StudySpec) -> tuple[StudySpec, str | None]:
    """The spec with its GPUs per trial decided (``resolve_gpus``) now that Ray is up, and the
    GPUs per trial to tag the parent run with when they were decided here (auto)."""
    requested = spec.placement.gpus_per_trial
    gpus = dispatch.gpus_per_trial(requested, ray_address=spec.placement.ray_address)
    if requested is None:
        log.info("GPUs per trial: %g (auto)", gpus)
    placed = spec.model_copy(update={"placement": spec.placement.model_copy(update={"gpus_per_trial": gpus})})
    return placed, (f"{gpus:g}" if requested is None else None)


def _open_tracker(spec: StudySpec) -> tracking.StudyRun:
    """The parent MLflow run; an unreachable or refusing tracking server is bad input (exit 2),
    named without its password (MLflow's own messages quote the full URL)."""
    try:
        return tracking.StudyRun(spec.placement.mlflow_uri, spec.task, spec.name, describe(spec))
    except UsageError:
        raise
    except Exception as exc:
        reason = redact(_first_line(exc))
        raise UsageError(f"cannot record to MLflow at {mask_url(spec.placement.mlflow_uri)}: {reason}; "
                         "check --mlflow-uri or MLFLOW_TRACKING_URI") from None


def _close_orphans(tracker: tracking.StudyRun, study: optuna.Study) -> None:
    """End the nested runs left RUNNING once this driver's workers are gone
    (``StudyRun.close_orphans``): a failed trial's as FAILED, a finished trial's of this driver as
    FINISHED."""
    try:
        trials = study.get_trials(deepcopy=False)
        n = tracker.close_orphans(study.study_name, {t.number: t.state.name for t in trials})
        if n:
            log.info("closed %d MLflow runs left running by dead trials", n)
    except Exception as exc:
        log.warning("could not close orphaned MLflow runs: %s", exc)


def finish(spec: StudySpec, study: optuna.Study, task: Loaded, tracker: tracking.StudyRun, pool: dispatch.WorkerPool,
           *, on_progress: dispatch.Progress | None = None, figures: Figures | None = None,
           budget: Budget | None = None, effort: Effort | None = None) -> Recommendation:
    """Pick (and, with ``spec.confirm``, confirm) the recommendation, then save it everywhere,
    with what each phase spent (``effort``) and, under a time budget, the ``budget``."""
    rec = best_recommendation(spec, study, task)
    started = time.time()
    if spec.confirm:
        seconds = effort.seconds if effort else {}
        rec = confirm(spec, study, task, pool, tracker.ref, rec, on_progress=on_progress, budget=budget,
                      search_s=seconds.get(TrialKind.SCREEN, 0.0) + seconds.get(TrialKind.SEARCH, 0.0))
    effort = effort or Effort()
    effort = effort.model_copy(update={
        "epochs": {**effort.epochs, "confirm": rec.race.epochs if rec.race else 0},
        "seconds": {**effort.seconds, "confirm": round(time.time() - started, 2)}})
    used: BudgetUse | None = None
    if budget is not None:
        budget.confirm_ended = time.time()
        budget.phases["confirm"] = budget.confirm_ended - started
        used = budget.record()  # rewritten once the files are written (below)
    left = None
    if budget is None and spec.pruner != "none":
        # Cost ordered the screen: say which families it left untrained, and what would train them.
        left = tuple(left_on_cost(
            study, epochs=spec.epochs, pick_s_per_epoch=rec.cost.s_per_epoch if rec.cost else None,
            seeds=spec.confirm_seeds, workers=len(pool.workers), spent_s=sum(effort.seconds.values())))
    rec = dataclasses.replace(rec, effort=effort, left_on_cost=left, budget=used)
    save(spec, study, rec, tracker, figures)
    return rec


def best_recommendation(spec: StudySpec, study: optuna.Study, task: Loaded) -> Recommendation:
    """The study's best complete trial as a Recommendation (``source: study``). Where none
    completed (a short time budget spent on the screen), the screened trial that got furthest,
    best at that epoch, stands until the confirmation decides."""
    trials = study.get_trials(deepcopy=False)  # finished ones slim in the driver: no config (``slim_log``)
    done = [(t.value, t) for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    note = None
    best: optuna.trial.FrozenTrial | None = None
    while done and best is None:  # the best complete trial that has a config, read whole
        value, candidate = best_by(done, key=lambda d: d[0], direction=task.direction)
        whole = next(full_trials(study, [candidate]))
        best = whole if CONFIG in whole.user_attrs else None
        done = [d for d in done if d[1] is not candidate]
    if best is None:
        pruned = [t for t in trials if t.state.name == "PRUNED" and t.intermediate_values]
        screened = [t for t in full_trials(study, pruned) if CONFIG in t.user_attrs]
        if not screened:
            if any(t.state.name != "WAITING" for t in trials):
                raise RuntimeError(f"study '{study.study_name}' has no complete trial to recommend from; "
                                   "see the trials' reasons in MLflow")
            raise UsageError("no trials ran (none was started before the deadline, or --trials is 0); raise "
                             "--trials or --timeout, or wait until the cluster has a free CPU")
        furthest = max(max(t.intermediate_values) for t in screened)
        at = [t for t in screened if max(t.intermediate_values) == furthest]
        best = best_by(at, key=lambda t: t.intermediate_values[furthest], direction=task.direction)
        value = best.intermediate_values[furthest]
        note = f"no trial completed; trial {best.number} led the screen at epoch {furthest}"
    # A study's own family (a study file's class) is not registered: the JSON names its class,
    # so that recommend() in another process rebuilds it.
    config = record(best).config or {}
    origin = family_origin(spec.search_space().families.get(config.get("optimizer", "")))
    return Recommendation(task=spec.task, **config, metric=task.metric,
                          direction=task.direction, value=value, study_name=study.study_name,
                          trial_number=best.number, source="study", search_note=note, **origin)


def verdict_tags(rec: Recommendation) -> dict[str, str]:
    """What the parent run's tags say of the recommendation: the pick and, once confirmed,
    the verdict of its improvement over the baseline."""
    tags = {tracking.RECOMMENDED_TAG: f"{rec.optimizer} + {rec.scheduler}"}
    if rec.improvement is not None and rec.improvement.verdict:
        tags[tracking.VERDICT_TAG] = rec.improvement.verdict
    return tags


def save(spec: StudySpec, study: optuna.Study, rec: Recommendation, tracker: tracking.StudyRun,
         figures: Figures | None = None) -> Path:
    """Store with the study, write the JSON file, and log both, the best value, the verdict and
    the figures to the parent MLflow run."""
    recommend_mod.store(study, rec)
    try:  # what the prior reads of this study from now on, one row
        with_retry(lambda: prior_mod.summarise(study), what="summarise the study")
    except Exception as exc:
        log.warning("could not summarise the study for later priors: %s", exc)
    path = rec.save(spec.placement.out)
    try:
        tracker.log_dict(rec.to_dict(), f"recommendation/{Path(path).name}")
        if rec.value is not None and math.isfinite(rec.value):
            tracker.log_metrics({"best_value": rec.value})
        tracker.set_tags(verdict_tags(rec))
        for name, make in (DEFAULT_FIGURES if figures is None else figures).items():
            _log_figure(tracker, name, make(study))
    except Exception as exc:
        log.warning("could not log the recommendation to MLflow: %s", exc)
    return path


def _log_figure(tracker: tracking.StudyRun, name: str, fig: Figure) -> None:
    import matplotlib.pyplot as plt

    try:
        tracker.log_figure(fig, name)
    finally:
        plt.close(fig)  # figures are global in pyplot: a long-lived process would leak them


def _save_best_so_far(spec: StudySpec, study: optuna.Study, task: Loaded, tracker: tracking.StudyRun,
                      figures: Figures | None) -> None:
    try:
        save(spec, study, best_recommendation(spec, study, task), tracker, figures)
    except Exception as exc:
        log.warning("no best-so-far recommendation written: %s", exc)
