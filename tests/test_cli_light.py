"""The light commands stay light: ``--help``, ``--version``, ``tasks`` and ``recommend`` never
import torch, Ray or MLflow (what makes them slow). This checks what is imported, not how long
it takes: timing belongs to benchmarks."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import run_cli

from autoopt import catalog
from autoopt.errors import UsageError
from autoopt.recommendation import Recommendation, load_stored

HEAVY = ("torch", "ray", "mlflow", "optuna", "sqlalchemy", "matplotlib", "scipy")

# Runs the CLI in a fresh interpreter, then prints which heavy modules it imported.
_PROBE = """
import json, os, sys
from autoopt.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in os.environ["HEAVY"].split(",") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def _probe(*args: str, cwd: Path) -> tuple[int, list[str], str]:
    """(exit code, heavy modules imported, stdout) of ``autoopt ARGS`` run in ``cwd``."""
    res = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=cwd, capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL,
                         env={**{k: v for k, v in os.environ.items() if k != "AUTOOPT_STORAGE"},
                              "HEAVY": ",".join(HEAVY)})
    report = json.loads(res.stderr.strip().splitlines()[-1])
    return report["code"], report["heavy"], res.stdout


def _rec() -> Recommendation:
    return Recommendation("digits", "adam", {"lr": 1e-3}, "cosine", {"eta_min_ratio": 0.01}, study_name="digits",
                          value=0.9, created_at="2026-01-01T00:00:00Z", source="study")


def _optuna_db(folder: Path, rec: Recommendation | None) -> str:
    """A SQLite Optuna storage in ``folder`` with a study ``digits`` (and ``rec`` stored with it)."""
    import optuna

    from autoopt.recommendation import store
    from autoopt.study import open_storage

    url = f"sqlite:///{folder / 'autoopt.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), study_name="digits")
    if rec is not None:
        store(study, rec)
    return url


def test_importing_the_cli_imports_no_heavy_library() -> None:
    code = f"import sys, autoopt.cli; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_version(tmp_path: Path) -> None:
    res = run_cli("--version", cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"autoopt {version('autoopt')}\n"


def test_help_and_tasks_import_no_heavy_library(tmp_path: Path) -> None:
    code, heavy, text = _probe("--help", cwd=tmp_path)
    assert (code, heavy) == (0, []) and "--version" in text and "recommend" in text
    code, heavy, text = _probe("tasks", cwd=tmp_path)
    assert (code, heavy) == (0, [])
    for name in catalog.BUILTIN:
        assert name in text


def test_recommend_reads_json_and_sqlite_without_heavy_libraries(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, heavy, _ = _probe("recommend", "--task", "digits", cwd=empty)
    assert (code, heavy) == (2, [])
    assert list(empty.iterdir()) == []  # looking created nothing

    shipped = tmp_path / "shipped"
    (shipped / "recommendations").mkdir(parents=True)
    _rec().save(shipped / "recommendations")
    code, heavy, text = _probe("recommend", "--task", "digits", cwd=shipped)
    assert (code, heavy) == (0, []) and json.loads(text) == _rec().to_dict()

    stored = tmp_path / "stored"
    stored.mkdir()
    _optuna_db(stored, _rec())
    files = sorted(stored.iterdir())
    code, heavy, text = _probe("recommend", "--task", "digits", "--format", "yaml", cwd=stored)
    assert (code, heavy) == (0, []) and "optimizer: adam" in text
    assert sorted(stored.iterdir()) == files  # reading left nothing behind (no WAL files)


@pytest.mark.parametrize("stored", [True, False])
def test_the_sqlite_read_matches_optunas(tmp_path: Path, stored: bool) -> None:
    from autoopt.study import load_existing_study, open_storage

    url = _optuna_db(tmp_path, _rec() if stored else None)
    via_optuna = load_existing_study(open_storage(url, heartbeat=False), "digits").user_attrs.get("recommendation")
    assert load_stored(url, "digits") == via_optuna == (_rec().to_dict() if stored else None)
    assert load_stored(url, "no-such-study") is None


def test_a_sqlite_file_that_is_not_optunas_gets_optunas_answer(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table x (a)")
    with pytest.raises(UsageError, match="not an Optuna study database"):
        load_stored(f"sqlite:///{db}", "digits")


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    assert load_stored(f"sqlite:///{tmp_path / 'none.db'}", "digits") is None
    assert load_stored(f"sqlite:///{tmp_path / 'none.db'}?timeout=5", "digits") is None  # through SQLAlchemy
    assert list(tmp_path.iterdir()) == []


def test_the_catalog_agrees_with_the_tasks_and_the_spec() -> None:
    from autoopt import spec, tasks
    from autoopt.tasks import digits, sequence

    assert tasks.BUILTIN is catalog.BUILTIN and tasks.task_sources() == catalog.SOURCES
    assert catalog.SOURCES["digits"] == digits.SOURCE
    assert catalog.SOURCES["mnist_lstm"] == sequence.SOURCES["mnist_lstm"]
    assert spec.DEFAULT_STORAGE == catalog.DEFAULT_STORAGE

