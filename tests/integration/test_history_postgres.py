"""The run-history store and the forecaster on a real PostgreSQL server."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import inspect

from tasks.context import StepContext
from tasks.resources import forecast, history
from tasks.resources.step_metrics import StepMetrics
from tests.postgres_server import pg_bin, start_postgres

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory):
    if pg_bin() is None:
        pytest.skip("PostgreSQL binaries missing: apt-get install -y postgresql")
    url, stop = start_postgres(tmp_path_factory.mktemp("pg"))
    yield url
    history.dispose(url)
    stop()


def test_history_roundtrip_on_postgres(pg_url):
    plan = {"workers": 2, "threads_per_worker": 1, "memory_limit": 1 << 30, "source": "forecast",
            "predicted": {"wall_s": 4.0, "wall_s_upper": 5.0}}
    ctx = StepContext(dataset="events", ds="2026-11-01", history_url=pg_url, upstream={"plan_clean": plan})
    history.record_step(ctx, "clean", StepMetrics(input_bytes=500_000_000, input_rows=10, workers=2), 5.0, 6.0, True)
    history.dispose(pg_url)  # reconnect: schema creation must be idempotent on PostgreSQL too
    history.record_step(ctx, "clean", StepMetrics(input_bytes=600_000_000, input_rows=12, workers=2), 4.0, 5.0, False)
    assert {"lf_step_runs", "lf_plans"} <= set(inspect(history.engine(pg_url)).get_table_names())
    rows = history.runs(pg_url, "clean", "events")
    assert [(r.input_bytes, r.input_rows, r.success) for r in rows] == [(5e8, 10, True), (6e8, 12, False)]
    acc = history.accuracy(pg_url, "clean", "events")
    assert acc["n"] == 1 and acc["wall_mape"] == pytest.approx(0.2)


def test_plan_from_postgres_history(pg_url):
    rng = np.random.default_rng(3)
    for i in range(12):
        b, w = float(rng.uniform(1e9, 8e9)), int(rng.integers(1, 9))
        history.record_run(pg_url, stage="split", dataset="events", ds=f"2026-10-{i + 1:02d}",
                           wall_s=3 + b / (1e8 * w), success=True, input_bytes=b, workers=w, threads=1)
    rows = history.runs(pg_url, "split", "events", success_only=True)
    plan = forecast.make_plan(rows, 4e9, deadline_s=15, max_workers=16, memory_per_worker=64 << 30)
    # truth: 3 + 40/w <= 15 -> w >= 4 (exact data, so the bound is tight)
    assert plan.source == "forecast" and plan.workers == 4
