"""Run-history store on a real SQLite file: schema, writes, queries, predicted-vs-actual."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from tasks.context import StepContext
from tasks.resources import history
from tasks.resources.step_metrics import StepMetrics


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
    assert [r.ds for r in history.runs(url, "clean")] == ["2026-11-01", "2026-11-02"]


def test_runs_filters_and_order(url):
    _run(url, "2026-11-01", 3.0, recorded_at=100.0)
    _run(url, "2026-11-02", 5.0, recorded_at=200.0, success=False)
    _run(url, "2026-11-03", 6.0, recorded_at=300.0, dataset="other")
    _run(url, "2026-11-04", 7.0, recorded_at=400.0, stage="split")
    assert [r.wall_s for r in history.runs(url, "clean")] == [3.0, 5.0, 6.0]
    assert [r.wall_s for r in history.runs(url, "clean", "events")] == [3.0, 5.0]
    assert [r.wall_s for r in history.runs(url, "clean", "events", success_only=True)] == [3.0]
    assert [r.wall_s for r in history.runs(url, "clean", limit=2)] == [5.0, 6.0]  # the latest two, oldest first


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
    result = {"input_rows": 1000, "input_bytes": 123456, "partitions": 4, "peak_memory_per_worker": 4.5e8,
              "spilled_bytes": 0, "rejected_by_reason": {}}  # a step's result: metrics among other keys
    history.record_step(ctx, "clean", StepMetrics.from_result(result), wall_s=8.0, cpu_s=11.0, success=True)
    # a step without a plan, whose result names its own cluster size
    history.record_step(ctx, "split", StepMetrics(input_bytes=10, workers=5, threads_per_worker=2), 2.0, 1.0, False)

    (row,) = history.runs(ctx.history_url, "clean", "events")
    assert row.input_rows == 1000 and row.input_bytes == 123456 and row.partitions == 4
    assert (row.workers, row.threads, row.memory_limit) == (3, 2, float(1 << 30))  # the plan's: not in the result
    assert row.peak_memory_per_worker == 4.5e8 and row.cpu_s == 11.0 and row.run_id == "r1"
    assert (row.plan_source, row.predicted_wall_s, row.predicted_wall_s_upper) == ("forecast", 10.0, 12.0)
    (srow,) = history.runs(ctx.history_url, "split")
    assert (srow.workers, srow.threads) == (5, 2) and srow.success is False
    assert srow.predicted_wall_s is None and srow.plan_source is None
    with pytest.raises(TypeError, match="StepMetrics"):
        history.record_step(ctx, "clean", result, wall_s=1.0, cpu_s=1.0, success=True)

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


def test_step_run_is_the_table_row():
    """StepRun has one field per column of lf_step_runs, in column order: runs() builds it from a row."""
    assert [f for f in history.StepRun.__dataclass_fields__] == [c.name for c in history.step_runs.columns]
    run = history.StepRun.coerce({"wall_s": 2.0, "success": True, "input_bytes": 5e8, "workers": 2})
    assert (run.wall_s, run.input_bytes, run.workers, run.threads, run.plan_source) == (2.0, 5e8, 2, 0, None)
    assert history.StepRun.coerce(run) is run
    with pytest.raises(ValueError, match="unknown field.*input_bytez"):
        history.StepRun.coerce({"wall_s": 1.0, "success": True, "input_bytez": 1})
    with pytest.raises(ValueError, match="needs.*success"):
        history.StepRun.coerce({"wall_s": 1.0})


def test_step_metrics_from_a_result():
    """One name per quantity: other keys are ignored, a missing or null metric is 0, a bad value is named."""
    m = StepMetrics.from_result({"input_bytes": 5e8, "workers": 2, "bytes_shuffled": None, "rows": {"train": 3}})
    assert (m.input_bytes, m.workers, m.bytes_shuffled, m.output_rows) == (500_000_000, 2, 0, 0)
    assert StepMetrics.from_result(None) == StepMetrics() == StepMetrics.from_result({})
    assert StepMetrics.from_result(m.to_json()) == m and set(m.to_json()) == set(StepMetrics.names())
    for bad in ("12", True, float("nan"), -1, [1]):
        with pytest.raises(ValueError, match=r"clean result: 'partitions' must be a finite number"):
            StepMetrics.from_result({"partitions": bad}, "clean")
