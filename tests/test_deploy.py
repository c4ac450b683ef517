"""deploy/: what this machine can check without a Docker engine or a Kubernetes cluster.

The compose file and the manifests parse; they name the same images, URLs and environment; every
command they run parses with the real command-line parser of the program it calls (autoopt's typer
app, Ray's and MLflow's click commands); nothing is published beyond
loopback and no secret has a default; the Dockerfiles install the project with its extras and the
pinned versions. (The full stack was also brought up on loopback by hand; see deploy/README.md.)
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
KUBERAY = DEPLOY / "kuberay"
SECRETS = ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN")
# What a user puts in deploy/.env; nothing else is set, so every other variable takes its default.
USER_ENV = {"POSTGRES_PASSWORD": "pw-from-dotenv", "RAY_AUTH_TOKEN": "token-from-dotenv"}
AUTOOPT_ENV = ("AUTOOPT_STORAGE", "MLFLOW_TRACKING_URI", "AUTOOPT_DATA")


# --- compose interpolation (the subset of the compose spec the file uses) --------------------

class MissingVariable(Exception):
    pass


_VAR = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$`` as
    ``docker compose`` does; a required variable that is unset (or empty, with ``:``) raises."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg")
        value = env.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op and op.endswith("?") and missing:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return value or ""

    return _VAR.sub(sub, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with deploy/.env filled in."""
    return interpolate_tree(raw_compose(), USER_ENV)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


# --- the real parsers -------------------------------------------------------------------------

def autoopt_command(name: str) -> Any:
    import typer.main

    from autoopt.cli import app

    return typer.main.get_command(app).commands[name]


def parse_autoopt(argv: list[str]) -> dict[str, Any]:
    """Parse ``autoopt <cmd> ...`` with autoopt's own CLI (an unknown flag or bad value raises)."""
    assert argv[0] == "autoopt", argv
    cmd = autoopt_command(argv[1])
    return cmd.make_context(argv[1], list(argv[2:])).params


def parse_ray_start(argv: list[str]) -> dict[str, Any]:
    from ray.scripts.scripts import start

    assert argv[:2] == ["ray", "start"], argv
    return start.make_context("start", list(argv[2:])).params


def parse_mlflow_server(argv: list[str]) -> dict[str, Any]:
    from mlflow.cli import server

    assert argv[:2] == ["mlflow", "server"], argv
    return server.make_context("server", list(argv[2:])).params


def allowed_hosts(flag_value: str) -> list[str]:
    return [h.strip() for h in flag_value.split(",") if h.strip()]


def host_allowed(hosts: list[str], host_header: str) -> bool:
    from mlflow.server.security_utils import is_allowed_host_header

    return is_allowed_host_header(hosts, host_header)


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def cpu_image() -> str:
    return f"autoopt:{pyproject()['project']['version']}"


# --- compose ----------------------------------------------------------------------------------

def test_compose_has_the_five_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "mlflow", "ray-head", "ray-gpu-worker", "tune"}
    assert set(compose["volumes"]) >= {"pgdata", "mlartifacts"}


def test_compose_refuses_to_start_without_each_secret() -> None:
    raw = raw_compose()
    for secret in SECRETS:
        env = {k: v for k, v in USER_ENV.items() if k != secret}
        with pytest.raises(MissingVariable, match=secret):
            interpolate_tree(raw, env)
        with pytest.raises(MissingVariable, match=secret):
            interpolate_tree(raw, {**env, secret: ""})
    # Every mention of a secret is the required form: no `${POSTGRES_PASSWORD:-changeme}` anywhere.
    text = COMPOSE.read_text()
    for secret in SECRETS:
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses, f"{secret} is never used"
        assert all(u.startswith(":?") for u in uses), (secret, uses)


def test_postgres_password_comes_from_the_environment(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    assert env_of(pg)["POSTGRES_PASSWORD"] == USER_ENV["POSTGRES_PASSWORD"]
    assert env_of(compose["services"]["mlflow"])["PGPASSWORD"] == USER_ENV["POSTGRES_PASSWORD"]
    assert "POSTGRES_HOST_AUTH_METHOD" not in env_of(pg)  # `trust` would make the password moot


def _published(port: Any) -> tuple[str | None, str]:
    """(host ip, host port) of a compose port entry, short or long syntax."""
    if isinstance(port, dict):
        return port.get("host_ip"), str(port.get("published", ""))
    parts = str(port).split("/")[0].rsplit(":", 2)
    if len(parts) == 3:
        return parts[0].strip("[]"), parts[1]
    if len(parts) == 2:
        return None, parts[0]
    return None, ""  # "5000" alone publishes on a random port of every interface


def test_nothing_is_published_beyond_loopback(compose: dict[str, Any]) -> None:
    published = {}
    for name, svc in compose["services"].items():
        assert svc.get("network_mode") != "host", name
        for port in svc.get("ports", []):
            host_ip, host_port = _published(port)
            assert host_ip in ("127.0.0.1", "::1"), f"{name} publishes {port!r} beyond loopback"
            published[name] = host_port
    assert "postgres" not in published  # only the compose network reaches the database
    assert published == {"mlflow": "5000", "ray-head": "8265"}


def test_cpu_services_share_one_image_and_gpu_worker_its_cuda_twin(compose: dict[str, Any]) -> None:
    svcs = compose["services"]
    cpu = {svcs[n]["image"] for n in ("mlflow", "ray-head", "tune")}
    assert cpu == {cpu_image()}
    assert svcs["ray-gpu-worker"]["image"] == cpu_image() + "-cuda"
    for name in ("mlflow", "ray-head", "tune", "ray-gpu-worker"):
        build = svcs[name]["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT
        want = "deploy/Dockerfile.cuda" if name == "ray-gpu-worker" else "deploy/Dockerfile"
        assert build["dockerfile"] == want
        assert (ROOT / want).is_file()


def test_ray_nodes_and_driver_share_their_environment(compose: dict[str, Any]) -> None:
    svcs = compose["services"]
    envs = {n: env_of(svcs[n]) for n in ("ray-head", "ray-gpu-worker", "tune")}
    for var in (*AUTOOPT_ENV, "PGPASSWORD", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        values = {n: e.get(var) for n, e in envs.items()}
        assert len(set(values.values())) == 1 and None not in values.values(), (var, values)
    env = envs["tune"]
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == USER_ENV["RAY_AUTH_TOKEN"]
    storage = urlsplit(env["AUTOOPT_STORAGE"])
    assert storage.scheme == "postgresql+psycopg" and storage.password is None  # libpq reads PGPASSWORD
    assert storage.hostname in svcs and storage.hostname == "postgres"
    tracking = urlsplit(env["MLFLOW_TRACKING_URI"])
    assert tracking.scheme == "http" and tracking.hostname == "mlflow"


def test_optuna_and_mlflow_have_their_own_databases(compose: dict[str, Any]) -> None:
    created = set(re.findall(r"CREATE DATABASE (\w+)", (DEPLOY / "initdb" / "01-databases.sql").read_text()))
    svcs = compose["services"]
    optuna_db = urlsplit(env_of(svcs["tune"])["AUTOOPT_STORAGE"]).path.lstrip("/")
    server = parse_mlflow_server(svcs["mlflow"]["command"])
    mlflow_db = urlsplit(server["backend_store_uri"]).path.lstrip("/")
    assert optuna_db != mlflow_db  # two Alembic version tables cannot share a database
    assert {optuna_db, mlflow_db} <= created
    mounts = [v.split(":")[:2] for v in svcs["postgres"]["volumes"]]
    assert ["./initdb", "/docker-entrypoint-initdb.d"] in mounts


def test_mlflow_server_proxies_artifacts_and_admits_the_workers(compose: dict[str, Any]) -> None:
    svc = compose["services"]["mlflow"]
    params = parse_mlflow_server(svc["command"])
    assert params["serve_artifacts"] and params["default_artifact_root"] is None  # mlflow-artifacts:/
    volume_paths = [v.split(":")[1] for v in svc["volumes"]]
    assert params["artifacts_destination"] in volume_paths
    assert urlsplit(params["backend_store_uri"]).password is None
    assert urlsplit(params["backend_store_uri"]).hostname == "postgres"
    tracking = urlsplit(env_of(compose["services"]["tune"])["MLFLOW_TRACKING_URI"])
    assert params["port"] == tracking.port
    assert params["host"] == "0.0.0.0"  # inside the container; the host side is loopback only
    hosts = allowed_hosts(params["allowed_hosts"])
    assert host_allowed(hosts, tracking.netloc)  # what every worker sends
    assert host_allowed(hosts, "localhost:5000") and host_allowed(hosts, "127.0.0.1:5000")
    assert not host_allowed(hosts, "attacker.example:5000")


def test_tune_command_parses_with_the_real_cli(compose: dict[str, Any]) -> None:
    svcs = compose["services"]
    tune = svcs["tune"]
    params = parse_autoopt(tune["command"])
    env = env_of(tune)
    assert params["task"] == "digits"
    assert params["storage"] == env["AUTOOPT_STORAGE"]
    assert params["mlflow_uri"] == env["MLFLOW_TRACKING_URI"]
    assert params["ray_address"] == env["RAY_ADDRESS"]
    assert params["gpus_per_trial"] == 0.25
    head = parse_ray_start(svcs["ray-head"]["command"])
    assert params["ray_address"] == f"ray-head:{head['port']}"
    out = params["out_dir"]
    assert any(v.split(":")[1] == out for v in tune["volumes"])  # the recommendation outlives the container
    assert (params["trials"], params["epochs"]) == (32, 5)


def test_tune_overrides_reach_the_command() -> None:
    env = {**USER_ENV, "AUTOOPT_TASK": "mnist", "AUTOOPT_TRIALS": "64", "AUTOOPT_GPUS_PER_TRIAL": "0.5"}
    params = parse_autoopt(interpolate_tree(raw_compose(), env)["services"]["tune"]["command"])
    assert (params["task"], params["trials"], params["gpus_per_trial"]) == ("mnist", 64, 0.5)


def _stub_ray(folder: Path, exit_code: int) -> Path:
    """A `ray` on PATH that records its arguments, one per line, and exits with ``exit_code``."""
    stub = folder / "ray"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{folder}/ray-args"\nexit {exit_code}\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return stub


def test_tune_entrypoint_joins_ray_without_resources_then_runs_the_command(
        compose: dict[str, Any], tmp_path: Path) -> None:
    entrypoint = compose["services"]["tune"]["entrypoint"]
    _stub_ray(tmp_path, 0)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([*entrypoint, "printf", "%s|", "--task=my task", "--trials=3"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "--task=my task|--trials=3|"  # the command, word for word, after the join
    joined = parse_ray_start(["ray", *(tmp_path / "ray-args").read_text().splitlines()])
    head = parse_ray_start(compose["services"]["ray-head"]["command"])
    assert joined["address"] == f"ray-head:{head['port']}"
    assert joined["num_cpus"] == 0 and joined["num_gpus"] == 0  # no trial lands on the driver
    assert not joined["head"]

    _stub_ray(tmp_path, 3)  # the cluster is unreachable: the driver must not start
    failed = subprocess.run([*entrypoint, "echo", "should not run"], env=env, capture_output=True, text=True,
                            timeout=30)
    assert failed.returncode != 0 and "should not run" not in failed.stdout


def test_ray_head_and_gpu_worker(compose: dict[str, Any]) -> None:
    svcs = compose["services"]
    head = parse_ray_start(svcs["ray-head"]["command"])
    assert head["head"] and head["block"] and head["dashboard_host"] == "0.0.0.0"
    assert head["num_gpus"] == 0
    worker = parse_ray_start(svcs["ray-gpu-worker"]["command"])
    assert not worker["head"] and worker["block"]
    assert worker["address"] == f"ray-head:{head['port']}"
    devices = svcs["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # Ray offers exactly the GPUs Docker reserves (or counts them itself when all are reserved).
    count = devices[0]["count"]
    assert count == worker["num_gpus"] or (count == "all" and worker["num_gpus"] is None)
    # --gpus-per-trial 0.25 runs four trials per GPU, each with --cpus-per-trial (1) CPU.
    assert worker["num_cpus"] >= 4 * worker["num_gpus"]
    for name in ("ray-head", "ray-gpu-worker"):
        assert svcs[name].get("shm_size"), f"{name}: Ray's object store needs more than 64 MB of /dev/shm"


def test_tune_waits_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    svcs = compose["services"]
    deps = svcs["tune"]["depends_on"]
    assert set(deps) == {"postgres", "mlflow", "ray-head", "ray-gpu-worker"}
    for name, dep in deps.items():
        assert dep["condition"] == "service_healthy", name
        assert svcs[name]["healthcheck"]["test"], name
    assert svcs["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


# --- Dockerfiles and pins -------------------------------------------------------------------

def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return out


DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_the_project_with_its_extras(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    runs = " && ".join(args for op, args in steps if op == "RUN")
    extras = set(pyproject()["project"]["optional-dependencies"])
    assert {"postgres", "modern"} <= extras
    assert 'pip install -c deploy/constraints.txt ".[postgres,modern]" "ray[default]"' in runs
    # torch comes first, from the index this image targets, under the same pins.
    assert re.search(r"pip install --index-url \S+ -c deploy/constraints.txt torch torchvision", runs)
    for command in ("autoopt --help", "ray --version", "mlflow --version"):
        assert command in runs, f"{dockerfile.name} does not check that `{command.split()[0]}` exists"
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert "wget" in runs  # KubeRay's probes and the compose healthchecks use it


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_what_its_context_filter_lets_through(dockerfile: Path) -> None:
    allowed = [line[1:].rstrip("/") for line in Path(f"{dockerfile}.dockerignore").read_text().splitlines()
               if line.startswith("!")]
    copies = [args.split() for op, args in instructions(dockerfile) if op == "COPY"]
    assert copies
    for *sources, _dest in copies:
        for src in sources:
            assert (ROOT / src).exists(), src
            assert src.rstrip("/") in allowed, f"{src} is filtered out of the build context"


def test_both_images_run_the_same_python() -> None:
    def python_of(dockerfile: Path) -> tuple[str, str]:
        steps = instructions(dockerfile)
        base = next(args for op, args in steps if op == "FROM")
        arg = next(args for op, args in steps if op == "ARG" and args.startswith("PYTHON_VERSION="))
        return base, arg

    cpu, cuda = (python_of(d) for d in DOCKERFILES)
    assert cpu == cuda  # Ray refuses a node whose Python differs from the head's
    assert cpu[0] == "python:${PYTHON_VERSION}-slim"


def test_cuda_image_asks_the_runtime_for_the_driver() -> None:
    env = " ".join(args for op, args in instructions(DEPLOY / "Dockerfile.cuda") if op == "ENV")
    caps = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env)
    assert caps and {"compute", "utility"} <= set(caps.group(1).split(","))


def pins() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.lower()] = version
    return out


def test_pins_satisfy_the_project_and_cover_what_must_match_across_nodes() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned = {canonicalize_name(k): v for k, v in pins().items()}
    assert {"ray", "optuna", "mlflow", "torch", "psycopg", "psycopg-binary"} <= set(pinned)
    project = pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    extras = project["optional-dependencies"]
    reqs += [Requirement(r) for extra in ("postgres", "modern") for r in extras[extra]]
    for req in reqs:
        name = canonicalize_name(req.name)
        if name in pinned:
            assert req.specifier.contains(pinned[name], prereleases=True), (req, pinned[name])


# --- KubeRay ----------------------------------------------------------------------------------

def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def raycluster() -> dict[str, Any]:
    (doc,) = load_all(KUBERAY / "raycluster.yaml")
    return doc


@pytest.fixture(scope="module")
def mlflow_k8s() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in load_all(KUBERAY / "mlflow.yaml")}


def pod_specs(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = cluster["spec"]
    groups = {"head": spec["headGroupSpec"]}
    groups.update({g["groupName"]: g for g in spec["workerGroupSpecs"]})
    return groups


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_raycluster_groups_images_and_ray_version(raycluster: dict[str, Any]) -> None:
    assert raycluster["apiVersion"] == "ray.io/v1" and raycluster["kind"] == "RayCluster"
    assert raycluster["spec"]["rayVersion"] == pins()["ray"]
    groups = pod_specs(raycluster)
    assert set(groups) == {"head", "cpu", "gpu"}
    assert groups["head"]["rayStartParams"]["num-cpus"] == "0"  # the head runs drivers, not trials
    images = {name: g["template"]["spec"]["containers"][0]["image"] for name, g in groups.items()}
    assert images == {"head": cpu_image(), "cpu": cpu_image(), "gpu": cpu_image() + "-cuda"}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert int(gpu["limits"]["nvidia.com/gpu"]) >= 1
    assert float(gpu["limits"]["cpu"]) >= 4 * int(gpu["limits"]["nvidia.com/gpu"])  # 0.25-GPU packing
    assert raycluster["spec"]["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"


def test_k8s_and_compose_name_the_same_images(raycluster: dict[str, Any], compose: dict[str, Any],
                                              mlflow_k8s: dict[str, dict[str, Any]]) -> None:
    k8s = {c["image"] for g in pod_specs(raycluster).values() for c in g["template"]["spec"]["containers"]}
    k8s |= {c["image"] for c in mlflow_k8s["Deployment"]["spec"]["template"]["spec"]["containers"]}
    assert k8s == {s["image"] for s in compose["services"].values() if s.get("build")}


def test_every_ray_pod_reads_storage_from_the_secret_and_tracks_to_the_service(
        raycluster: dict[str, Any], mlflow_k8s: dict[str, dict[str, Any]]) -> None:
    service = mlflow_k8s["Service"]
    port = service["spec"]["ports"][0]["port"]
    expected_tracking = f"http://{service['metadata']['name']}:{port}"
    for name, group in pod_specs(raycluster).items():
        for container in group["template"]["spec"]["containers"]:
            env = container_env(container)
            assert set(AUTOOPT_ENV) <= set(env), (name, env)
            assert env["AUTOOPT_STORAGE"] == {"secretKeyRef": {"name": "autoopt-db", "key": "storage-url"}}
            assert env["MLFLOW_TRACKING_URI"] == expected_tracking
            # shm for Ray's object store, and nothing shared between pods but the services.
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/dev/shm" in mounts


def test_rayjob_runs_autoopt_tune_on_the_cluster(raycluster: dict[str, Any]) -> None:
    (job,) = load_all(KUBERAY / "rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": raycluster["metadata"]["name"]}
    argv = shlex.split(job["spec"]["entrypoint"])
    params = parse_autoopt(argv)
    # Storage and tracking come from the head pod's env (the Secret): Ray shows entrypoints on
    # its dashboard, so no URL, let alone a password, goes in one.
    assert params["storage"] is None and params["mlflow_uri"] is None and params["ray_address"] is None
    assert not re.search(r"://", job["spec"]["entrypoint"])
    assert params["gpus_per_trial"] == 0.25 and params["task"] == "digits"


def test_mlflow_on_k8s_proxies_artifacts_and_stays_in_the_cluster(
        mlflow_k8s: dict[str, dict[str, Any]]) -> None:
    assert set(mlflow_k8s) == {"PersistentVolumeClaim", "Deployment", "Service"}
    assert mlflow_k8s["Service"]["spec"]["type"] == "ClusterIP"
    pod = mlflow_k8s["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    params = parse_mlflow_server(container["command"])
    assert params["serve_artifacts"] and params["backend_store_uri"] is None  # from the env, below
    env = container_env(container)
    secret = {"secretKeyRef": {"name": "autoopt-db", "key": "mlflow-backend-url"}}
    assert env["MLFLOW_BACKEND_STORE_URI"] == secret
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = mounts[params["artifacts_destination"]]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    assert claims[volume] == mlflow_k8s["PersistentVolumeClaim"]["metadata"]["name"]
    hosts = allowed_hosts(params["allowed_hosts"])
    name, port = mlflow_k8s["Service"]["metadata"]["name"], params["port"]
    assert host_allowed(hosts, f"{name}:{port}")
    assert host_allowed(hosts, f"{name}.team-a.svc.cluster.local:{port}")
    assert host_allowed(hosts, f"localhost:{port}")  # kubectl port-forward
    assert not host_allowed(hosts, f"attacker.example:{port}")


# --- everything in deploy/ ------------------------------------------------------------------

def test_no_credentials_are_written_in_deploy_files() -> None:
    for path in DEPLOY.rglob("*"):
        if not path.is_file() or path.name == "README.md":
            continue
        for url in re.findall(r"[a-z+]+://[^\s\"']+", path.read_text()):
            assert urlsplit(url.replace("${", "").replace("}", "")).password is None, (path, url)


def test_readme_commands_exist() -> None:
    """Every `autoopt tune` line of the README parses with the CLI, and every file it applies exists."""
    text = (DEPLOY / "README.md").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
    tune_lines = [line.split("autoopt tune ", 1)[1] for line in joined.splitlines()
                  if "autoopt tune --" in line]
    assert tune_lines
    for line in tune_lines:
        argv = ["autoopt", "tune", *shlex.split(line.split("`")[0].split("  #")[0])]
        parse_autoopt(argv)
    for applied in re.findall(r"kubectl apply -f (\S+)", text):
        assert (ROOT / applied).exists(), applied
    for name in ("Dockerfile", "Dockerfile.cuda", "docker-compose.yml", ".env.example"):
        assert f"deploy/{name}" in text, name
