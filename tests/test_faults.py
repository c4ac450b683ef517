"""Faults a real cluster has, each caused for real on the cluster path (PostgreSQL, a two-node
Ray from ``ray start``, an MLflow server): a worker SIGKILLed mid-trial, the driver SIGKILLed
mid-study, the database unreachable (a TCP proxy in front of it is stopped), a trial that raises.

The user tasks ``services:slow_digits`` and ``services:buggy_digits`` (tests/services.py) let a
test find a trial's worker by its pid, hold a trial mid-epoch, or make one trial fail."""

from __future__ import annotations

import os
import re
import signal
import uuid
from pathlib import Path

import pytest
from services import (
    Driver,
    MlflowServer,
    RayCluster,
    TcpProxy,
    budget_used,
    driver_env,
    load_trials,
    pg_url,
    runs_of,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def tune_args(task: str, study: str, trials: int, storage: str, cluster: RayCluster, server: MlflowServer,
              data: Path, *extra: str) -> list[str]:
    return ["--task", task, "--trials", str(trials), "--epochs", "1", "--no-confirm", "--study", study,
            "--storage", storage, "--ray-address", cluster.address, "--mlflow-uri", server.url,
            "--data-dir", str(data), *extra]


def held_pids(data: Path) -> list[int]:
    """Pids of the workers whose trial is held at its first step right now."""
    folder = data / "pids"
    return [int(p.name) for p in folder.iterdir()] if folder.exists() else []


def states(trials: list) -> list[str]:
    return [t.state.name for t in trials]


def assert_study_complete(trials: list, total: int) -> None:
    """The study reached its total: nothing left RUNNING or WAITING, and every failure that was
    re-queued has a finished retry."""
    names = states(trials)
    assert "RUNNING" not in names and "WAITING" not in names, names
    assert budget_used(trials) == total, names
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    # PRUNED: a random config may diverge (NaN loss), which is a finished trial too.
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED") and t.number not in retried]
    assert len(finished) == total, names


def test_worker_killed_mid_trial_is_failed_and_retried(cluster: RayCluster, mlflow_server: MlflowServer,
                                                      optuna_db: str, tmp_path: Path) -> None:
    study, data = f"w{uuid.uuid4().hex[:8]}", tmp_path / "data"
    data.mkdir()
    (data / "hold").touch()  # the first trial stops at its first step
    url = pg_url(optuna_db)
    driver = Driver(tune_args("services:slow_digits", study, 3, url, cluster, mlflow_server, data,
                              "--concurrency", "1"), tmp_path / "work", driver_env(cluster)).start()
    pid = wait_for(lambda: held_pids(data), 240, "a trial to reach its worker")[0]
    wait_for(lambda: runs_of(mlflow_server, study)[1], 60, "the held trial's MLflow run")
    os.kill(pid, signal.SIGKILL)
    (data / "hold").unlink()
    assert driver.wait(300) == 0, driver.output()[-3000:]

    trials = load_trials(url, study)
    assert_study_complete(trials, 3)
    killed = [t for t in trials if t.state.name == "FAIL"]
    assert killed and all(t.user_attrs["reason"] == "worker died during the trial" for t in killed)
    retries = {t.system_attrs["failed_trial"]: t for t in trials if "failed_trial" in t.system_attrs}
    for t in killed:  # each lost trial ran again with the same config, and finished
        assert retries[t.number].state.name in ("COMPLETE", "PRUNED")
        assert retries[t.number].params == t.params
    assert all(t.user_attrs["worker"]["pid"] != pid for t in trials if t.state.name != "FAIL")
    _, nested = runs_of(mlflow_server, study)
    status = {int(r.data.tags["autoopt.trial_number"]): r.info.status for r in nested}
    assert "RUNNING" not in status.values(), status
    assert status[killed[0].number] == "FAILED"  # the run the killed worker left open


def test_driver_killed_mid_study_resumes(cluster: RayCluster, mlflow_server: MlflowServer, optuna_db: str,
                                         tmp_path: Path) -> None:
    study, data = f"k{uuid.uuid4().hex[:8]}", tmp_path / "data"
    data.mkdir()
    (data / "hold").touch()
    url = pg_url(optuna_db)
    args = tune_args("services:slow_digits", study, 3, url, cluster, mlflow_server, data,
                     "--concurrency", "1")
    first = Driver(args, tmp_path / "work", driver_env(cluster), name="first").start()
    wait_for(lambda: held_pids(data), 240, "a trial to reach its worker")
    wait_for(lambda: runs_of(mlflow_server, study)[1], 60, "the held trial's MLflow run")
    first.kill()
    assert [s for s in states(load_trials(url, study)) if s == "RUNNING"], "no trial was in flight"
    (data / "hold").unlink()

    # The same command again: it fails the dead driver's trials once their heartbeat is stale
    # (study.GRACE_S), re-queues them and finishes the study.
    again = Driver(args, tmp_path / "work", driver_env(cluster), name="again")
    assert again.run(300) == 0, again.output()[-3000:]
    trials = load_trials(url, study)
    assert_study_complete(trials, 3)
    dead = [t for t in trials if t.state.name == "FAIL"]
    assert dead, states(trials)
    parents, nested = runs_of(mlflow_server, study)
    status = {int(r.data.tags["autoopt.trial_number"]): r.info.status for r in nested}
    assert "RUNNING" not in status.values(), status
    assert all(status[t.number] in ("FAILED", "KILLED") for t in dead if t.number in status)
    assert any(t.number in status for t in dead), "the dead trial's MLflow run was never created"
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"]


def test_storage_outage_is_retried_and_a_lasting_one_exits_1(cluster: RayCluster, mlflow_server: MlflowServer,
                                                             optuna_db: str, tmp_path: Path) -> None:
    study, data = f"s{uuid.uuid4().hex[:8]}", tmp_path / "data"
    data.mkdir()
    direct = pg_url(optuna_db)
    proxy = TcpProxy(tmp_path).start()
    try:
        (data / "hold").touch()
        via_proxy = pg_url(optuna_db, port=proxy.port)
        driver = Driver(tune_args("services:slow_digits", study, 6, via_proxy, cluster, mlflow_server, data,
                                  "--concurrency", "1"), tmp_path / "work",
                        driver_env(cluster, AUTOOPT_STORAGE_RETRY_S="8")).start()
        wait_for(lambda: held_pids(data), 240, "a trial to reach its worker")

        # A short outage, until the driver has met it (a heartbeat, a trial's config, ...; well
        # within the retry budget, which starts at that first failed attempt): it waits for the
        # database.
        proxy.stop()
        wait_for(lambda: "WARNING autoopt.study: storage unreachable (" in driver.stderr, 120,
                 "the driver to meet the outage", 0.2)
        proxy.start()
        (data / "hold").unlink()
        wait_for(lambda: "COMPLETE" in states(load_trials(direct, study)), 240, "a trial to finish")
        assert driver.proc is not None and driver.proc.poll() is None, driver.output()[-3000:]
        # Whatever it was doing then (a heartbeat, a trial's config, ...), it waited and went on.
        assert "WARNING autoopt.study: storage unreachable (" in driver.stderr and "; retrying in " in driver.stderr

        # An outage that lasts: a clear message and exit code 1 once AUTOOPT_STORAGE_RETRY_S is
        # spent (the wait below only guards against a hang).
        proxy.stop()
        assert driver.wait(300) == 1, driver.output()[-3000:]
    finally:
        proxy.stop()
    last = driver.stderr.strip().splitlines()[-1]
    assert last.startswith("error: storage unreachable for") and "finished trials are kept" in last, last
    # It gave up after the budget, not before: the wait it reports is the whole 8 s or more.
    waited = re.match(r"error: storage unreachable for (\d+)s", last)
    assert waited is not None and int(waited[1]) >= 8, last
    assert "Traceback" not in driver.stderr
    after = states(load_trials(direct, study))
    assert "COMPLETE" in after, f"the trials finished before the outage are gone: {after}"
    assert "FAIL" not in after, f"the short outage failed a trial instead of waiting: {after}"


def test_trial_that_raises_fails_with_its_error_and_study_goes_on(cluster: RayCluster,
                                                                  mlflow_server: MlflowServer,
                                                                  optuna_db: str, tmp_path: Path) -> None:
    study, data = f"r{uuid.uuid4().hex[:8]}", tmp_path / "data"
    data.mkdir()
    url = pg_url(optuna_db)
    driver = Driver(tune_args("services:buggy_digits", study, 4, url, cluster, mlflow_server, data),
                    tmp_path / "work", driver_env(cluster))
    assert driver.run(300) == 0, driver.output()[-3000:]

    trials = load_trials(url, study)
    names = states(trials)
    assert len(trials) == 4 and "RUNNING" not in names and "WAITING" not in names, names
    # Not retried (a bug stays a bug); PRUNED: a random config may diverge.
    assert names.count("FAIL") == 2 and names.count("COMPLETE") + names.count("PRUNED") == 2, names
    reasons = sorted(t.user_attrs["reason"] for t in trials if t.state.name == "FAIL")
    assert reasons[0].startswith("OutOfMemoryError: CUDA out of memory"), reasons
    assert reasons[1].startswith("ZeroDivisionError: user model bug"), reasons
    _, nested = runs_of(mlflow_server, study)
    by_number = {int(r.data.tags["autoopt.trial_number"]): r for r in nested}
    for t in trials:
        run = by_number[t.number]
        if t.state.name == "FAIL":
            assert run.info.status == "FAILED" and run.data.tags["autoopt.state"] == "FAIL"
            assert run.data.tags["autoopt.reason"] == t.user_attrs["reason"]
            assert "Traceback" in run.data.tags["autoopt.traceback"]
        else:
            assert run.info.status == "FINISHED", (t.state.name, run.info.status)
    assert (tmp_path / "work" / "recommendations").exists()
