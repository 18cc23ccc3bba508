"""Run-history store on a real SQLite file: schema, writes, queries, predicted-vs-actual."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from tasks.context import StepContext
from tasks.resources import history


@pytest.fixture
def url(tmp_path):
    u = f"sqlite:///{tmp_path / 'sub' / 'h.sqlite'}"
    yield u
    history.dispose(u)


def _run(url, ds, wall, **kw):
    base = dict(stage="clean", dataset="events", ds=ds, wall_s=wall, success=True, input_bytes=1e6, workers=2)
    base.update(kw)
    return history.record_run(url, **base)


def test_schema_created_once_and_reusable(url):
    _run(url, "2026-11-01", 3.0)
    history.dispose(url)  # a fresh engine on the same file must not recreate or fail
    _run(url, "2026-11-02", 4.0)
    tables = set(inspect(history.engine(url)).get_table_names())
    assert {"lf_step_runs", "lf_plans"} <= tables
    assert [r["ds"] for r in history.runs(url, "clean")] == ["2026-11-01", "2026-11-02"]


def test_runs_filters_and_order(url):
    _run(url, "2026-11-01", 3.0, recorded_at=100.0)
    _run(url, "2026-11-02", 5.0, recorded_at=200.0, success=False)
    _run(url, "2026-11-03", 6.0, recorded_at=300.0, dataset="other")
    _run(url, "2026-11-04", 7.0, recorded_at=400.0, stage="split")
    assert [r["wall_s"] for r in history.runs(url, "clean")] == [3.0, 5.0, 6.0]
    assert [r["wall_s"] for r in history.runs(url, "clean", "events")] == [3.0, 5.0]
    assert [r["wall_s"] for r in history.runs(url, "clean", "events", success_only=True)] == [3.0]
    assert [r["wall_s"] for r in history.runs(url, "clean", limit=2)] == [5.0, 6.0]  # the latest two, oldest first


def test_bad_input_is_named(url):
    with pytest.raises(ValueError, match="wall_s"):
        history.record_run(url, stage="clean", dataset="e", ds="2026-11-01", success=True)
    with pytest.raises(ValueError, match="unknown field.*bogus"):
        _run(url, "2026-11-01", 1.0, bogus=1)
    with pytest.raises(ValueError, match="wall_s must be >= 0"):
        _run(url, "2026-11-01", -1.0)


def test_record_step_reads_result_and_plan(lf_home):
    plan = {"workers": 3, "threads_per_worker": 2, "memory_limit": 1 << 30, "source": "forecast",
            "predicted": {"wall_s": 10.0, "wall_s_upper": 12.0, "peak_memory": 5e8}}
    ctx = StepContext(dataset="events", ds="2026-11-05", upstream={"plan_clean": plan}, run_id="r1")
    result = {"rows_in": 1000, "accounting": {"bytes_read": 123456},
              "metrics": {"partitions": 4, "peak_memory_per_worker": 4.5e8, "spilled_bytes": 0}}
    history.record_step(ctx, "clean", result, wall_s=8.0, cpu_s=11.0, success=True)
    # a step without a plan, whose result names its own cluster size
    history.record_step(ctx, "split", {"input_bytes": 10, "workers": 5, "threads": 10}, 2.0, 1.0, False)

    (row,) = history.runs(ctx.history_url, "clean", "events")
    assert row["input_rows"] == 1000 and row["input_bytes"] == 123456 and row["partitions"] == 4
    assert (row["workers"], row["threads"], row["memory_limit"]) == (3, 2, float(1 << 30))
    assert row["peak_memory_per_worker"] == 4.5e8 and row["cpu_s"] == 11.0 and row["run_id"] == "r1"
    assert (row["plan_source"], row["predicted_wall_s"], row["predicted_wall_s_upper"]) == ("forecast", 10.0, 12.0)
    (srow,) = history.runs(ctx.history_url, "split")
    assert (srow["workers"], srow["threads"]) == (5, 2) and srow["success"] is False
    assert srow["predicted_wall_s"] is None

    acc = history.accuracy(ctx.history_url, "clean", "events")
    assert acc["n"] == 1 and acc["wall_mape"] == pytest.approx(0.25) and acc["upper_coverage"] == 1.0
    history.dispose()


def test_interval_volumes_latest_success_per_ds(url):
    _run(url, "2026-11-02", 1.0, input_bytes=200, recorded_at=1.0)
    _run(url, "2026-11-01", 1.0, input_bytes=100, recorded_at=2.0)
    _run(url, "2026-11-02", 1.0, input_bytes=250, recorded_at=3.0)  # a rerun replaces the volume
    _run(url, "2026-11-03", 1.0, input_bytes=999, recorded_at=4.0, success=False)
    assert history.interval_volumes(url, "clean", "events") == [("2026-11-01", 100), ("2026-11-02", 250)]


def test_plans_table(url):
    history.record_plan(url, "clean", "events", "2026-11-01",
                        {"workers": 4, "source": "heuristic", "reason": "few runs", "predicted": {"wall_s": 3}}, 1e6)
    (p,) = history.plan_rows(url, "clean", "events")
    assert (p["workers"], p["source"], p["predicted_wall_s"], p["input_bytes"]) == (4, "heuristic", 3.0, 1e6)
