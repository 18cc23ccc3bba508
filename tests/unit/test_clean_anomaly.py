"""The clean step quarantines rows that an IsolationForest fitted on earlier intervals flags."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tasks.context import StepContext
from tasks.io.parquet import read_table
from tasks.prep import clean, datagen
from tasks.security.anomaly import AnomalyAlert
from tasks.spec import spec_for

LOCAL = {"backend": "local", "processes": False}


def _ctx(ds: str, **params) -> StepContext:
    return StepContext(dataset="events", ds=ds, cluster=LOCAL, params={"encrypt": False, **params})


def _quarantined(ctx: StepContext) -> pa.Table:
    m = ctx.lake.require("quarantine", "events", ctx.ds)
    return pa.concat_tables(read_table(ctx.lake.abspath(m, f)) for f in m.files)


@pytest.fixture
def lake_with_history(lf_home):
    spec = spec_for("events")
    lake = str(lf_home / "lake")
    datagen.generate(lake, spec, "2026-11-01", 2, 6_000, seed=3)
    datagen.generate(lake, spec, "2026-11-03", 1, 6_000, seed=4, poison_rows=600)
    first = clean.run(_ctx("2026-11-01"))
    assert "anomaly" not in first["rejected_by_reason"]  # no history: no model, nothing flagged
    clean.run(_ctx("2026-11-02"))
    return lf_home


def test_poisoned_rows_go_to_quarantine_with_reason_anomaly(lake_with_history):
    ctx = _ctx("2026-11-03", anomaly_policy="warn")
    res = clean.run(ctx)
    flagged = res["rejected_by_reason"]["anomaly"]
    assert flagged >= 400  # most of the 600 poisoned rows
    assert res["input_rows"] == res["output_rows"] + res["rows_rejected"]
    q = _quarantined(ctx)
    reasons = q.column("_reason").to_pylist()
    assert reasons.count("anomaly") == flagged
    m = ctx.lake.require("clean", "events", "2026-11-03")
    assert m.extra["anomaly"]["alert"] is True and m.extra["anomaly"]["history_intervals"]


def test_normal_interval_flags_few_rows(lake_with_history):
    res = clean.run(_ctx("2026-11-02", rerun=1))
    assert res["rejected_by_reason"].get("anomaly", 0) / res["input_rows"] < 0.05


def test_fail_policy_stops_before_anything_is_committed(lake_with_history):
    ctx = _ctx("2026-11-03", anomaly_policy="fail")
    with pytest.raises(AnomalyAlert, match="anomaly rate"):
        clean.run(ctx)
    assert ctx.lake.manifest("clean", "events", "2026-11-03") is None
    assert ctx.lake.manifest("quarantine", "events", "2026-11-03") is None
