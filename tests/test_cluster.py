"""The cluster path, for real: PostgreSQL storage shared by the drivers and every worker, a
two-node Ray started by ``ray start`` on loopback, an ``mlflow server`` on PostgreSQL with
proxied artifacts, and two drivers sharing one study. (One ``tune`` alone on this setup, with
passwords in both URLs, is tests/test_secrets.py; the faults are tests/test_faults.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from services import (
    Driver,
    MlflowServer,
    RayCluster,
    budget_used,
    driver_env,
    load_trials,
    pg_execute,
    pg_url,
    runs_of,
    service_env,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


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


def held_pids(data: Path) -> set[int]:
    """Pids of the workers whose trial is held mid-epoch right now (services:slow_digits)."""
    folder = data / "pids"
    return {int(p.name) for p in folder.iterdir()} if folder.exists() else set()


# The cluster's nodes (their CPUs) and the CPUs free, as a driver joining it sees them: once
# argv[2] CPUs are free, or after argv[3] seconds (polled in this one process, not one per poll).
CLUSTER_STATE = """
import json, sys, time, ray
from autoopt.dispatch import start_ray
start_ray(sys.argv[1])
want, deadline = float(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    nodes = {n["NodeID"]: n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]}
    free = ray.available_resources().get("CPU", 0.0)
    if free >= want or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps({"nodes": nodes, "free_cpus": free}))
"""


# A job whose actors hold every CPU of the cluster (one 1-CPU actor each) while argv[2] exists.
HOLD_CPUS = """
import os, sys, time, ray
from autoopt.dispatch import start_ray
start_ray(sys.argv[1])

@ray.remote(num_cpus=1)
class Hold:
    def pid(self):
        return os.getpid()

holds = [Hold.remote() for _ in range(int(ray.cluster_resources()["CPU"]))]
ray.get([h.pid.remote() for h in holds])
print("holding", flush=True)
while os.path.exists(sys.argv[2]):
    time.sleep(0.2)
"""


def cluster_state(cluster: RayCluster, free_cpus: float = 0.0, wait_s: float = 0.0) -> dict:
    """The cluster's nodes and free CPUs, once ``free_cpus`` are free or after ``wait_s``."""
    done = subprocess.run([sys.executable, "-c", CLUSTER_STATE, cluster.address, str(free_cpus), str(wait_s)],
                          env=driver_env(cluster), capture_output=True, text=True, timeout=wait_s + 180)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def all_cpus_free(cluster: RayCluster) -> dict:
    """The cluster's state once both its CPUs are free: a test before may leave actors that Ray
    is still ending."""
    state = cluster_state(cluster, free_cpus=2.0, wait_s=120)
    assert state["free_cpus"] == 2.0, f"the cluster's CPUs were not all free within 120 s: {state}"
    return state


def test_two_drivers_share_one_study_on_the_cluster(cluster: RayCluster, mlflow_server: MlflowServer,
                                                    optuna_db: str, tmp_path: Path) -> None:
    """Two ``autoopt tune`` at once, on the same task and PostgreSQL database, on a two-node Ray
    from ``ray start``, tracking to an MLflow server: the study ends with exactly the requested
    total, none lost, none run twice; trials ran on both nodes, in workers that reached the
    storage and the server themselves."""
    study, data = f"d{uuid.uuid4().hex[:8]}", tmp_path / "data"
    data.mkdir()
    (data / "hold").touch()  # every trial waits at its second step while this file exists
    total = 4
    # One worker per driver, one CPU each, on a cluster of two one-CPU nodes: the two workers sit
    # on different nodes, as Ray must place them (a node's one CPU holds one worker). That holds
    # once nothing else holds a CPU.
    state = all_cpus_free(cluster)
    assert sorted(state["nodes"].values()) == [1.0, 1.0], state
    # The first trials are held until both workers are busy with one, so neither driver can take
    # the whole budget while the other's worker warms up.
    args = ["--task", "services:slow_digits", "--data-dir", str(data), "--trials", str(total), "--epochs", "2",
            "--no-confirm", "--study", study, "--concurrency", "1",
            "--ray-address", cluster.address, "--mlflow-uri", mlflow_server.url]
    # The same database spelled two ways, one from --storage and one from AUTOOPT_STORAGE: the
    # drivers must still serialise their asks.
    first = Driver([*args, "--storage", pg_url(optuna_db)], tmp_path / "a", driver_env(cluster), name="a")
    second = Driver(args, tmp_path / "b",
                    driver_env(cluster, AUTOOPT_STORAGE=pg_url(optuna_db).replace("127.0.0.1", "localhost")),
                    name="b")
    with ConnectionSampler(optuna_db) as connections:
        first.start()
        second.start()

        def both_busy() -> set[int] | None:
            pids = held_pids(data)
            return pids if len(pids) == 2 else None

        try:
            held = wait_for(both_busy, 300, "both workers to be busy with a trial")
        finally:
            (data / "hold").unlink()
        codes = (first.wait(400), second.wait(400))
    assert codes == (0, 0), first.output()[-2000:] + second.output()[-2000:]

    trials = load_trials(pg_url(optuna_db), study)
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states, states
    # Exactly the requested total, none lost, none run twice (PRUNED: a config that diverged).
    assert len(trials) == total and budget_used(trials) == total, states
    assert states.count("COMPLETE") + states.count("PRUNED") == total, states
    configs = [json.dumps(t.user_attrs["config"], sort_keys=True) for t in trials]
    assert len(set(configs)) == total
    # Both nodes ran trials, in the two held workers (Ray actors, not the drivers).
    workers = {(t.user_attrs["worker"]["node"], t.user_attrs["worker"]["pid"]) for t in trials}
    assert {pid for _, pid in workers} == held, (workers, held)
    assert {node for node, _ in workers} == set(state["nodes"]), (workers, state)  # one worker on each node
    assert not held & {first.proc.pid, second.proc.pid}
    # Small pools: per driver 2 (+1 overflow) and the ask lock's 1, per placed worker 1 (+1).
    assert 0 < connections.peak <= 12, connections.peak

    parents, nested = runs_of(mlflow_server, study)
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED"}
    assert sorted(int(r.data.tags["autoopt.trial_number"]) for r in nested) == list(range(total))
    assert {r.info.status for r in nested} == {"FINISHED"} and all("lr" in r.data.params for r in nested)
    # Artifacts went through the server's proxied store, not a folder the drivers can see.
    client = mlflow_server.client()
    for parent in parents:
        run_id = parent.info.run_id
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:"), parent.info.artifact_uri
        listed = {f.path for d in ("recommendation", "plots") for f in client.list_artifacts(run_id, d)}
        saved = [p for p in listed if p.startswith("recommendation/") and p.endswith(".json")]
        assert len(saved) == 1 and "plots/optimization_history.png" in listed, listed
        stored = next(mlflow_server.artifacts.rglob(f"{run_id}/artifacts/{saved[0]}"))
        assert json.loads(stored.read_text())["study_name"] == study
    for driver in (first, second):
        [local] = (driver.cwd / "recommendations").glob("*.json")
        rec = json.loads(local.read_text())
        assert rec["study_name"] == study and rec["trial_number"] in range(total)
        assert not (driver.cwd / "mlruns").exists() and not (driver.cwd / "mlartifacts").exists()


def test_joins_a_head_that_wants_the_local_token(tmp_path: Path) -> None:
    """``ray start --head`` turns token authentication on when ``~/.ray/auth_token`` exists (any
    local ``ray.init`` writes one), while Ray never sends a token to an explicit address: autoopt
    joins a head on this machine with that token, and needs no RAY_AUTH_MODE."""
    home = Path(tempfile.mkdtemp(prefix="aoh-"))  # short: Ray's socket paths live under it
    try:
        (home / ".ray").mkdir()
        (home / ".ray" / "auth_token").write_text(uuid.uuid4().hex * 2)
        env = {k: v for k, v in service_env({"HOME": str(home), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
                                            ).items() if not k.startswith("RAY_AUTH")}
        head = RayCluster(home, workers=0, env=env).start()
        try:
            assert "Token authentication is enabled" in head.nodes[0].output()
            code = ("import sys, ray; from autoopt.dispatch import start_ray; start_ray(sys.argv[1]); "
                    "print(ray.cluster_resources()['CPU'])")
            joined = subprocess.run([sys.executable, "-c", code, head.address], env=env, capture_output=True,
                                    text=True, timeout=180)
            assert joined.returncode == 0, joined.stderr[-2000:]
            assert joined.stdout.strip().splitlines()[-1] == "1.0"
        finally:
            head.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from autoopt.study import open_storage, open_study
url, folder, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
(folder / f"ready-{me}").touch()
while not (folder / "go").exists():
    time.sleep(0.01)
open_study(open_storage(url), "together", direction="maximize")
print("opened")
"""


def test_drivers_opening_an_empty_database_at_once(optuna_db: str, tmp_path: Path) -> None:
    """Drivers started together on a fresh database all create Optuna's tables at the same
    moment; PostgreSQL rejects all but one (a duplicate type): each must still open it."""
    n = 4
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, pg_url(optuna_db), str(tmp_path), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    try:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == n, 120, "the openers to be ready")
        (tmp_path / "go").touch()
        outcomes = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0] * n, [err[-500:] for _, err in outcomes]
    assert load_trials(pg_url(optuna_db), "together") == []


def test_three_drivers_at_default_concurrency_share_two_one_cpu_nodes(cluster: RayCluster, optuna_db: str,
                                                                     tmp_path: Path) -> None:
    """Three ``autoopt tune`` at once on one study, ``--concurrency`` left at its default, on two
    one-CPU nodes: every driver ends, with exactly the total. (Before, a driver asked a trial for
    a worker Ray could not place, and the drivers holding the CPUs waited for that trial: all of
    them waited for ever.)"""
    all_cpus_free(cluster)
    study, total = f"d{uuid.uuid4().hex[:8]}", 6
    args = ["--task", "digits", "--trials", str(total), "--epochs", "1", "--no-confirm", "--study", study,
            "--storage", pg_url(optuna_db), "--ray-address", cluster.address]
    drivers = [Driver(args, tmp_path / name, driver_env(cluster), name=name).start() for name in "abc"]
    codes = [d.wait(400) for d in drivers]
    assert codes == [0, 0, 0], "\n".join(d.output()[-1500:] for d in drivers)
    trials = load_trials(pg_url(optuna_db), study)
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states, states
    assert states.count("COMPLETE") + states.count("PRUNED") == total and budget_used(trials) == total, states
    for d in drivers:  # each ends with the study's answer, whether or not it ran a trial itself
        assert json.loads((d.cwd / "recommendations" / f"{study}.json").read_text())["study_name"] == study


# ``autoopt tune`` (the entry point, ``autoopt.cli.main``) once per (folder, argv) of a JSON list,
# one after the other in one fresh process, each in its folder: prints each call's exit code and
# stderr as a JSON list.
_REFUSALS = """
import contextlib, io, json, logging, os, sys
from autoopt.cli import main
results = []
for folder, argv in json.loads(sys.argv[1]):
    os.makedirs(folder, exist_ok=True)
    os.chdir(folder)
    err = io.StringIO()
    logging.root.handlers.clear()  # the command's own logging set-up writes to this call's stderr
    with contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def test_requests_no_node_can_hold_are_refused_at_once(cluster: RayCluster, optuna_db: str, tmp_path: Path) -> None:
    """Two CPUs per trial on a cluster of two one-CPU nodes (two in all, none on one node), a GPU
    on a cluster without one, and a concurrency above the cluster's total: exit 2, one line naming
    what was asked and what the cluster has, nothing created. (Before, the first two waited in
    silence for a worker Ray could never place.) The three commands join the cluster in turn,
    from one process."""
    base = ["tune", "--task", "digits", "--trials", "2", "--epochs", "1", "--no-confirm", "--storage",
            pg_url(optuna_db), "--ray-address", cluster.address]
    cases = {"cpus": (["--cpus-per-trial", "2"], "2 CPUs"), "gpus": (["--gpus-per-trial", "1"], "1 GPU"),
             "many": (["--concurrency", "3"], "--concurrency 3")}
    calls = [[str(tmp_path / name), [*base, "--study", name, *flags]] for name, (flags, _) in cases.items()]
    done = subprocess.run([sys.executable, "-c", _REFUSALS, json.dumps(calls)], env=driver_env(cluster),
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for (code, stderr), (_, named) in zip(results, cases.values(), strict=True):
        assert code == 2, stderr[-2000:]
        lines = [ln for ln in stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        assert len(lines) == 1 and named in lines[0], stderr
        assert "largest node has 1 CPU and 0 GPUs" in lines[0] or "has 2 in all" in lines[0], lines[0]
    # Refused before anything was created: no study, no MLflow run.
    assert pg_execute("select count(*) from pg_tables where tablename = 'studies'", optuna_db) == [(0,)]
    assert not any((tmp_path / name / "mlflow.db").exists() for name in cases)


def test_a_driver_starved_of_workers_ends_at_its_timeout_and_says_why(cluster: RayCluster, optuna_db: str,
                                                                      tmp_path: Path) -> None:
    """Another job's actors hold both CPUs (as another driver's workers would, at a fraction of
    a study's start-up): a driver with ``--timeout`` asks no trial (none of its workers is
    placed), says once what it waits for, and ends at its deadline."""
    all_cpus_free(cluster)
    hold = tmp_path / "hold"
    hold.touch()
    hog = subprocess.Popen([sys.executable, "-c", HOLD_CPUS, cluster.address, str(hold)], env=driver_env(cluster),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert hog.stdout is not None and hog.stdout.readline().strip() == "holding", hog.communicate(60)[0][-2000:]
        starved = Driver(["--task", "digits", "--trials", "4", "--epochs", "1", "--no-confirm", "--study", "starved",
                          "--timeout", "10", "--storage", pg_url(optuna_db), "--ray-address", cluster.address],
                         tmp_path / "starved", driver_env(cluster, AUTOOPT_STARVED_S="3"), name="starved")
        starved.run(150)
        assert "no worker placed for" in starved.stderr and "0 of 2 CPUs" in starved.stderr, starved.output()[-2000:]
        assert "no trials ran" in starved.stderr  # the deadline came before any worker: said, not hung
        # Nothing asked for a worker never placed: the portfolio it enqueued waits for any driver.
        assert {t.state.name for t in load_trials(pg_url(optuna_db), "starved")} == {"WAITING"}
    finally:
        hold.unlink()
        try:
            hog.wait(60)
        finally:
            hog.kill()
    assert hog.returncode == 0
