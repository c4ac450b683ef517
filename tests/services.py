"""Real services for the cluster-path tests, started by the tests themselves.

PostgreSQL databases (created and dropped per test on the server ``AUTOOPT_TEST_PG`` names), a
multi-node Ray on loopback (``ray start --head`` plus ``ray start --address`` workers, each its
own process), an ``mlflow server`` on PostgreSQL with proxied artifacts, and a TCP proxy in
front of PostgreSQL that a test stops and restarts to cut the storage off for real. No mocks.

Every process is started here with ``Popen`` and stopped by its own pid (or process group):
other people's Ray clusters on the same machine are never touched.

Also the ``module:function`` user tasks the fault tests tune (``services:slow_digits``, ...):
the Ray nodes and the ``autoopt`` command get this folder on ``PYTHONPATH``.

Run as a script, ``python services.py proxy LISTEN_PORT TARGET_PORT`` is the proxy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
# The PostgreSQL server the cluster tests use: AUTOOPT_TEST_PG, a URL whose user may create
# databases and roles (the default is a development server that trusts 127.0.0.1).
DEFAULT_TEST_PG = "postgresql://postgres@127.0.0.1:5432/test"
TEST_PG = os.environ.get("AUTOOPT_TEST_PG", "").strip() or DEFAULT_TEST_PG
_PG = urllib.parse.urlsplit(TEST_PG)
PG_HOST, PG_PORT = _PG.hostname or "127.0.0.1", _PG.port or 5432
PG_USER, PG_PASSWORD = urllib.parse.unquote(_PG.username or "postgres"), urllib.parse.unquote(_PG.password or "")
PG_DB = _PG.path.lstrip("/") or "postgres"
PG_ADMIN = (f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={PG_DB} connect_timeout=5"
            + (f" password={PG_PASSWORD}" if PG_PASSWORD else ""))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


# --- PostgreSQL -------------------------------------------------------------------------

def pg_unavailable() -> str | None:
    """Why the test PostgreSQL (``AUTOOPT_TEST_PG``) cannot be used, in one line; None when it answers."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"{PG_HOST}:{PG_PORT}/{PG_DB}"
        return f"no PostgreSQL at {where} (AUTOOPT_TEST_PG): {reason}"[:200]


def pg_execute(sql: str, dbname: str = PG_DB) -> list[tuple[Any, ...]]:
    """Run one statement as the test server's admin user (autocommit) and return its rows."""
    import psycopg

    with psycopg.connect(PG_ADMIN.replace(f"dbname={PG_DB}", f"dbname={dbname}"), autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def pg_url(dbname: str, *, user: str | None = None, password: str | None = None, port: int = PG_PORT) -> str:
    """The SQLAlchemy URL autoopt and MLflow take for ``dbname`` (as the admin user by default)."""
    if user is None:
        user, password = PG_USER, password or PG_PASSWORD or None
    auth = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}" if password else user
    return f"postgresql+psycopg://{auth}@{PG_HOST}:{port}/{dbname}"


@contextlib.contextmanager
def database(prefix: str = "autoopt_t", owner: str | None = None) -> Iterator[str]:
    """A fresh, empty database (its name); dropped afterwards even if connections are left."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    pg_execute(f'create database "{name}"' + (f" owner {owner}" if owner else ""))
    try:
        yield name
    finally:
        pg_execute(f'drop database if exists "{name}" with (force)')


@contextlib.contextmanager
def pg_role(password: str) -> Iterator[str]:
    """A login role with a password, owning nothing; dropped afterwards."""
    name = f"autoopt_r_{uuid.uuid4().hex[:8]}"
    pg_execute(f"create role {name} login password '{password}'")
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            pg_execute(f"drop owned by {name} cascade")
        pg_execute(f"drop role if exists {name}")


# --- processes --------------------------------------------------------------------------

@dataclass
class Service:
    """One process this test session started, with its output in ``log``."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            # A session of its own, so stop() can end the children it spawned (mlflow's
            # uvicorn workers) by this process group's id, and nothing else.
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                         start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace_s``."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.proc = None


def service_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without autoopt's variables, with this folder importable."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AUTOOPT_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    env["PATH"] = os.pathsep.join((str(BIN), env.get("PATH", "")))
    env.update(extra or {})
    return env


# --- Ray --------------------------------------------------------------------------------

@dataclass
class RayCluster:
    """A head and ``workers`` worker nodes on loopback, one CPU each, each a ``ray start --block``."""

    root: Path
    workers: int = 1
    port: int = field(default_factory=free_port)
    nodes: list[Service] = field(default_factory=list)
    token: str = field(default_factory=lambda: uuid.uuid4().hex + uuid.uuid4().hex)
    env: dict[str, str] | None = None  # the nodes' environment (default: this cluster's own token)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_env(self) -> dict[str, str]:
        """What a driver needs to join: this cluster's own token. Ray enables token auth on a
        head by default, and ``~/.ray/auth_token`` is shared by everyone on the machine."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @property
    def temp_dir(self) -> Path:
        return self.root / "ray"

    def start(self) -> RayCluster:
        # Draining on SIGTERM only delays our teardown; usage stats would try the network.
        env = self.env or service_env({"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                                       "RAY_USAGE_STATS_ENABLED": "0", **self.client_env})
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0", "--block",
                  "--disable-usage-stats"]
        head = Service("ray-head", [str(BIN / "ray"), "start", "--head", "--port", str(self.port),
                                    "--include-dashboard", "false", "--temp-dir", str(self.temp_dir),
                                    *common], self.root / "ray-head.log", env).start()
        self.nodes.append(head)
        wait_for(lambda: _node_started(head), 90, "the Ray head")
        for i in range(self.workers):
            node = Service(f"ray-worker-{i}", [str(BIN / "ray"), "start", "--address", self.address,
                                               *common], self.root / f"ray-worker-{i}.log", env).start()
            self.nodes.append(node)
        for node in self.nodes[1:]:
            wait_for(lambda n=node: _node_started(n), 90, "a Ray worker node")
        return self

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.nodes.clear()

    def log_text(self) -> str:
        """Everything the Ray processes of this cluster logged (session logs and ``ray start`` output)."""
        parts = [n.output() for n in self.nodes]
        for path in sorted(self.temp_dir.glob("session_*/logs/**/*")):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 50_000_000:
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)


def _node_started(node: Service) -> bool:
    if "Ray runtime started" in node.output():
        return True
    if not node.alive():
        raise RuntimeError(f"{node.name} died:\n{node.output()[-2000:]}")
    return False


# --- MLflow -----------------------------------------------------------------------------

@dataclass
class MlflowServer:
    """``mlflow server`` on a PostgreSQL database, serving (proxying) artifacts from ``root``."""

    root: Path
    backend_db: str
    port: int = field(default_factory=free_port)
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlartifacts"

    def start(self) -> MlflowServer:
        import urllib.request

        argv = [str(BIN / "mlflow"), "server", "--backend-store-uri", pg_url(self.backend_db),
                "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", "1"]
        # Without the server's job runner (MLflow 3's GenAI jobs, which autoopt never submits): a
        # runner and a Huey consumer per queue, each a Python process importing MLflow.
        env = service_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        self.service = Service("mlflow", argv, self.root / "mlflow.log", env, cwd=self.root).start()

        def healthy() -> bool:
            if not self.service.alive():
                raise RuntimeError(f"mlflow server died:\n{self.service.output()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(healthy, 120, "the MLflow server")
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def client(self) -> Any:
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.url)


# --- a TCP proxy in front of PostgreSQL -------------------------------------------------

@dataclass
class TcpProxy:
    """Forwards ``port`` to PostgreSQL. ``stop()`` cuts every connection and refuses new ones,
    as a storage outage does; ``start()`` brings it back on the same port."""

    root: Path
    port: int = field(default_factory=free_port)
    target_port: int = PG_PORT
    service: Service | None = None

    def start(self) -> TcpProxy:
        argv = [sys.executable, str(Path(__file__).resolve()), "proxy", str(self.port), str(self.target_port)]
        self.service = Service("proxy", argv, self.root / "proxy.log").start()

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, 30, "the TCP proxy")
        return self

    def stop(self) -> None:
        if self.service is not None:
            # SIGKILL: the connections drop at once, no goodbye on the wire.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.service.pid, signal.SIGKILL)
            self.service.stop(grace_s=5)
            self.service = None


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def run_proxy(listen_port: int, target_port: int) -> None:
    """Accept on ``listen_port`` and forward each connection to ``target_port`` (threads)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(128)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((PG_HOST, target_port), timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


# --- the autoopt command, as a process of its own ----------------------------------------

@dataclass
class Driver:
    """One ``autoopt tune`` process (``python -m autoopt tune ...``) in folder ``cwd``."""

    args: list[str]
    cwd: Path
    env: dict[str, str]
    name: str = "driver"
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Driver:
        self.cwd.mkdir(parents=True, exist_ok=True)
        out_path, err_path = self.cwd / f"{self.name}.out", self.cwd / f"{self.name}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "autoopt", "tune", *self.args], cwd=self.cwd,
                                         env=self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        return self

    def wait(self, timeout_s: float = 300) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} still running after {timeout_s:.0f}s:\n{self.output()[-3000:]}"
                                 ) from None

    def run(self, timeout_s: float = 300) -> int:
        return self.start().wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no cleanup runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    @property
    def stdout(self) -> str:
        return (self.cwd / f"{self.name}.out").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.cwd / f"{self.name}.err").read_text(errors="replace")

    def output(self) -> str:
        return self.stdout + self.stderr


def driver_env(cluster: RayCluster, **extra: str) -> dict[str, str]:
    """The environment an ``autoopt tune`` joining ``cluster`` runs with."""
    return service_env({**cluster.client_env, **extra})


def load_trials(url: str, study: str) -> list[Any]:
    """The study's trials, read straight from the database (no heartbeat, no autoopt code)."""
    import optuna

    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def runs_of(server: MlflowServer, study: str) -> tuple[list[Any], list[Any]]:
    """The parent runs and the nested (trial) runs the server holds for ``study``."""
    client = server.client()
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string=f"tags.`autoopt.study` = '{study}'", max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    nested = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, nested


def budget_used(trials: list[Any]) -> int:
    """Trials that count against --trials (a failed trial that was re-queued does not)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return sum(1 for t in trials if t.number not in retried)


# --- shared services for the whole test session -----------------------------------------

_SHARED: dict[str, Any] = {}


def shared(config: Any, key: str, factory: Any) -> Any:
    """One instance per test session of an expensive service (a Ray cluster, an MLflow server),
    whichever test module asks first; stopped after the services group's last test on this
    worker (``stop_shared``: idle, they would keep polling for the rest of the session), or when
    the session ends."""
    if key not in _SHARED:
        obj = factory()
        _SHARED[key] = obj
        config.add_cleanup(lambda: _stop_if_shared(key, obj))
    return _SHARED[key]


def _stop_if_shared(key: str, obj: Any) -> None:
    if _SHARED.get(key) is obj:
        del _SHARED[key]
        obj.stop()


def stop_shared() -> None:
    """Stop the session's Ray cluster and MLflow server now (a later test that asks for one
    starts it again)."""
    for key in ("ray", "mlflow"):
        obj = _SHARED.pop(key, None)
        if obj is not None:
            obj.stop()


def session_root(config: Any) -> Path:
    """A short folder for the services' files (Ray's socket paths must stay under 108 bytes)."""
    if "root" not in _SHARED:
        root = Path(tempfile.mkdtemp(prefix="aot-"))
        _SHARED["root"] = root
        config.add_cleanup(lambda: _remove_tree(root))
    return _SHARED["root"]


def _remove_tree(root: Path) -> None:
    import shutil

    shutil.rmtree(root, ignore_errors=True)


def shared_cluster(config: Any) -> RayCluster:
    """The session's Ray: a head and one worker node on loopback, one CPU each."""
    return shared(config, "ray", lambda: RayCluster(session_root(config) / "cluster", workers=1).start())


@dataclass
class _MlflowWithDb:
    server: MlflowServer
    db: contextlib.AbstractContextManager[str]

    def stop(self) -> None:
        self.server.stop()
        self.db.__exit__(None, None, None)


def shared_mlflow(config: Any) -> MlflowServer:
    """The session's MLflow server, on a database of its own (MLflow and Optuna both keep an
    Alembic version table, so they never share one)."""
    def start() -> _MlflowWithDb:
        ctx = database("autoopt_mlflow")
        name = ctx.__enter__()
        try:
            return _MlflowWithDb(MlflowServer(session_root(config) / "mlflow", name).start(), ctx)
        except BaseException:
            ctx.__exit__(None, None, None)
            raise

    return shared(config, "mlflow", start).server


# --- user tasks the fault tests tune (module:function, imported by the driver and the workers)

def _digits_with(model_wrapper: Any, data_dir: Any) -> Any:
    from autoopt.tasks import load_task

    task = load_task("digits")
    inner = task.build_model
    task.name = "faulty"
    task.build_model = lambda: model_wrapper(inner(), Path(data_dir))
    return task


def _torch_module(base: Any, hook: Any) -> Any:
    import torch

    class Hooked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = base
            self.calls = 0

        def forward(self, x: Any) -> Any:
            # The second training step of this model: a trial's, never a worker's warm-up step
            # (one step on a throw-away model) nor an evaluation.
            if self.training:
                self.calls += 1
                if self.calls == 2:
                    hook()
            return self.inner(x)

    return Hooked()


def slow_digits(data_dir: str | None = None) -> Any:
    """digits whose trials, while ``<data_dir>/hold`` exists, write ``<data_dir>/pids/<pid>`` at
    their second step and wait for the file to go: a test finds a worker mid-trial by its pid."""
    def wrap(model: Any, root: Path) -> Any:
        def hook() -> None:
            if not (root / "hold").exists():
                return
            (root / "pids").mkdir(exist_ok=True)
            (root / "pids" / str(os.getpid())).write_text(str(os.getpid()))
            deadline = time.monotonic() + 120
            while (root / "hold").exists() and time.monotonic() < deadline:
                time.sleep(0.2)

        return _torch_module(model, hook)

    return _digits_with(wrap, data_dir)


def _first(root: Path, marker: str) -> bool:
    """True for exactly one caller in the whole study (atomic create of a marker file)."""
    try:
        os.close(os.open(root / marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def buggy_digits(data_dir: str | None = None) -> Any:
    """digits where one trial hits a bug in the user's model code and another runs out of
    memory, both mid-epoch: each exactly once per study (markers in ``data_dir``)."""
    def wrap(model: Any, root: Path) -> Any:
        import torch

        def hook() -> None:
            if _first(root, "bug"):
                raise ZeroDivisionError("user model bug: division by zero in forward")
            if _first(root, "oom"):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")

        return _torch_module(model, hook)

    return _digits_with(wrap, data_dir)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "proxy":
        run_proxy(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit("usage: services.py proxy LISTEN_PORT TARGET_PORT")
