"""Passwords in the storage and tracking URLs never show: not in the progress output, the logs
(the driver's, the Ray workers', the MLflow server's), MLflow params and tags, the study, the
recommendation JSON, nor the error messages for an unreachable storage or tracking server.

A PostgreSQL role with a password owns the Optuna database; the tracking URL carries basic-auth
credentials (``http://user:password@host``). The development PostgreSQL trusts 127.0.0.1, so any
password gets in: what matters here is where the password goes, not that it is checked."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from services import (
    Driver,
    MlflowServer,
    RayCluster,
    database,
    driver_env,
    free_port,
    load_trials,
    pg_role,
    pg_url,
    runs_of,
    service_env,
)

from autoopt.base.redact import mask_url, redact, redact_logs

PG_PASSWORD = f"Pg-s3cret-{uuid.uuid4().hex[:8]}"
ML_PASSWORD = f"Ml-s3cret-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def owned_db(pg: str) -> Iterator[tuple[str, str]]:
    """(role, database): a role with PG_PASSWORD that owns a fresh database."""
    with pg_role(PG_PASSWORD) as role, database(owner=role) as name:
        yield role, name


def assert_no_secret(text: str, where: str) -> None:
    for secret in (PG_PASSWORD, ML_PASSWORD):
        assert secret not in text, f"a password shows in {where}"


@pytest.mark.cluster
@pytest.mark.slow
def test_passwords_never_show(cluster: RayCluster, mlflow_server: MlflowServer, owned_db: tuple[str, str],
                              tmp_path: Path) -> None:
    server = mlflow_server
    role, dbname = owned_db
    storage = pg_url(dbname, user=role, password=PG_PASSWORD)
    tracking = server.url.replace("http://", f"http://tracker:{ML_PASSWORD}@")
    study = f"p{uuid.uuid4().hex[:8]}"
    work = tmp_path / "work"
    driver = Driver(["--task", "digits", "--trials", "2", "--epochs", "1", "--no-confirm", "--study", study,
                     "--storage", storage, "--mlflow-uri", tracking, "--ray-address", cluster.address],
                    work, driver_env(cluster))
    assert driver.run(300) == 0, redact(driver.output()[-3000:])

    # The progress output names both, masked: the test looks at the right output.
    assert f"{role}:***@" in driver.stderr and "tracker:***@" in driver.stderr, driver.stderr[-2000:]
    assert_no_secret(driver.output(), "the progress output")
    for path in work.rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_text(errors="replace"), f"{path.relative_to(work)}")
    [saved] = (work / "recommendations").glob("*.json")  # named after the study (or the task)
    rec = json.loads(saved.read_text())
    assert rec["trial_number"] in (0, 1)

    parents, nested = runs_of(server, study)
    assert len(parents) == 1 and len(nested) == 2
    for run in parents + nested:
        assert_no_secret(json.dumps([run.data.params, run.data.tags]), f"MLflow run {run.info.run_name}")
    assert parents[0].data.params["storage"] == mask_url(storage)
    client = server.client()
    [artifact] = [f.path for f in client.list_artifacts(parents[0].info.run_id, "recommendation")]
    stored = client.download_artifacts(parents[0].info.run_id, artifact, str(tmp_path))
    assert_no_secret(Path(stored).read_text(), "the recommendation artifact")

    trials = load_trials(pg_url(dbname), study)
    assert_no_secret(json.dumps([[t.user_attrs, t.system_attrs] for t in trials], default=str), "the study")
    assert_no_secret(server.service.output() if server.service else "", "the MLflow server's log")
    assert_no_secret(cluster.log_text(), "the Ray cluster's logs")


@pytest.mark.slow
def test_unreachable_storage_and_tracking_are_named_masked(tmp_path: Path) -> None:
    closed = free_port()
    # No database listens there: exit 2, one line, the URL without its password.
    storage = f"postgresql+psycopg://someone:{PG_PASSWORD}@127.0.0.1:{closed}/optuna"
    result = run_cli("tune", "--task", "digits", "--trials", "1", "--epochs", "1", "--no-confirm",
                     "--storage", storage, cwd=tmp_path, timeout=120, env=service_env())
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot open storage postgresql+psycopg://someone:***@127.0.0.1:"), line
    assert_no_secret(result.stdout + result.stderr, "the storage error")

    # No tracking server there either (MLflow's own messages quote the URL, password and all).
    result = run_cli("tune", "--task", "digits", "--trials", "1", "--epochs", "1", "--no-confirm",
                     "--mlflow-uri", f"http://tracker:{ML_PASSWORD}@127.0.0.1:{closed}", cwd=tmp_path,
                     timeout=120, env=service_env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                                                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}))
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot ") and " MLflow at http://tracker:***@127.0.0.1:" in line, line
    assert_no_secret(result.stdout + result.stderr, "the tracking error")


def test_log_records_are_redacted_whatever_logger(caplog: pytest.LogCaptureFixture) -> None:
    before = logging.getLogRecordFactory()
    try:
        redact_logs()
        redact_logs()  # idempotent: one layer of redaction
        with caplog.at_level(logging.WARNING):
            logging.getLogger("mlflow.some.client").warning(
                "API request to %s failed", f"http://tracker:{ML_PASSWORD}@mlflow:5000/api/2.0/runs")
            try:
                raise ConnectionError(f"cannot connect to postgresql://a:{PG_PASSWORD}@db/optuna")
            except ConnectionError:
                logging.getLogger("sqlalchemy.pool").exception("connection lost")
        assert "http://tracker:***@mlflow:5000" in caplog.text
        assert_no_secret(caplog.text, "a log record")
        assert_no_secret("\n".join(r.exc_text or "" for r in caplog.records), "a logged traceback")
    finally:
        logging.setLogRecordFactory(before)
