"""The whole DAG with PostgreSQL as Airflow's metadata DB and as the run-history DB
(a real server started for the test), through the real scheduler and executor."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from leptonflow_airflow.stack import AirflowStack
from sqlalchemy import create_engine, text

from tasks.prep import datagen
from tasks.spec import spec_for
from tests.e2e.conftest import DAG_ID, FAST, failed_logs, leptonflow_env
from tests.postgres_server import pg_bin, start_postgres

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory):
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries missing (make system-deps installs them)")
    url, stop = start_postgres(tmp_path_factory.mktemp("pg"))
    yield url
    stop()


def test_pipeline_on_postgres(tmp_path, pg_url):
    stack = AirflowStack(home=tmp_path / "airflow", lf_home=tmp_path / "lf", db_url=pg_url, history_url=pg_url)
    ds = (date.today() - timedelta(days=10)).isoformat()
    with leptonflow_env(stack) as env:
        datagen.generate(env["LEPTONFLOW_LAKE"], spec_for("events"), ds, 1, 8_000, seed=21)
        _run_one(stack, ds, pg_url)


def _run_one(stack: AirflowStack, ds: str, pg_url: str) -> None:
    try:
        stack.init()
        stack.start()
        stack.wait_dag(DAG_ID)
        run_id = stack.trigger(DAG_ID, conf={**FAST, "interval_date": ds})
        stack.cli("dags", "unpause", DAG_ID)
        state = stack.wait_run(DAG_ID, run_id, timeout=1200)
        states = stack.task_states(DAG_ID, run_id)
        assert state == "success", failed_logs(stack, run_id, states)
    finally:
        stack.stop()
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        # Airflow's own tables and our history live in PostgreSQL
        ok = conn.execute(text(
            "select count(*) from task_instance where run_id = :r and state = 'success'"), {"r": run_id}).scalar()
        assert ok == len(states)
        stages = {r[0] for r in conn.execute(text("select stage from lf_step_runs where ds = :ds"), {"ds": ds})}
        assert {"clean", "split", "train"} <= stages
    engine.dispose()
