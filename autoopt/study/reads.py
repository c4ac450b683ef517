"""A study's changed trials in one statement.

Optuna's ``RDBStorage`` reads trials in one transaction of seven statements: the study checked,
the trials, then each of their five kinds of attributes (params, values, user and system
attributes, intermediate values). On PostgreSQL each is a round trip, and the transaction two
more (its ``BEGIN`` and its end). ``read_trials`` reads the same rows in one statement, without
a transaction (each of Optuna's statements sees the database as of its own start anyway, at
PostgreSQL's default isolation): one ``UNION ALL`` of the study's row, the trials asked for and
their attributes, each row in the same six columns, and builds the trials as Optuna builds them
(``tests/test_writes.py`` checks the two against each other).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Collection
from typing import Any

from optuna import distributions
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import bindparam, text

# kind, trial id, an int (number, param id, objective, step), a name (state, param, key, value
# type), a float (param or value), a text (start, distribution, JSON), a second text (complete).
_ROWS = """
WITH picked AS (
  SELECT trial_id FROM trials WHERE study_id = :study AND (trial_id > :after OR trial_id IN :ids)
)
SELECT 0, study_id, CAST(NULL AS INTEGER), CAST(NULL AS VARCHAR(512)), CAST(NULL AS FLOAT), CAST(NULL AS TEXT),
       CAST(NULL AS VARCHAR(40)) FROM studies WHERE study_id = :study
UNION ALL
SELECT 1, trial_id, number, CAST(state AS VARCHAR(16)), NULL, CAST(datetime_start AS VARCHAR(40)),
       CAST(datetime_complete AS VARCHAR(40)) FROM trials WHERE trial_id {picked}
UNION ALL
SELECT 2, trial_id, param_id, param_name, param_value, distribution_json, NULL
  FROM trial_params WHERE trial_id {picked}
UNION ALL
SELECT 3, trial_id, objective, CAST(value_type AS VARCHAR(16)), value, NULL, NULL
  FROM trial_values WHERE trial_id {picked}
UNION ALL
SELECT 4, trial_id, NULL, key, NULL, value_json, NULL
  FROM trial_user_attributes WHERE trial_id {picked}
UNION ALL
SELECT 5, trial_id, NULL, key, NULL, value_json, NULL
  FROM trial_system_attributes WHERE trial_id {picked}
UNION ALL
SELECT 6, trial_id, step, CAST(intermediate_value_type AS VARCHAR(16)), intermediate_value, NULL, NULL
  FROM trial_intermediate_values WHERE trial_id {picked}
"""


def read_trials(base: RDBStorage, study_id: int, after: int, ids: Collection[int]) -> list[FrozenTrial]:
    """The trials of study ``study_id`` whose id is above ``after`` or in ``ids``, by id, as
    ``RDBStorage._get_trials`` reads them; a ``KeyError`` for a study that does not exist."""
    from autoopt.study.optuna_private import models

    # On PostgreSQL, the picked ids as one array: each table is then read through its index on
    # trial_id whatever the planner guesses of the study (a semi-join, on tables it has no
    # statistics of yet, reads every row of trial_params instead: 25 ms at 10,000 trials).
    picked = "= ANY(ARRAY(SELECT trial_id FROM picked))" if base.engine.name == "postgresql" else \
        "IN (SELECT trial_id FROM picked)"
    stmt = text(_ROWS.format(picked=picked)).bindparams(bindparam("ids", expanding=True))
    with base.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        rows = conn.execute(stmt, {"study": study_id, "after": after, "ids": sorted(ids) or [-1]}).all()
    if not any(row[0] == 0 for row in rows):
        raise KeyError(f"No study with study_id {study_id} exists.")
    trials: dict[int, dict[str, Any]] = {}
    params: dict[int, list[tuple[int, str, float, str]]] = {}
    for kind, trial_id, i, name, number, body, complete in sorted(rows, key=lambda r: r[0]):
        if kind == 1:
            trials[trial_id] = {"number": i, "state": TrialState[name], "start": _when(body),
                                "complete": _when(complete), "values": {}, "user": {}, "system": {},
                                "intermediate": {}}
        elif trial_id not in trials:
            continue
        elif kind == 2:
            params.setdefault(trial_id, []).append((i, name, number, body))
        elif kind == 3:
            trials[trial_id]["values"][i] = models.TrialValueModel.stored_repr_to_value(
                number, models.TrialValueModel.TrialValueType[name])
        elif kind in (4, 5):
            trials[trial_id]["user" if kind == 4 else "system"][name] = json.loads(body)
        elif kind == 6:
            trials[trial_id]["intermediate"][i] = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                number, models.TrialIntermediateValueModel.TrialIntermediateValueType[name])
    return [_frozen(trial_id, t, sorted(params.get(trial_id, ()))) for trial_id, t in sorted(trials.items())]


def _when(stored: str | None) -> datetime.datetime | None:
    return None if stored is None else datetime.datetime.fromisoformat(stored)


def _frozen(trial_id: int, t: dict[str, Any], params: list[tuple[int, str, float, str]]) -> FrozenTrial:
    dists = {name: distributions.json_to_distribution(dist) for _, name, _, dist in params}
    values = t["values"]
    return FrozenTrial(
        number=t["number"], state=t["state"], value=None,
        values=[values[k] for k in sorted(values)] if values else None,
        datetime_start=t["start"], datetime_complete=t["complete"],
        params={name: dists[name].to_external_repr(value) for _, name, value, _ in params},
        distributions=dists, user_attrs=t["user"], system_attrs=t["system"],
        intermediate_values=t["intermediate"], trial_id=trial_id)
