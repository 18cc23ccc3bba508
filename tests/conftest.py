"""Shared fixtures. Tests run against real engines: real Dask clusters on loopback,
real Airflow databases, real servers; nothing that can run here is mocked."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Airflow imported by tests (DAG parsing) must not write into the user's ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="lf-test-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
for p in (REPO, REPO / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


@pytest.fixture(scope="session")
def bench_forecast():
    """bench/forecast.py as a module (bench/ is scripts, not a package): its simulator and gateway timing."""
    if "bench_forecast" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_forecast", REPO / "bench" / "forecast.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_forecast"] = mod  # one module for every test that uses it
        spec.loader.exec_module(mod)
    return sys.modules["bench_forecast"]


@pytest.fixture
def lf_home(tmp_path, monkeypatch) -> Path:
    """A private LEPTONFLOW_HOME (lake, keyring, history DB) for one test; its keyring is created here."""
    home = tmp_path / "lfhome"
    home.mkdir()
    monkeypatch.setenv("LEPTONFLOW_HOME", str(home))
    monkeypatch.setenv("LEPTONFLOW_LAKE", str(home / "lake"))
    monkeypatch.setenv("LEPTONFLOW_KEYRING", str(home / "keys" / "keyring.json"))
    monkeypatch.setenv("LEPTONFLOW_HISTORY_URL", f"sqlite:///{home / 'history.sqlite'}")
    monkeypatch.setenv("LEPTONFLOW_ARTIFACTS", str(home / "artifacts"))
    monkeypatch.delenv("LEPTONFLOW_KEYRING_JSON", raising=False)
    monkeypatch.delenv("LEPTONFLOW_KMS", raising=False)
    make_keyring(home / "keys" / "keyring.json")  # explicitly, as `python -m tasks keys init` does
    return home


def make_keyring(path: Path):
    """A fresh keyring file at `path` (tasks never create one on their own)."""
    from tasks.security import keyring

    return keyring.generate(path)


def pytest_configure(config):
    os.environ.setdefault("PYTHONPATH", str(REPO))
