"""Pruning that pays without throwing away late bloomers: the guards, the worker's reporter,
and a study on a made-up plateau task (``late_bloomer``) where an eager pruner loses."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from late_bloomer import CONFIGS, EPOCHS, task
from optuna.pruners import MedianPruner, NopPruner
from optuna.trial import TrialState, create_trial

from autoopt.space import TrialConfig
from autoopt.study import open_storage, open_study, trial_id_of
from autoopt.training.pruning import GuardedPruner, ReferenceTrials, TrialReporter, build_pruner, may_prune
from autoopt.training.train import train

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_no_pruning_in_the_warm_up_nor_at_the_last_epoch() -> None:
    pruner = build_pruner("median", epochs=10, warmup=0.3)
    assert isinstance(pruner, GuardedPruner)
    assert [s for s in range(1, 11) if pruner.may_prune(s)] == [4, 5, 6, 7, 8, 9]
    assert [s for s in range(1, 11) if may_prune(pruner, s)] == [4, 5, 6, 7, 8, 9]
    assert isinstance(build_pruner("none", epochs=10, warmup=0.3), NopPruner)
    assert isinstance(build_pruner("median", epochs=1, warmup=0.0), NopPruner)
    assert not any(may_prune(NopPruner(), s) for s in range(1, 5))
    hyperband = build_pruner("hyperband", epochs=9, warmup=0.2)
    assert [s for s in range(1, 10) if hyperband.may_prune(s)] == [2, 3, 4, 5, 6, 7, 8]


def finished(curve: list[float]) -> optuna.trial.FrozenTrial:
    return create_trial(value=curve[-1], intermediate_values=dict(enumerate(curve, start=1)))


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_comeback_guard_vetoes_only_where_a_finished_trial_came_back(direction: str) -> None:
    sign = 1.0 if direction == "maximize" else -1.0
    guard = GuardedPruner(MedianPruner(n_startup_trials=0), warmup_steps=0, max_steps=10)
    curves = [[0.5, 0.6, 0.7, 0.8], [0.3, 0.4, 0.5, 0.6], [0.2, 0.3, 0.4, 0.5],
              [0.1, 0.1, 0.1, 0.95]]  # the last one sat low at step 2, then came back to the top
    done = [finished([sign * v for v in c]) for c in curves]
    maximize = direction == "maximize"

    def at(value: float, step: int = 2) -> optuna.trial.FrozenTrial:
        return create_trial(state=TrialState.RUNNING, intermediate_values={step: sign * value})

    # No worse than where the late bloomer stood at step 2, a trial is kept...
    assert guard.comeback_seen(done, at(0.1), 2, maximize=maximize)
    assert guard.comeback_seen(done, at(0.25), 2, maximize=maximize)
    # ...below it, no finished trial ever came back from there: the inner pruner decides.
    assert not guard.comeback_seen(done, at(0.05), 2, maximize=maximize)
    # Without the late bloomer, only a trial as high as the eventual best stays protected.
    assert not guard.comeback_seen(done[:3], at(0.45), 2, maximize=maximize)
    assert guard.comeback_seen(done[:3], at(0.65), 2, maximize=maximize)


def test_reporter_writes_in_the_background_and_asks_the_pruner_only_where_it_may_prune(
        tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'p.db'}", heartbeat=False)
    study = open_study(storage, "p", direction="maximize", pruner=build_pruner("median", epochs=4, warmup=0.25))
    for _ in range(4):
        study.add_trial(finished([0.8, 0.85, 0.9, 0.95]))
    trial = study.ask()
    with ThreadPoolExecutor(max_workers=1) as background:
        reporter = TrialReporter(study, trial_id_of(study, trial.number), trial.number, background=background)
        reporter.report(0.1, 1)
        assert not reporter.should_prune(1)  # warm-up: far behind, still kept
        reporter.report(0.1, 2)
        assert reporter.should_prune(2)  # behind the median, nobody came back from there
        reporter.report(0.1, 3)
        reporter.report(0.1, 4, write=False)  # the driver records the last epoch with the result
        assert not reporter.should_prune(4)  # the last epoch: nothing to save
        reporter.close()
    stored = study.trials[trial.number].intermediate_values
    assert stored == {1: 0.1, 2: 0.1, 3: 0.1}


def test_a_worker_prunes_against_finished_trials_at_most_its_reference_age_old(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'r.db'}", heartbeat=False)
    # Opened by autoopt.study, as the worker's is: its trials can be served from a snapshot.
    study = open_study(storage, "r", direction="maximize", pruner=build_pruner("median", epochs=4, warmup=0.0))
    reference = ReferenceTrials(max_age_s=3600.0)
    trial = study.ask()
    reporter = TrialReporter(study, trial_id_of(study, trial.number), trial.number, reference=reference)
    reporter.report(0.1, 1)
    assert not reporter.should_prune(1)  # nothing finished yet
    for _ in range(4):
        study.add_trial(finished([0.8, 0.85, 0.9, 0.95]))
    assert not reporter.should_prune(1)  # decided on this worker's read of a moment ago
    reference.max_age_s = 0.0
    assert reporter.should_prune(1)  # a fresh read sees the four finished trials ahead of it


def test_reporter_drives_hyperband_rungs_and_prunes_the_laggards(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat=False)
    study = open_study(storage, "h", direction="maximize", pruner=build_pruner("hyperband", epochs=9, warmup=0.0))
    with ThreadPoolExecutor(max_workers=1) as background:
        for quality in [0.9, 0.2, 0.8, 0.1, 0.7, 0.3, 0.95, 0.15, 0.6, 0.05] * 2:
            trial = study.ask()
            reporter = TrialReporter(study, trial_id_of(study, trial.number), trial.number, background=background)
            pruned = False
            for step in range(1, 10):
                reporter.report(quality * step / 9, step)
                if reporter.should_prune(step):
                    pruned = True
                    break
            reporter.close()
            study.tell(trial, state=TrialState.PRUNED) if pruned else study.tell(trial, quality)
    quality = {t.number: t.intermediate_values[t.last_step] * 9 / t.last_step for t in study.trials}
    pruned = sorted(round(quality[t.number], 2) for t in study.trials if t.state == TrialState.PRUNED)
    assert pruned and 0.95 not in pruned and 0.9 not in pruned, pruned
    assert {0.05, 0.1, 0.15} & set(pruned), pruned
    assert any(k.startswith("completed_rung_") for t in study.trials for k in t.system_attrs)
    assert study.best_value >= 0.9


def run_study(pruner: optuna.pruners.BasePruner, storage: str) -> tuple[optuna.Study, int]:
    """The configs of ``late_bloomer.CONFIGS`` in order, each trained on the plateau task with
    the pruner; returns the study and the epochs trained in all."""
    study = optuna.create_study(storage=storage, direction="minimize", pruner=pruner)
    for lr, momentum in CONFIGS:
        study.enqueue_trial({"lr": lr, "momentum": momentum})
    plateau = task()
    epochs = []

    def objective(trial: optuna.Trial) -> float:
        config = TrialConfig("sgd", {"lr": trial.suggest_float("lr", 1e-3, 1.0, log=True),
                                     "momentum": trial.suggest_float("momentum", 0.0, 0.99)})

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            trial.report(metrics["val_rmse"], epoch)
            return trial.should_prune()

        result = train(plateau, config, epochs=EPOCHS, on_epoch=on_epoch)
        epochs.append(len(result.history))
        if result.status == "pruned":
            raise optuna.TrialPruned()
        return result.value

    study.optimize(objective, n_trials=len(CONFIGS))
    return study, sum(epochs)


def state_of(study: optuna.Study, lr: float, momentum: float) -> TrialState:
    return next(t.state for t in study.trials if t.params == {"lr": lr, "momentum": momentum})


@pytest.mark.slow
def test_guarded_pruner_keeps_the_late_bloomer_and_saves_epochs_at_an_equal_best(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plateau.db'}"
    full, full_epochs = run_study(NopPruner(), url)
    # Optuna's default median pruner: no warm-up, no guard.
    eager, _ = run_study(MedianPruner(), url)
    # autoopt's: the warm-up a study file gives a task known to plateau for half its budget.
    guarded, guarded_epochs = run_study(build_pruner("median", epochs=EPOCHS, warmup=0.5), url)

    assert full_epochs == len(CONFIGS) * EPOCHS
    assert full.best_value < 0.01  # the late bloomers solve the task
    # The eager pruner cuts every bloomer while it sits on the plateau, and keeps the configs
    # that started fast: its best never solves the task.
    assert state_of(eager, 0.15, 0.9) == TrialState.PRUNED
    assert eager.best_value > 0.75 and eager.best_params["lr"] == 0.3
    # The guarded pruner keeps the first late bloomer, finds the same best, and still saves epochs.
    assert state_of(guarded, 0.15, 0.9) == TrialState.COMPLETE
    assert guarded.best_value == full.best_value
    saved = full_epochs - guarded_epochs
    assert saved >= 24, f"pruning saved {saved} of {full_epochs} epochs"
    assert any(t.state == TrialState.PRUNED for t in guarded.trials)
