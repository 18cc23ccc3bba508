"""One real Airflow stack (SQLite metadata DB, LocalExecutor, scheduler, dag-processor,
triggerer, api-server on loopback) shared by the end-to-end tests of this folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta

import pytest
from leptonflow_airflow.stack import AirflowStack, file_transport

from tasks.prep import datagen
from tasks.spec import spec_for

DAG_ID = "leptonflow_events"
# Small, fast runs for the operating tests (backfills, concurrency, UI); defaults for the scheduled run.
# Quick runs for the operations tests: a small model, trained briefly, published under a loose baseline gate.
FAST = {"epochs": 1, "min_steps": 0, "hidden": "32", "batch_size": 512, "baseline_tolerance": 1.0}


def day(offset: int) -> str:
    return (date.today() - timedelta(days=offset)).isoformat()


@contextmanager
def leptonflow_env(stack: AirflowStack) -> Iterator[dict[str, str]]:
    """This process sees the stack's lake, keyring and history DB (as its tasks do), then its own again."""
    env = {k: v for k, v in stack.env.items() if k.startswith("LEPTONFLOW_")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def airflow_stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    # OpenLineage on, into files: test_openlineage.py reads the events of the scheduled run
    stack = AirflowStack(home=base / "airflow", lf_home=base / "lf", openlineage=file_transport(base / "openlineage"))
    with leptonflow_env(stack) as env:
        yield from _running(stack, env)


def _running(stack: AirflowStack, env: dict[str, str]) -> Iterator[AirflowStack]:
    spec = spec_for("events")
    datagen.generate(env["LEPTONFLOW_LAKE"], spec, day(1), 1, 40_000, seed=11)  # the scheduled run's interval
    datagen.generate(env["LEPTONFLOW_LAKE"], spec, day(8), 6, 8_000, seed=12)  # days 8..3 ago: backfills, UI
    stack.init()
    try:
        stack.start()
        stack.wait_dag(DAG_ID)
        stack.env_vars = env
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def scheduled_run(airflow_stack):
    """The run the scheduler itself creates for the latest interval once the DAG is unpaused."""
    airflow_stack.cli("dags", "unpause", DAG_ID)
    run_id = airflow_stack.wait_scheduled_run(DAG_ID, day(1))
    state = airflow_stack.wait_run(DAG_ID, run_id, timeout=1200)
    return {"run_id": run_id, "state": state, "states": airflow_stack.task_states(DAG_ID, run_id), "ds": day(1)}


def failed_logs(stack: AirflowStack, run_id: str, states: dict[str, str]) -> str:
    bad = [t for t, s in states.items() if s != "success"]
    return "\n".join(f"--- {t}\n{stack.task_log(DAG_ID, run_id, t)[-3000:]}" for t in bad)
