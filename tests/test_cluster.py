"""The cluster path, for real: PostgreSQL storage shared by the driver and every worker, a
two-node Ray started by ``ray start`` on loopback, an ``mlflow server`` on PostgreSQL with
proxied artifacts, and two drivers sharing one study."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import (
    Driver,
    MlflowServer,
    RayCluster,
    budget_used,
    database,
    driver_env,
    load_trials,
    pg_execute,
    pg_url,
    runs_of,
    shared_cluster,
    shared_mlflow,
)

pytestmark = pytest.mark.cluster


@pytest.fixture()
def cluster(request: pytest.FixtureRequest) -> RayCluster:
    return shared_cluster(request.config)


@pytest.fixture()
def mlflow_server(request: pytest.FixtureRequest) -> MlflowServer:
    return shared_mlflow(request.config)


@pytest.fixture()
def optuna_db() -> Iterator[str]:
    with database() as name:
        yield name


class ConnectionSampler:
    """Counts, every half second, the connections open on one database: the pools' footprint."""

    def __init__(self, dbname: str) -> None:
        self.dbname, self.peak = dbname, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            rows = pg_execute(f"select count(*) from pg_stat_activity where datname = '{self.dbname}'")
            self.peak = max(self.peak, rows[0][0])

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_tune_on_cluster_with_postgres_and_mlflow_server(cluster: RayCluster, mlflow_server: MlflowServer,
                                                         optuna_db: str, tmp_path: Path) -> None:
    study = f"c{uuid.uuid4().hex[:8]}"
    url = pg_url(optuna_db)
    # The storage from the environment, as a cluster job would get it.
    args = ["--task", "digits", "--trials", "4", "--epochs", "1", "--no-confirm", "--study", study,
            "--ray-address", cluster.address, "--mlflow-uri", mlflow_server.url, "--concurrency", "2"]
    driver = Driver(args, tmp_path / "work", driver_env(cluster, AUTOOPT_STORAGE=url))
    with ConnectionSampler(optuna_db) as connections:
        assert driver.run(300) == 0, driver.output()[-3000:]

    trials = load_trials(url, study)
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"} and len(trials) == 4  # PRUNED: diverged
    # Every worker opened the storage itself: the trials ran on both nodes of the cluster.
    nodes = {t.user_attrs["worker"]["node"] for t in trials}
    assert len(nodes) == 2, nodes
    # Small pools: the driver (2 + overflow, the ask lock) and two workers (1 + overflow) at most.
    assert 0 < connections.peak <= 12, connections.peak

    parents, nested = runs_of(mlflow_server, study)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(r.data.tags["autoopt.trial_number"]) for r in nested) == [0, 1, 2, 3]
    assert {r.info.status for r in nested} == {"FINISHED"}
    assert all("lr" in r.data.params for r in nested)
    # Artifacts went through the server's proxied store, not a folder the driver can see.
    parent = parents[0]
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:"), parent.info.artifact_uri
    client = mlflow_server.client()
    run_id = parent.info.run_id
    listed = {f.path for d in ("recommendation", "plots") for f in client.list_artifacts(run_id, d)}
    assert {"recommendation/digits.json", "plots/optimization_history.png"} <= listed
    stored = next(mlflow_server.artifacts.rglob(f"{run_id}/artifacts/recommendation/digits.json"))
    local = json.loads((tmp_path / "work" / "recommendations" / "digits.json").read_text())
    assert json.loads(stored.read_text())["trial_number"] == local["trial_number"]
    assert not (tmp_path / "work" / "mlruns").exists() and not (tmp_path / "work" / "mlartifacts").exists()


def test_two_drivers_share_one_study(cluster: RayCluster, mlflow_server: MlflowServer, optuna_db: str,
                                     tmp_path: Path) -> None:
    study = f"d{uuid.uuid4().hex[:8]}"
    total = 6
    args = ["--task", "digits", "--trials", str(total), "--epochs", "1", "--no-confirm", "--study", study,
            "--ray-address", cluster.address, "--mlflow-uri", mlflow_server.url]
    # The same database spelled two ways: the drivers must still serialise their asks.
    first = Driver([*args, "--storage", pg_url(optuna_db)], tmp_path / "a", driver_env(cluster), name="a")
    second = Driver(args, tmp_path / "b",
                    driver_env(cluster, AUTOOPT_STORAGE=pg_url(optuna_db).replace("127.0.0.1", "localhost")),
                    name="b")
    first.start()
    second.start()
    codes = (first.wait(400), second.wait(400))
    assert codes == (0, 0), first.output()[-2000:] + second.output()[-2000:]

    trials = load_trials(pg_url(optuna_db), study)
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states, states
    # Exactly the requested total, none lost, none run twice.
    assert len(trials) == total and budget_used(trials) == total, states
    assert states.count("COMPLETE") + states.count("PRUNED") == total, states
    configs = [json.dumps(t.user_attrs["config"], sort_keys=True) for t in trials]
    assert len(set(configs)) == total
    parents, nested = runs_of(mlflow_server, study)
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED"}
    assert sorted(int(r.data.tags["autoopt.trial_number"]) for r in nested) == list(range(total))
