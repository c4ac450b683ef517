"""Shared fixtures: every test works in its own empty folder, as a new user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder with no autoopt environment variables leaking in."""
    monkeypatch.chdir(tmp_path)
    for var in ("AUTOOPT_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "AUTOOPT_DATA"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def run_cli(*args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """Run the `autoopt` command in ``cwd`` and capture what a user sees."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("AUTOOPT_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "autoopt", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)
