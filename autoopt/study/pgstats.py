"""PostgreSQL's statistics of Optuna's trial tables, kept as the study grows.

PostgreSQL plans each read from its statistics of the tables, which autovacuum refreshes. Where
it is off, or behind a bulk load (a study copied in, thousands of trials written at once), the
planner guesses the tables' sizes, and a read of the few trials that changed can scan every
trial of the study: a trivial trial cost 25 ms at 1,000 trials and 30 ms at 10,000 on tables
never analysed. ``refresh`` analyses the tables whose rows changed by more than autovacuum's
own rule (50 rows and a tenth of the table), as autovacuum would have: the driver calls it on
its first read of a study and again as the study grows (``Refresher``). Where autovacuum keeps
up, it finds nothing stale; a role that may not analyse the tables is skipped with a debug line.
"""

from __future__ import annotations

import logging

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

TABLES = ("trials", "trial_params", "trial_values", "trial_user_attributes", "trial_system_attributes",
          "trial_intermediate_values")
_STALE = text("""
SELECT relname FROM pg_stat_user_tables
 WHERE schemaname = current_schema() AND relname IN :tables
   AND n_mod_since_analyze > 50 + 0.1 * n_live_tup
""").bindparams(bindparam("tables", expanding=True))
EVERY_MIN = 200  # trials read between two checks, at least (a tenth of the study above 2,000)


def refresh(engine: Engine) -> list[str]:
    """Analyse the trial tables whose statistics are stale (PostgreSQL); the tables analysed."""
    if engine.name != "postgresql":
        return []
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            stale = [name for (name,) in conn.execute(_STALE, {"tables": list(TABLES)})]
            for name in stale:
                conn.execute(text(f'ANALYZE "{name}"'))
    except SQLAlchemyError as exc:  # e.g. a role that may not analyse Optuna's tables
        log.debug("the trial tables' statistics were not refreshed: %s", exc)
        return []
    if stale:
        log.debug("analysed %s", ", ".join(stale))
    return stale


class Refresher:
    """When a study's reader should check the statistics again: at its first read, then each
    time the trials it has read grew by ``EVERY_MIN``, or a tenth, since the last check."""

    def __init__(self) -> None:
        self.next_at = 0

    def due(self, trials: int) -> bool:
        if trials < self.next_at:
            return False
        self.next_at = trials + max(EVERY_MIN, trials // 10)
        return True
