"""Shared fixtures: every test works in its own empty folder, as a new user would."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


# The suite runs on two pytest-xdist workers (pyproject's addopts; ``-n 0`` runs it in one
# process). The tests of the session's shared services (a two-node Ray cluster, an MLflow
# server) run on one worker, so that the session starts each once; so do the tests of a module
# that share one of its module-scoped fixtures (a study run once for the module): on two
# workers, each would run it.
SERVICES = ("cluster", "mlflow_server")


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in SERVICES):
            item.add_marker(pytest.mark.xdist_group("services"))
            continue
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d.scope == "module" for chain in defs for d in chain):
            item.add_marker(pytest.mark.xdist_group(f"module:{item.module.__name__}"))  # type: ignore[attr-defined]


@pytest.hookimpl(trylast=True)  # after the test's own fixtures are torn down
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the services group's last test on this worker (its tests run together, in one
    batch: ``--dist loadgroup``), stop the shared cluster and MLflow server rather than leave
    them idle, polling, until the session ends. (In one process, ``-n 0``, the group's tests
    are spread over their modules: the services stay up.)"""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    if _in_services(item) and (nextitem is None or not _in_services(nextitem)):
        from services import stop_shared

        stop_shared()


def _in_services(item: pytest.Item) -> bool:
    return any(m.args == ("services",) for m in item.iter_markers("xdist_group"))


@pytest.fixture(autouse=True)
def registry_unchanged() -> Iterator[None]:
    """Every test leaves the optimizer registry as it found it: a family a test registers and
    forgets would change what `all` means for the tests after it (their order must not matter)."""
    from autoopt.space import REGISTRY

    before = set(REGISTRY.names())
    yield
    leaked = set(REGISTRY.names()) - before
    for name in leaked:
        forget_family(name)
    assert not leaked, f"the test left families registered: {sorted(leaked)}"


def forget_family(name: str) -> None:
    """Take a family a test registered out of the registry again (the package never does: a
    user's registration lasts as long as their process)."""
    from autoopt.space import REGISTRY

    REGISTRY._families.pop(name, None)


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder with no autoopt environment variables leaking in."""
    monkeypatch.chdir(tmp_path)
    for var in ("AUTOOPT_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "AUTOOPT_DATA"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


_RAY_STARTED_HERE: list[bool] = []


@pytest.fixture(scope="session")
def _ray_session() -> Iterator[None]:
    """Stops the session's local Ray at the end, where ``local_ray`` started it."""
    yield
    if _RAY_STARTED_HERE:
        import ray

        ray.shutdown()


@pytest.fixture()
def local_ray(_ray_session: None) -> None:
    """The session's local Ray (``shared_ray``)."""
    shared_ray()


def shared_ray() -> None:
    """Start the session's local Ray where none runs, as ``autoopt tune`` starts one
    (``start_ray``: this machine's CPUs, its workers preloading torch), and share it: a ``tune()``
    or ``run()`` in this process joins it instead of starting and stopping its own (seconds each).
    A test that needs a Ray of its own shape calls ``own_ray()`` first; the next user of the shared
    one starts it again. What must prove a fresh process's start-up stays a subprocess
    (``run_cli``). A module's fixture calls this and asks for ``_ray_session``."""
    import ray

    from autoopt.dispatch.session import start_ray

    if ray.is_initialized():
        if _cpus_free(ray):
            return
        ray.shutdown()  # a test before this one left workers holding CPUs: start afresh
    here = os.getcwd()
    os.chdir(tempfile.mkdtemp(prefix="aot-ray-"))  # an empty folder: its workers find no test's modules there
    try:
        start_ray(None)
    finally:
        os.chdir(here)
    _RAY_STARTED_HERE[:] = [True]


def _cpus_free(ray: Any, wait_s: float = 10.0) -> bool:
    """All of the running Ray's CPUs free (a pool just shut down frees its workers' within
    moments; those an earlier study left warm count as free: the next pool takes them), or
    False after ``wait_s``."""
    import time

    from autoopt.dispatch import spares

    deadline = time.monotonic() + wait_s
    while True:
        free = ray.available_resources().get("CPU", 0.0) + spares.held("CPU")
        if free >= ray.cluster_resources().get("CPU", 0.0):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def own_ray() -> None:
    """Stop the session's shared Ray (where one runs), for a test that starts its own shape."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def run_cli(*args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """Run the `autoopt` command in ``cwd`` and capture what a user sees."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("AUTOOPT_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "autoopt", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)


def scripts_at_once(script: str, argvs: list[list[str]], cwd: Path | None = None, timeout: float = 300,
                    ) -> list[str]:
    """Run ``python -c script`` once per argv, all started together (each a fresh process that
    imports only what the script does), and return their outputs; every one must exit 0."""
    procs = [subprocess.Popen([sys.executable, "-c", script, *argv], cwd=cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argvs]
    outs = [p.communicate(timeout=timeout) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), [err[-2000:] for _, err in outs]
    return [out for out, _ in outs]


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the real entry point (``autoopt.cli.main``) in this process, as the console script
    would: (exit code, stdout, stderr). For what needs no fresh process (bad input, --help)."""
    from autoopt.cli import main

    capsys.readouterr()  # what came before is not this command's
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    captured = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), captured.out, captured.err


def refused(capsys: pytest.CaptureFixture[str], *args: str, folder: Path | None = None) -> str:
    """Run ``autoopt ARGS`` in this process; assert exit 2, one ``error:`` line on stderr, no
    traceback and nothing on stdout (and nothing created in ``folder``). Returns the line."""
    code, out, err = run_main(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and not out.strip()
    if folder is not None:
        assert sorted(p.name for p in folder.iterdir()) == []
    return lines[0]


NOBODY = 65534


def as_nobody(fn: Callable[[], object]) -> tuple[int, str]:
    """Run ``fn`` as an unprivileged user, as a user would meet a read-only file (root's override
    of file modes gone): as root in a forked child that becomes ``nobody``, otherwise right here.
    Returns its exit code (0, or 2 for a ``UsageError``, 1 for anything else) and message."""
    from autoopt.errors import UsageError

    if os.geteuid() != 0:
        try:
            fn()
        except UsageError as exc:
            return 2, str(exc)
        except Exception as exc:
            return 1, f"{type(exc).__name__}: {exc}"
        return 0, ""
    out = Path(tempfile.mkstemp(prefix="aot-msg-")[1])
    os.chmod(out, 0o666)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn()
        except UsageError as exc:
            code = 2
            out.write_text(str(exc))
        except BaseException as exc:
            code = 1
            out.write_text(f"{type(exc).__name__}: {exc}")
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    message = out.read_text()
    out.unlink()
    return os.waitstatus_to_exitcode(status), message


@contextlib.contextmanager
def shared_folder() -> Iterator[Path]:
    """A folder any user may enter and write (tmp_path is root's own), for ``as_nobody``."""
    folder = Path(tempfile.mkdtemp(prefix="aot-ro-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        for path in folder.iterdir():
            path.chmod(0o666)
            path.unlink()
        folder.rmdir()


# --- the cluster path's real services (tests/services.py), shared by the cluster and fault tests


@pytest.fixture(scope="session")
def pg() -> str:
    """The test PostgreSQL (``AUTOOPT_TEST_PG``, default postgresql://postgres@127.0.0.1:5432/test).
    Every test that needs it goes through this fixture: when it does not answer, the test is
    skipped with a one-line reason, or fails when ``AUTOOPT_REQUIRE_PG=1`` (CI)."""
    from services import TEST_PG, pg_unavailable

    reason = pg_unavailable()
    if reason is not None:
        if os.environ.get("AUTOOPT_REQUIRE_PG", "").strip() == "1":
            pytest.fail(f"{reason} (AUTOOPT_REQUIRE_PG=1)", pytrace=False)
        pytest.skip(reason)
    return TEST_PG


@pytest.fixture()
def cluster(request: pytest.FixtureRequest, pg: str) -> Any:
    """The session's two-node Ray on loopback (started on first use)."""
    from services import shared_cluster

    return shared_cluster(request.config)


@pytest.fixture()
def mlflow_server(request: pytest.FixtureRequest, pg: str) -> Any:
    """The session's `mlflow server` on PostgreSQL with proxied artifacts."""
    from services import shared_mlflow

    return shared_mlflow(request.config)


@pytest.fixture()
def optuna_db(pg: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test's Optuna storage, dropped afterwards."""
    from services import database

    with database() as name:
        yield name
