"""The trial log: a driver keeps a finished trial slim (``slim_log``), TPE's window reads the log,
and sampling with a fixed seed proposes what it proposes on whole trials."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from autoopt.study import full_trials, open_storage, open_study, slim_log, storage_of
from autoopt.study.log import KEPT_SYSTEM_ATTRS, KEPT_USER_ATTRS
from autoopt.study.optuna_private import study_trials
from autoopt.study.samplers import GroupTPESampler, _WindowedStudy
from autoopt.study.snapshot import SnapshotStudy
from autoopt.study.window import TailWindow


def _run(study: optuna.Study, n: int, complete_every: int = 4) -> None:
    """``n`` trials in autoopt's conditional way: a family, then its own params; each carries a
    config and a history and reports every epoch; one in ``complete_every`` completes, the others
    are pruned."""
    for i in range(n):
        trial = study.ask()
        family = trial.suggest_categorical("optimizer", ["sgd", "adam"])
        lr = trial.suggest_float(f"{family}.lr", 1e-4, 1.0, log=True)
        if family == "sgd":
            trial.suggest_float("sgd.momentum", 0.0, 0.99)
        trial.set_user_attr("config", {"optimizer": family, "optimizer_params": {"lr": lr}})
        trial.set_user_attr("history", [{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(5)])
        for step in range(5):
            trial.report(lr * (step + 1), step)
        study.tell(trial, lr) if i % complete_every == 0 else study.tell(trial, state=TrialState.PRUNED)


def _study(tmp_path: Path, name: str, *, slim: bool) -> SnapshotStudy:
    study = open_study(open_storage(f"sqlite:///{tmp_path / (name + '.db')}"), name, direction="maximize", seed=3)
    if slim:
        slim_log(study)
    study.sampler = GroupTPESampler(seed=7, n_startup_trials=5, constant_liar=True)
    return study


def test_the_log_keeps_finished_trials_slim_and_full_trials_reads_them_whole(tmp_path: Path) -> None:
    study = _study(tmp_path, "slim", slim=True)
    _run(study, 12)
    logged = study.get_trials(deepcopy=False)
    assert len(logged) == 12 and all(t.state.is_finished() for t in logged)
    for t in logged:
        assert set(t.user_attrs) <= set(KEPT_USER_ATTRS)  # no config, no history
        assert set(t.system_attrs) <= set(KEPT_SYSTEM_ATTRS)
        assert list(t.intermediate_values) == [4]  # the last report alone (TPE ranks pruned trials by it)
        assert t.params and t.distributions
    whole = list(full_trials(study, chunk=5))
    assert [t.number for t in whole] == list(range(12))
    assert all("config" in t.user_attrs and len(t.intermediate_values) == 5 for t in whole)
    assert [t.params for t in whole] == [t.params for t in logged]
    assert storage_of(study).slim


def test_tpe_reads_its_window_from_the_log_and_samples_as_on_whole_trials(tmp_path: Path) -> None:
    slim, whole = _study(tmp_path, "slim", slim=True), _study(tmp_path, "whole", slim=False)
    # So few complete that TPE's "good" model takes pruned trials too, ranked by their last report.
    _run(slim, 30, complete_every=15)
    _run(whole, 30, complete_every=15)
    assert [t.params for t in slim.trials] == [t.params for t in whole.trials]  # same seed, same proposals
    assert [t.value for t in slim.trials] == [t.value for t in whole.trials]

    windowed = _WindowedStudy(slim, TailWindow(8, 3, maximize=True))
    window = windowed._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    log = study_trials(slim, use_cache=False)
    assert window and all(any(t is x for x in log) for t in window)  # the log's records, not copies
    assert all("config" not in t.user_attrs for t in window)
