"""The deployment files are valid (no Docker engine here: validated, not run)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_validates(tmp_path):
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("no docker compose client on this machine (make system-deps installs docker-compose)")
    keyring = tmp_path / "keyring.json"
    keyring.write_text("{}")
    env = dict(os.environ, LEPTONFLOW_KEYRING_FILE=str(keyring))
    proc = subprocess.run(
        [*cmd, "-f", str(REPO / "docker" / "compose.yaml"), "config"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    services = set(config["services"])
    assert {"postgres", "api-server", "scheduler", "dag-processor", "triggerer"} <= services
    assert {"dask-scheduler", "dask-worker"} <= services
    # long-running services come back after a crash; the one-shot init does not rerun
    assert {name for name, svc in config["services"].items() if svc.get("restart") == "unless-stopped"} >= {
        "api-server", "scheduler", "dag-processor", "triggerer", "dask-scheduler", "dask-worker"}
    assert config["services"]["airflow-init"]["restart"] == "no"
    env_of = config["services"]["scheduler"]["environment"]
    assert "AIRFLOW_CONN_DASK_DEFAULT" in env_of and "postgresql" in env_of["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_dockerfile_uses_the_pinned_airflow_image():
    pinned = next(line.split("==")[1] for line in (REPO / "requirements.txt").read_text().splitlines()
                  if line.startswith("apache-airflow=="))
    assert f"FROM apache/airflow:{pinned}-python3.11" in (REPO / "docker" / "Dockerfile").read_text()
