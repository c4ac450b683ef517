"""Heartbeats and stale trials: a study survives its drivers' crashes.

Every driver records a heartbeat for each trial in flight (every ``HEARTBEAT_S``). Any driver,
a resumed one included, fails the RUNNING trials of a driver that stopped beating for
``GRACE_S`` (``fail_stale``), and Optuna's ``RetryHeartbeatStaleTrialCallback`` re-queues them
(at most ``MAX_RETRY`` times); ``retry_trial`` re-queues a trial whose worker died.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy import DateTime, bindparam, text

import autoopt.study.quiet  # noqa: F401  (Optuna quietened first)
from autoopt.study.snapshot import snapshot_study, storage_of, study_id_of, trial_id_of
from autoopt.study.storage import GRACE_S, MAX_RETRY

# Optuna has no public call for "RUNNING trials that never got a heartbeat"; its schema (the
# tables trials and trial_heartbeats, versioned by its Alembic migrations) is read directly.
# tests/test_storage.py fails loudly if that schema moves.
_NEVER_BEATEN = text(
    "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
    "WHERE t.study_id = :study AND t.state = 'RUNNING' AND h.trial_id IS NULL AND t.datetime_start < :cutoff"
).bindparams(bindparam("cutoff", type_=DateTime()))

def fail_stale(study: optuna.Study) -> None:
    """Fail (and re-queue) the RUNNING trials whose driver stopped sending heartbeats, and
    those that never got one (their driver died between asking and the first beat)."""
    # On the storage as opened (with Optuna's heartbeats), for Optuna's own ``fail_stale_trials``:
    # the snapshot wrapper does not carry heartbeats. Kept by the study, not here.
    plain = snapshot_study(study).on_base()
    optuna.storages.fail_stale_trials(plain)
    storage = storage_of(study)
    callback = storage.base.get_heartbeat_stale_trial_callback() if isinstance(storage.base, RDBStorage) else None
    for trial_id in _never_beaten(study):
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another driver got there first
        if callback is not None:
            callback(plain, storage.get_trial(trial_id))


def _never_beaten(study: optuna.Study) -> list[int]:
    """RUNNING trials older than twice the grace period without any heartbeat. Optuna's own
    check skips them, so a driver killed right after ``ask`` would leave them RUNNING."""
    base = storage_of(study).base
    if not isinstance(base, RDBStorage):
        return []
    # datetime_start is the asking driver's local time: compare with ours, with a wide margin.
    cutoff = datetime.now() - timedelta(seconds=2 * GRACE_S)
    with base.engine.connect() as conn:
        return [row[0] for row in conn.execute(_NEVER_BEATEN, {"study": study_id_of(study), "cutoff": cutoff})]


def retry_trial(study: optuna.Study, trial_number: int) -> None:
    """Re-queue a failed trial, as the heartbeat path does for a dead driver."""
    frozen = storage_of(study).get_trial(trial_id_of(study, trial_number))
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, frozen)


def record_heartbeat(study: optuna.Study, trial_number: int) -> None:
    """Record a heartbeat for trial ``trial_number`` (its driver is alive); inside
    ``deferred_writes``, with the step's other writes."""
    storage_of(study).record_heartbeat(trial_id_of(study, trial_number))
