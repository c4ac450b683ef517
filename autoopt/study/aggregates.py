"""Aggregate reads of Optuna's tables across studies, and the schema every hand-written query
of autoopt assumes.

The prior (``autoopt.screen.prior``) and ``recommend`` read hundreds of studies at once, and the
pruners a whole rung (``rung``); Optuna's API would load every trial of each. These
queries read what they need in bounded rows instead: per study one row of each attribute asked
for, per study and family one aggregate row, a few trials per study. They name Optuna's tables
and columns (``studies``, ``study_directions``, ``study_user_attributes``, ``trials``,
``trial_values``, ``trial_params``, ``trial_user_attributes``, ``trial_intermediate_values``),
which Optuna versions through its Alembic migrations.

Three other modules query those tables, each for one job: ``reads`` (a study's changed trials,
in one statement), ``stale`` (RUNNING trials that never got a heartbeat) and ``writes`` (a
step's writes to a trial, through Optuna's own table models); no module outside
``autoopt.study`` does (``tests/test_house.py``). ``SCHEMA`` lists every column the SQL here, in
``reads`` and in ``stale`` uses; ``tests/test_scale.py`` checks it against the installed Optuna,
at the lowest and highest versions CI installs.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CHUNK = 100  # ids per query (SQLite's limit on bound variables)

# The tables and columns these queries assume, and those of ``reads`` and ``stale`` (checked
# against the installed Optuna by the tests).
SCHEMA: dict[str, tuple[str, ...]] = {
    "studies": ("study_id", "study_name"),
    "study_directions": ("study_id", "objective", "direction"),
    "study_user_attributes": ("study_id", "key", "value_json"),
    "trials": ("trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"),
    "trial_values": ("trial_id", "objective", "value", "value_type"),
    "trial_params": ("param_id", "trial_id", "param_name", "param_value", "distribution_json"),
    "trial_user_attributes": ("trial_id", "key", "value_json"),
    "trial_system_attributes": ("trial_id", "key", "value_json"),
    "trial_intermediate_values": ("trial_id", "step", "intermediate_value", "intermediate_value_type"),
    "trial_heartbeats": ("trial_id",),
}


def _text(sql: str, *expanding: str) -> Any:
    from sqlalchemy import bindparam, text  # here: the SQLite reader below needs no SQLAlchemy

    return text(sql).bindparams(*(bindparam(name, expanding=True) for name in expanding))


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def _direction(value: Any) -> str:
    return str(getattr(value, "name", value)).lower()


def studies(conn: Any, *, names: Sequence[str] | None = None, exclude: str | None = None,
            limit: int = 200) -> list[tuple[int, str, str]]:
    """``(study_id, name, direction)`` of the studies ``names``, else of the ``limit`` most
    recent ones; never ``exclude``."""
    head = ("SELECT s.study_id, s.study_name, d.direction FROM studies s JOIN study_directions d "
            "ON d.study_id = s.study_id AND d.objective = 0 ")
    if names is not None:
        rows = [r for chunk in chunks(list(names)) for r in conn.execute(
            _text(head + "WHERE s.study_name IN :names", "names"), {"names": chunk})]
        rows = [r for r in rows if r[1] != exclude]
    else:
        rows = list(conn.execute(_text(head + "WHERE s.study_name <> :exclude ORDER BY s.study_id DESC LIMIT :limit"),
                                 {"exclude": exclude or "", "limit": limit}))
    return [(int(i), str(n), _direction(d)) for i, n, d in rows]


def study_attrs(conn: Any, ids: Sequence[int], keys: Sequence[str]) -> dict[int, dict[str, Any]]:
    """The user attrs ``keys`` of the studies ``ids``, decoded (one that does not decode is left out)."""
    return _user_attrs(conn, "study", ids, keys)


def _user_attrs(conn: Any, of: str, ids: Sequence[int], keys: Sequence[str]) -> dict[int, dict[str, Any]]:
    """The user attrs ``keys`` of the studies or trials (``of``) ``ids``, decoded (one that does
    not decode is left out)."""
    out: dict[int, dict[str, Any]] = {int(i): {} for i in ids}
    for chunk in chunks(list(ids)):
        for owner, key, value in conn.execute(_text(
                f"SELECT {of}_id, key, value_json FROM {of}_user_attributes WHERE {of}_id IN :ids AND key IN :keys",
                "ids", "keys"), {"ids": chunk, "keys": list(keys)}):
            try:
                out[int(owner)][key] = json.loads(value)
            except (TypeError, ValueError):
                continue
    return out


def family_bests(conn: Any, ids: Sequence[int], param: str = "optimizer"
                 ) -> Iterator[tuple[int, float, str, float, float]]:
    """Per study and value of ``param``: ``(study_id, param_value, distribution_json, max, min)``
    of the complete trials' values."""
    for chunk in chunks(list(ids)):
        yield from conn.execute(_text(
            "SELECT t.study_id, p.param_value, p.distribution_json, MAX(v.value), MIN(v.value) FROM trials t "
            "JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
            "JOIN trial_params p ON p.trial_id = t.trial_id AND p.param_name = :param "
            "WHERE t.study_id IN :ids AND t.state = 'COMPLETE' AND v.value IS NOT NULL "
            "GROUP BY t.study_id, p.param_value, p.distribution_json", "ids"), {"ids": chunk, "param": param})


def marked_trials(conn: Any, ids: Sequence[int], marks: Sequence[str], param: str = "optimizer"
                  ) -> Iterator[tuple[int, int, str, float | None, float, str]]:
    """The finished (complete, pruned) trials of the studies ``ids`` with one of the user attrs
    ``marks`` (once each): ``(study_id, trial_id, state, value, param_value, distribution_json)``."""
    for chunk in chunks(list(ids)):
        for study_id, trial_id, state, value, pvalue, dist in conn.execute(_text(
                "SELECT t.study_id, t.trial_id, t.state, v.value, p.param_value, p.distribution_json FROM trials t "
                "JOIN trial_params p ON p.trial_id = t.trial_id AND p.param_name = :param "
                "LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
                "WHERE t.study_id IN :ids AND t.state IN ('COMPLETE', 'PRUNED') AND EXISTS (SELECT 1 FROM "
                "trial_user_attributes a WHERE a.trial_id = t.trial_id AND a.key IN :marks)", "ids", "marks"),
                {"ids": chunk, "marks": list(marks), "param": param}):
            yield int(study_id), int(trial_id), str(getattr(state, "name", state)), value, pvalue, dist


def last_reports(conn: Any, trial_ids: Sequence[int]) -> dict[int, tuple[int, float]]:
    """Each trial's last reported ``(step, value)`` (finite values only)."""
    last: dict[int, tuple[int, float]] = {}
    for chunk in chunks(list(trial_ids)):
        for trial_id, step, value in conn.execute(_text(
                "SELECT trial_id, step, intermediate_value FROM trial_intermediate_values WHERE trial_id IN :tids "
                "AND intermediate_value IS NOT NULL", "tids"), {"tids": chunk}):
            if value == value and abs(value) != float("inf") and (trial_id not in last or step > last[trial_id][0]):
                last[int(trial_id)] = (int(step), float(value))
    return last


def best_trial_attrs(conn: Any, study_id: int, direction: str, key: str, k: int) -> list[Any]:
    """The user attr ``key`` (decoded) of the ``k`` best complete trials of a study, best first
    (a trial without it, or with one that does not decode, is left out)."""
    order = "DESC" if direction == "maximize" else "ASC"
    tids = [r[0] for r in conn.execute(_text(
        "SELECT t.trial_id FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
        f"WHERE t.study_id = :id AND t.state = 'COMPLETE' AND v.value IS NOT NULL ORDER BY v.value {order} "
        "LIMIT :k"), {"id": study_id, "k": k})]
    if not tids:
        return []
    found = dict(conn.execute(_text(
        "SELECT trial_id, value_json FROM trial_user_attributes WHERE trial_id IN :tids AND key = :key",
        "tids"), {"tids": tids, "key": key}).all())
    out = []
    for tid in tids:
        try:
            out.append(json.loads(found[tid]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def sqlite_study_attr(path: Path, study_name: str, key: str) -> tuple[bool, Any]:
    """``(True, the study's user attr key, decoded, or None)``, read from a plain SQLite file
    with the standard library (no SQLAlchemy, no Optuna: an answer at once); ``(False, None)``
    when it cannot be read so (not an Optuna database, a locked or broken file). Opened as
    Optuna opens it, read-write (never created), so closing it leaves no WAL files behind;
    nothing is written."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
        try:
            rows = conn.execute(
                "SELECT a.value_json FROM studies AS s LEFT JOIN study_user_attributes AS a "
                "ON a.study_id = s.study_id AND a.key = ? WHERE s.study_name = ?", (key, study_name)
            ).fetchall()
        finally:
            conn.close()
        value = rows[0][0] if rows else None
        return True, None if value is None else json.loads(value)
    except (sqlite3.Error, OSError, ValueError):
        return False, None


def rung(conn: Any, study_id: int, step: int, keys: Sequence[str]) -> list[tuple[Any, ...]]:
    """The trials of a study that reported at ``step`` (any state): ``(trial_id, number, state,
    value, value at step, {key: decoded user attr})`` for the user attrs ``keys``. What a pruner's
    decision at that rung needs, in rows of that rung only (non-finite values come back None)."""
    rows = list(conn.execute(_text(
        "SELECT t.trial_id, t.number, t.state, v.value, iv.intermediate_value FROM trials t "
        "JOIN trial_intermediate_values iv ON iv.trial_id = t.trial_id AND iv.step = :step "
        "LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
        "WHERE t.study_id = :study"), {"study": study_id, "step": step}))
    attrs = _user_attrs(conn, "trial", [r[0] for r in rows], keys)
    return [(int(tid), int(number), str(getattr(state, "name", state)), value, at, attrs[int(tid)])
            for tid, number, state, value, at in rows]
