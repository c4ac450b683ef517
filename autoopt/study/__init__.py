"""The Optuna study and its storage.

Modules, low to high:

* ``backends``: the storage-backend seam (SQLite, PostgreSQL), chosen once from the URL: engine
  options, URL normalisation, the ask and creation locks, the preflight ``check``;
* ``storage``: ``open_storage``, and ``with_retry`` for a database that went away;
* ``optuna_private``: Optuna's private names (a trial's id, ``RDBStorage``'s read and session
  scope, the classes of its tables), the one module that touches them;
* ``writes``: a trial's writes of one step, made in one transaction (``TrialWrites``, ``flush``);
* ``log``: ``TrialLog``, a study's trials as the driver keeps them, finished ones slim;
* ``snapshot``: ``SnapshotStorage``, a ``BaseStorage`` wrapper serving one read of the trials
  per decision (``trials_snapshot``) from each study's log (``slim_log``: whole trials read again
  with ``full_trials``) and making a step's writes to a trial at once (``deferred_writes``), and
  ``SnapshotStudy``, a study that names its wrapper;
* ``samplers``: ``build_sampler`` and ``GroupTPESampler``;
* ``stale``: heartbeats and stale trials (``fail_stale``, ``retry_trial``);
* ``studies``: ``open_study``, ``load_study``, ``budget_used``;
* ``view``: ``StudyView``, the study as a driver last read it, with its counts kept incrementally;
* ``aggregates``: the aggregate reads of Optuna's tables (the prior's, ``recommend``'s): the one
  place autoopt queries them, with the schema it assumes (``SCHEMA``) checked by the tests.

Names are imported from their module on first use (PEP 562), so that ``autoopt.study.aggregates``
reads a SQLite file without importing Optuna or SQLAlchemy (``recommend`` stays light).

Passwords in URLs are masked by ``autoopt.base.redact`` (re-exported here).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what mypy and readers see; at run time, ``__getattr__`` below
    from autoopt.base.redact import (
        mask_url,
        redact,
        redact_logs,
    )
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
    from autoopt.study.record import (
        SCREEN,
        WARMSTART,
        TrialRecord,
    )
    from autoopt.study.samplers import (
        GroupTPESampler,
        build_sampler,
    )
    from autoopt.study.snapshot import (
        SnapshotStorage,
        SnapshotStudy,
        deferred_writes,
        full_trials,
        slim_log,
        storage_of,
        study_id_of,
        trial_id_of,
        trials_snapshot,
    )
    from autoopt.study.stale import (
        fail_stale,
        record_heartbeat,
        retry_trial,
    )
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
        budget_used,
        counts,
        load_existing_study,
        load_study,
        open_study,
    )

# Each name, and the module it comes from.
_EXPORTS: dict[str, str] = {
    "Backend": "autoopt.study.backends",
    "CONNECT_TIMEOUT_S": "autoopt.study.backends",
    "GRACE_S": "autoopt.study.storage",
    "GroupTPESampler": "autoopt.study.samplers",
    "HEARTBEAT_S": "autoopt.study.storage",
    "MAX_RETRY": "autoopt.study.storage",
    "SCREEN": "autoopt.study.record",
    "TrialRecord": "autoopt.study.record",
    "PostgresBackend": "autoopt.study.backends",
    "SQLiteBackend": "autoopt.study.backends",
    "STORAGE_RETRY_S": "autoopt.study.storage",
    "SnapshotStorage": "autoopt.study.snapshot",
    "SnapshotStudy": "autoopt.study.snapshot",
    "StorageDown": "autoopt.study.storage",
    "WARMSTART": "autoopt.study.record",
    "absolute_sqlite": "autoopt.study.backends",
    "ask_lock": "autoopt.study.backends",
    "backend_for": "autoopt.study.backends",
    "budget_used": "autoopt.study.studies",
    "build_sampler": "autoopt.study.samplers",
    "check_storage": "autoopt.study.storage",
    "connect_timeout_s": "autoopt.study.backends",
    "counts": "autoopt.study.studies",
    "creation_lock": "autoopt.study.backends",
    "deferred_writes": "autoopt.study.snapshot",
    "fail_stale": "autoopt.study.stale",
    "is_busy": "autoopt.study.storage",
    "is_unreachable": "autoopt.study.storage",
    "load_existing_study": "autoopt.study.studies",
    "load_study": "autoopt.study.studies",
    "mask_url": "autoopt.base.redact",
    "open_storage": "autoopt.study.storage",
    "open_study": "autoopt.study.studies",
    "record_heartbeat": "autoopt.study.stale",
    "redact": "autoopt.base.redact",
    "redact_logs": "autoopt.base.redact",
    "full_trials": "autoopt.study.snapshot",
    "retry_trial": "autoopt.study.stale",
    "sqlite_path": "autoopt.study.backends",
    "slim_log": "autoopt.study.snapshot",
    "storage_of": "autoopt.study.snapshot",
    "storage_retry_s": "autoopt.study.storage",
    "study_id_of": "autoopt.study.snapshot",
    "trial_id_of": "autoopt.study.snapshot",
    "trials_snapshot": "autoopt.study.snapshot",
    "with_retry": "autoopt.study.storage",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autoopt.study' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "CONNECT_TIMEOUT_S",
    "GRACE_S",
    "HEARTBEAT_S",
    "MAX_RETRY",
    "SCREEN",
    "STORAGE_RETRY_S",
    "WARMSTART",
    "Backend",
    "GroupTPESampler",
    "PostgresBackend",
    "SQLiteBackend",
    "SnapshotStorage",
    "SnapshotStudy",
    "StorageDown",
    "TrialRecord",
    "absolute_sqlite",
    "ask_lock",
    "backend_for",
    "budget_used",
    "build_sampler",
    "check_storage",
    "connect_timeout_s",
    "counts",
    "creation_lock",
    "deferred_writes",
    "fail_stale",
    "full_trials",
    "is_busy",
    "is_unreachable",
    "load_existing_study",
    "load_study",
    "mask_url",
    "open_storage",
    "open_study",
    "record_heartbeat",
    "redact",
    "redact_logs",
    "retry_trial",
    "slim_log",
    "sqlite_path",
    "storage_of",
    "storage_retry_s",
    "study_id_of",
    "trial_id_of",
    "trials_snapshot",
    "with_retry",
]
