"""The deployment files are valid (no Docker engine here: validated with the compose client, not run),
ship no default secret, and their Dask TLS setup works: the compose file's own scheduler and worker
command lines, run here with certificates from docker/make-dask-certs.sh, accept TLS clients with a
certificate and nobody else."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from leptonflow_airflow.stack import free_port

from tests.conftest import REPO

COMPOSE = REPO / "docker" / "compose.yaml"
REQUIRED = ("AIRFLOW_JWT_SECRET", "AIRFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "DASK_TLS_DIR")
JWT = "0123456789abcdef0123456789abcdef-jwt"
ADMIN_PW = "a-password-of-my-own"
SECRETS = "/run/secrets/"


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl on this machine")
    folder = tmp_path_factory.mktemp("dask-tls")
    subprocess.run(["bash", str(REPO / "docker" / "make-dask-certs.sh"), str(folder), "2"], check=True,
                   capture_output=True)
    return folder


def _env(tmp_path, certs, **overrides: str | None) -> dict[str, str]:
    keyring = tmp_path / "keyring.json"
    keyring.write_text("{}")
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED}
    env.update(LEPTONFLOW_KEYRING_FILE=str(keyring), AIRFLOW_JWT_SECRET=JWT, AIRFLOW_ADMIN_PASSWORD=ADMIN_PW,
               POSTGRES_PASSWORD="pg0123456789abcdef", DASK_TLS_DIR=str(certs))
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def _config(env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("no docker compose client on this machine (make system-deps installs docker-compose)")
    return subprocess.run([*cmd, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def config(tmp_path_factory, certs):
    proc = _config(_env(tmp_path_factory.mktemp("compose"), certs))
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_compose_file_validates(config):
    services = set(config["services"])
    assert {"postgres", "api-server", "scheduler", "dag-processor", "triggerer"} <= services
    assert {"dask-scheduler", "dask-worker"} <= services
    # long-running services come back after a crash; the one-shot init does not rerun
    assert {name for name, svc in config["services"].items() if svc.get("restart") == "unless-stopped"} >= {
        "api-server", "scheduler", "dag-processor", "triggerer", "dask-scheduler", "dask-worker"}
    assert config["services"]["airflow-init"]["restart"] == "no"
    env_of = config["services"]["scheduler"]["environment"]
    assert "AIRFLOW_CONN_DASK_DEFAULT" in env_of and "postgresql" in env_of["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


@pytest.mark.parametrize("missing", REQUIRED)
def test_compose_refuses_to_start_without_each_secret(tmp_path, certs, missing):
    for value in (None, ""):  # unset or empty: both refused, naming the variable
        proc = _config(_env(tmp_path, certs, **{missing: value}))
        assert proc.returncode != 0, f"compose accepted a missing {missing}"
        assert missing in proc.stderr, proc.stderr


def test_no_default_secret_and_the_admin_password_reaches_init_only(config):
    text = yaml.safe_dump(config)
    assert "change-me-in-production" not in text and "airflow:airflow@" not in text
    services = config["services"]
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if name != "airflow-init":
            assert ADMIN_PW not in yaml.safe_dump(svc), name
        if name.startswith("dask"):
            assert "AIRFLOW__API_AUTH__JWT_SECRET" not in env, name  # workers never get the API's key
    assert services["api-server"]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] == JWT
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg0123456789abcdef"
    # published ports answer on loopback only (a TLS reverse proxy serves other hosts)
    for name in ("api-server", "dask-scheduler"):
        for port in services[name]["ports"]:
            assert (port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]) == "127.0.0.1"


def test_airflow_init_refuses_weak_secrets(config):
    """The init script's guard (run by bash as the container would, after compose's $$ unescaping)."""
    script = config["services"]["airflow-init"]["command"][2].replace("$$", "$")
    guard = script.split("umask", 1)[0]
    cases = {("short", ADMIN_PW): 1, (JWT, "admin"): 1, (JWT, "change-me-in-production"): 1, (JWT, ADMIN_PW): 0}
    for (jwt, pw), rc in cases.items():
        env = dict(os.environ, AIRFLOW__API_AUTH__JWT_SECRET=jwt, AIRFLOW_ADMIN_PASSWORD=pw)
        assert subprocess.run(["bash", "-ec", guard], env=env, capture_output=True).returncode == rc, (jwt, pw)


def _local(args: list[str], secrets: dict[str, str]) -> list[str]:
    """A compose command line with /run/secrets/<name> replaced by the secret's file on this machine."""
    out = []
    for a in args:
        if a.startswith(SECRETS):
            a = secrets[a[len(SECRETS):]]
        out.append(a)
    return out


def _client(address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    code = ("from distributed import Client\n"
            f"with Client({address!r}, timeout=15) as c:\n"
            "    print('sum', c.submit(sum, [1, 2]).result())\n")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_dask_runs_tls_only_with_the_compose_command_lines(config, tmp_path):
    services = config["services"]
    secrets = {name: s["file"] for name, s in config["secrets"].items()}
    sched, worker = services["dask-scheduler"], services["dask-worker"]
    assert sched["environment"]["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    assert worker["environment"]["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    assert '"address": "tls://dask-scheduler:8786"' in services["scheduler"]["environment"]["AIRFLOW_CONN_DASK_DEFAULT"]
    port = free_port()
    s_args = _local(sched["entrypoint"], secrets)
    s_args[s_args.index("--port") + 1] = str(port)
    s_args[s_args.index("--dashboard-address") + 1] = "127.0.0.1:0"
    w_args = [f"tls://127.0.0.1:{port}" if a == "tls://dask-scheduler:8786" else a
              for a in _local(worker["entrypoint"], secrets)]
    w_args[w_args.index("--memory-limit") + 1] = "1GiB"
    s_args += ["--host", "127.0.0.1"]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    dask = str(Path(sys.executable).parent / "dask")
    procs = []
    try:
        for args, env in ((s_args, sched["environment"]), (w_args, worker["environment"])):
            assert args[0] == "dask"
            dask_env = {k: str(v) for k, v in env.items() if k.startswith("DASK_")}
            procs.append(subprocess.Popen([dask, *args[1:]], env={**base_env, **dask_env},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(3)
        client_env = {**base_env, **{k: _local([str(v)], secrets)[0]
                                     for k, v in services["scheduler"]["environment"].items()
                                     if k.startswith("DASK_")}}
        ok = _client(f"tls://127.0.0.1:{port}", client_env)
        assert "sum 3" in ok.stdout, ok.stderr[-3000:]
        plain = _client(f"tcp://127.0.0.1:{port}", base_env)  # no TLS at all
        assert plain.returncode != 0 and "sum" not in plain.stdout
        no_cert = {k: v for k, v in client_env.items() if "__CLIENT__" not in k}  # TLS, but no client certificate
        refused = _client(f"tls://127.0.0.1:{port}", no_cert)
        assert refused.returncode != 0 and "sum" not in refused.stdout
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_dockerfile_uses_the_pinned_airflow_image():
    pinned = next(line.split("==")[1] for line in (REPO / "requirements.txt").read_text().splitlines()
                  if line.startswith("apache-airflow=="))
    assert f"FROM apache/airflow:{pinned}-python3.11" in (REPO / "docker" / "Dockerfile").read_text()
