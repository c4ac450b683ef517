"""Optuna, quietened for autoopt's users: imported by every module of ``autoopt.study`` that
imports Optuna.

Heartbeats, groups and stale-trial failing are "experimental" in Optuna but are what a
distributed ask/tell loop needs; their warnings would only clutter the user's terminal.
"""

from __future__ import annotations

import warnings

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used with Study.optimize.*")
