"""The Optuna study and its storage.

Modules, low to high:

* ``backends``: the storage-backend seam (SQLite, PostgreSQL), chosen once from the URL: engine
  options, URL normalisation, the ask and creation locks, the preflight ``check``;
* ``storage``: ``open_storage``, and ``with_retry`` for a database that went away;
* ``snapshot``: ``SnapshotStorage``, a ``BaseStorage`` wrapper serving one read of the trials
  per decision (``trials_snapshot``), and ``SnapshotStudy``, a study that names its wrapper;
* ``samplers``: ``build_sampler`` and ``GroupTPESampler``;
* ``stale``: heartbeats and stale trials (``fail_stale``, ``retry_trial``);
* ``studies``: ``open_study``, ``load_study``, ``budget_used``.

Passwords in URLs are masked by ``autoopt.redact`` (re-exported here).
"""

from __future__ import annotations

import warnings

import optuna

from autoopt.redact import mask_url, redact, redact_logs
from autoopt.study.backends import (
    CONNECT_TIMEOUT_S,
    Backend,
    PostgresBackend,
    SQLiteBackend,
    absolute_sqlite,
    ask_lock,
    backend_for,
    connect_timeout_s,
    creation_lock,
    sqlite_path,
)
from autoopt.study.samplers import GroupTPESampler, build_sampler
from autoopt.study.snapshot import (
    SnapshotStorage,
    SnapshotStudy,
    storage_of,
    study_id_of,
    trial_id_of,
    trials_snapshot,
)
from autoopt.study.stale import fail_stale, record_heartbeat, retry_trial
from autoopt.study.storage import (
    GRACE_S,
    HEARTBEAT_S,
    MAX_RETRY,
    STORAGE_RETRY_S,
    StorageDown,
    check_storage,
    is_busy,
    is_unreachable,
    open_storage,
    storage_retry_s,
    with_retry,
)
from autoopt.study.studies import (
    PORTFOLIO,
    WARMSTART,
    budget_used,
    counts,
    load_existing_study,
    load_study,
    open_study,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats, groups and stale-trial failing are "experimental" in Optuna but are what a
# distributed ask/tell loop needs; their warnings would only clutter the user's terminal.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore",
                        message=".*Heartbeat of storage is supposed to be used with Study.optimize.*")

__all__ = [
    "CONNECT_TIMEOUT_S", "GRACE_S", "HEARTBEAT_S", "MAX_RETRY", "PORTFOLIO", "STORAGE_RETRY_S", "WARMSTART", "Backend",
    "GroupTPESampler",
    "PostgresBackend", "SQLiteBackend", "SnapshotStorage", "SnapshotStudy", "StorageDown", "absolute_sqlite",
    "ask_lock", "backend_for", "budget_used", "build_sampler", "check_storage", "connect_timeout_s", "counts",
    "creation_lock", "fail_stale", "is_busy", "is_unreachable", "load_existing_study", "load_study", "mask_url",
    "open_storage", "open_study", "record_heartbeat", "redact", "redact_logs", "retry_trial", "sqlite_path",
    "storage_of", "storage_retry_s", "study_id_of", "trial_id_of", "trials_snapshot", "with_retry",
]
