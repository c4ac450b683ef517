"""``tune()``: the whole path of DESIGN.md, from a StudySpec to a saved Recommendation.

spec → task (validated) → Optuna study on SQL storage → Ray workers run trials (MLflow
nested runs) → best trials → confirmation over seeds against the baselines →
Recommendation (stored with the study, JSON file, MLflow artifact).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoopt.recommendation import Recommendation
from autoopt.spec import StudySpec, load_spec

log = logging.getLogger(__name__)


def tune(task: str | None = None, *, study_file: str | Path | None = None,
         on_progress: Callable[[Any], None] | None = None, **options: Any) -> Recommendation:
    """Tune the optimizer for ``task`` and return the recommendation.

    Takes the CLI's options as keyword arguments (``trials``, ``epochs``, ``optimizers``,
    ``sampler``, ``pruner``, ``seed``, ``storage``, ``study_name``, ``mlflow_uri``,
    ``ray_address``, ``gpus_per_trial``, ``cpus_per_trial``, ``concurrency``, ``data_dir``,
    ``out``, ``timeout_s``, ``confirm``, ``confirm_top``, ``confirm_seeds``).

    >>> rec = tune("digits", trials=2, epochs=1, confirm=False)  # doctest: +SKIP
    >>> rec.build_optimizer(model)                               # doctest: +SKIP
    """
    spec = load_spec(task, study_file, **options)
    return run(spec, on_progress=on_progress)


def describe(spec: StudySpec) -> dict[str, Any]:
    """The spec as MLflow parent-run params, secrets masked."""
    from autoopt.study import mask_url

    data = spec.model_dump(exclude={"custom_optimizers", "space"})
    data["storage"] = mask_url(spec.storage)
    data["mlflow_uri"] = mask_url(spec.mlflow_uri)
    data["optimizers"] = ",".join(spec.optimizers)
    data["schedulers"] = ",".join(spec.schedulers)
    if spec.space:
        data["space"] = spec.space
    return data


def run(spec: StudySpec, *, on_progress: Callable[[Any], None] | None = None) -> Recommendation:
    """Run a validated spec end to end (see the module docstring)."""
    from autoopt import dispatch
    from autoopt.study import StorageDown, absolute_sqlite, open_storage, open_study, redact_logs, with_retry
    from autoopt.tasks import load_task

    redact_logs()  # no password of a storage or tracking URL in any log line of this process
    t0 = time.monotonic()
    task = load_task(spec.task, spec.data_dir)  # fails fast (exit 2) on missing data
    storage_url = absolute_sqlite(spec.storage)
    storage = open_storage(storage_url)
    study = open_study(storage, spec.name, direction=task.direction, sampler=spec.sampler, seed=spec.seed)
    with_retry(lambda: study.set_user_attr("metric", task.metric), what="open the study")
    tracker = _open_tracker(spec)
    handle = {"uri": tracker.uri, "experiment_id": tracker.experiment_id, "parent_run_id": tracker.run_id}
    started_ray = False
    pool = None
    status = "FAILED"
    storage_down = False
    try:
        started_ray = dispatch.start_ray(spec.ray_address)
        size = spec.concurrency or dispatch.default_concurrency(spec.cpus_per_trial, spec.gpus_per_trial)
        pool = dispatch.WorkerPool(max(1, min(size, spec.trials)), cpus=spec.cpus_per_trial,
                                   gpus=spec.gpus_per_trial)
        progress = dispatch.run_search(study, spec=spec, storage_url=storage_url, tracking=handle,
                                       pool=pool, on_progress=on_progress)
        rec = finish(spec, study, task, tracker, pool, handle, on_progress=on_progress)
        tracker.log_metrics({"search_s": time.monotonic() - t0, "trials_here": progress.finished_here})
        status = "FINISHED"
        return rec
    except KeyboardInterrupt:
        status = "KILLED"
        _save_best_so_far(spec, study, task, tracker)
        raise
    except StorageDown:
        storage_down = True
        raise
    finally:
        if pool is not None:
            if not storage_down:
                # Let the workers finish writing their runs. Not when the database is gone:
                # they are stuck waiting for it, and the next run closes what they leave open.
                pool.flush()
            pool.shutdown()
        _close_orphans(tracker, study)
        tracker.finish(status)
        if started_ray:
            dispatch.stop_ray()


def _open_tracker(spec: StudySpec) -> Any:
    """The parent MLflow run; an unreachable or refusing tracking server is bad input (exit 2),
    named without its password (MLflow's own messages quote the full URL)."""
    from autoopt.errors import UsageError
    from autoopt.study import mask_url, redact
    from autoopt.tracking import StudyRun

    try:
        return StudyRun(spec.mlflow_uri, spec.task, spec.name, describe(spec))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot record to MLflow at {mask_url(spec.mlflow_uri)}: {redact(reason)}; "
                         "check --mlflow-uri or MLFLOW_TRACKING_URI") from None


def _close_orphans(tracker: Any, study: Any) -> None:
    """End as FAILED the nested runs of trials that failed without their worker closing the
    run (a killed worker, a dead driver's trials failed as stale). Only failed trials: a
    finished trial's run may still be on its way from another driver's worker."""
    try:
        trials = study.get_trials(deepcopy=False)
        live = {t.number for t in trials if t.state.name != "FAIL"}
        n = tracker.close_orphans(study.study_name, live)
        if n:
            log.info("closed %d MLflow runs left running by dead trials", n)
    except Exception as exc:
        log.warning("could not close orphaned MLflow runs: %s", exc)


def finish(spec: StudySpec, study: Any, task: Any, tracker: Any, pool: Any, handle: dict[str, Any],
           *, on_progress: Callable[[Any], None] | None = None) -> Recommendation:
    """Pick (and, with ``spec.confirm``, confirm) the recommendation, then save it everywhere."""
    from autoopt.confirm import confirm

    rec = best_recommendation(spec, study, task)
    if spec.confirm:
        rec = confirm(spec, study, task, pool, handle, rec, on_progress=on_progress)
    save(spec, study, rec, tracker)
    return rec


def best_recommendation(spec: StudySpec, study: Any, task: Any) -> Recommendation:
    """The study's best complete trial as a Recommendation (``source: study``)."""
    from autoopt.errors import UsageError

    done = [t for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and "config" in t.user_attrs]
    if not done:
        raise RuntimeError(f"study '{study.study_name}' has no complete trial to recommend from; "
                           "see the trials' reasons in MLflow") if study.get_trials(deepcopy=False) else \
            UsageError("no trials ran; raise --trials or --timeout")
    pick = max if task.direction == "maximize" else min
    best = pick(done, key=lambda t: t.value)
    return Recommendation(task=spec.task, **best.user_attrs["config"], metric=task.metric,
                          direction=task.direction, value=best.value, study_name=study.study_name,
                          trial_number=best.number, extra={"source": "study"})


def save(spec: StudySpec, study: Any, rec: Recommendation, tracker: Any) -> Path:
    """Store with the study, write ``<out>/<task>.json``, and log both plus the plots to MLflow."""
    from autoopt import recommendation as recommend_mod

    recommend_mod.store(study, rec)
    path = rec.save(spec.out)
    try:
        tracker.log_dict(rec.to_dict(), f"recommendation/{Path(path).name}")
        from autoopt.report import optimization_history

        fig = optimization_history(study)
        try:
            tracker.log_figure(fig, "plots/optimization_history.png")
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)  # figures are global in pyplot: a long-lived process would leak them
    except Exception as exc:
        log.warning("could not log the recommendation to MLflow: %s", exc)
    return path


def _save_best_so_far(spec: StudySpec, study: Any, task: Any, tracker: Any) -> None:
    try:
        save(spec, study, best_recommendation(spec, study, task), tracker)
    except Exception as exc:
        log.warning("no best-so-far recommendation written: %s", exc)
