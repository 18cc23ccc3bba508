"""The trend view (tasks/publishing/trends.py): per-interval series from signed manifests and the run
history, never from data files; a table with red cells where a check failed, links, escaped text."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest

from tasks.context import StepContext
from tasks.io.lake import FileEntry, Manifest
from tasks.publishing import trends
from tasks.resources import history
from tasks.resources.step_metrics import StepMetrics

START = date(2026, 11, 1)
BAD = "2026-11-06"  # clean validation failed, drift over its threshold
SLOW = "2026-11-09"  # clean took longer than its forecast's upper bound


def _entry(path: str, rows: int, size: int, group: str = "") -> FileEntry:
    # files that do not exist: the trend reads manifests only, never a data file
    return FileEntry(path=path, rows=rows, bytes=size, sha256="0" * 64, group=group)


def _commit(ctx: StepContext, stage: str, ds: str, files: list[FileEntry], extra: dict) -> None:
    version, _ = ctx.lake.new_version(stage, ctx.dataset, ds)
    files = [FileEntry(**{**f.__dict__, "path": f"v={version}/{f.path}"}) for f in files]
    ctx.lake.commit(Manifest(stage, ctx.dataset, ds, version, files=files, extra=extra))


def _interval(ctx: StepContext, i: int) -> str:
    ds = (START + timedelta(days=i)).isoformat()
    rows_in, rejected = 1000 + 10 * i, 20 + i
    bad = ds == BAD
    reasons = {"duplicate_key": rejected - 5, "out_of_range:price": 5}
    _commit(ctx, "clean", ds, [_entry("train/part-0.parquet", rows_in - rejected, 50_000 + i)],
            {"accounting": {"rows_in": rows_in, "rows_clean": rows_in - rejected, "rows_rejected": rejected,
                            "rejected_by_reason": reasons, "bytes_shuffled": 70_000}})
    _commit(ctx, "quarantine", ds, [_entry("rejects.parquet", rejected, 4_000)], {})
    drift = {"columns": {"price": {"psi": 0.4 if bad else 0.01 * i}, "device": {"category_share_delta": 0.01}},
             "failing": ["price"] if bad else []}
    failing = [{"expectation": "expect_column_psi_to_be_below", "column": "price"}] if bad else []
    _commit(ctx, "validation", ds, [], {"suites": {"raw": {"success": True, "failing": []},
                                                   "clean": {"success": not bad, "failing": failing,
                                                             "drift": drift}}})
    _commit(ctx, "secure", ds, [], {"anomaly": {"rate": 0.01, "max_rate": 0.05, "alert": False}})
    _commit(ctx, "compressed", ds, [_entry("model.onnx", 0, 3_500)],
            {"summary": {"metric_name": "auc", "test_metric": 0.70 + 0.001 * i, "size_ratio": 4.0,
                         "compressed": True, "chosen": {"size_bytes": 3_500}}})
    return ds


@pytest.fixture
def lake_ctx(lf_home):
    ctx = StepContext(dataset="events", ds=START.isoformat())
    dss = [_interval(ctx, i) for i in range(12)]
    plan = {"workers": 1, "threads_per_worker": 1, "memory_limit": 2**30, "source": "heuristic",
            "predicted": {"wall_s": 5.0, "wall_s_upper": 7.5}}
    for ds in dss:
        run = StepContext(dataset="events", ds=ds, history_url=ctx.history_url, upstream={"plan_clean": plan})
        history.record_step(run, "clean", StepMetrics(input_bytes=100_000, input_rows=1000), wall_s=30.0 if ds == SLOW
                            else 4.0, cpu_s=1.0, success=True)
        history.record_step(run, "train", StepMetrics(input_rows=800), wall_s=12.0, cpu_s=10.0, success=True)
    return ctx


def test_collect_reads_each_interval_from_manifests_and_history(lake_ctx):
    d = trends.collect("events", n=10)
    items = d["intervals"]
    assert [t.ds for t in items] == [(START + timedelta(days=i)).isoformat() for i in range(2, 12)]  # the last 10
    t = items[0]
    assert (t.rows_in, t.rows_rejected, t.rejected_by_reason["out_of_range:price"]) == (1020, 22, 5)
    assert t.reject_rate == pytest.approx(22 / 1020)
    assert t.test_metric == pytest.approx(0.702) and t.metric_name == "auc" and t.compressed_bytes == 3_500
    assert t.bytes_by_stage["clean"] == 50_002 and t.bytes_shuffled == 70_000
    assert t.anomaly_rate == 0.01 and t.wall_s == {"clean": 4.0, "train": 12.0}
    bad = next(t for t in items if t.ds == BAD)
    assert bad.clean_ok is False and bad.drift_psi_max == 0.4 and bad.drift_failing == ["price"]
    assert set(bad.flags(d["thresholds"]["psi_max"])) == {"clean", "drift"}
    assert d["thresholds"] == {"psi_max": 0.25, "anomaly_max_rate": 0.05}
    slow = next(t for t in items if t.ds == SLOW)
    assert set(slow.flags(0.25)) == {"forecast"} and slow.forecast_error == pytest.approx(5 / 30 - 1)
    assert t.predicted_wall_s == 5.0 and t.forecast_error == pytest.approx(0.25)
    assert all(not t.flags(0.25) for t in items if t.ds not in (BAD, SLOW))


def test_page_marks_failures_red_links_each_interval_and_formats_units(lake_ctx):
    d = trends.collect("events", n=12)
    page = trends.html_page(d, interval_href=lambda ds: f"../report/events/{ds}")
    rows = re.findall(r"<tr class='(bad|ok)'><td class='ds'><a href='([^']+)'>([^<]+)</a>", page)
    assert len(rows) == 12
    assert rows[0][2] == "2026-11-12"  # newest first
    bad_rows = {ds for cls, _, ds in rows if cls == "bad"}
    assert bad_rows == {BAD, SLOW}
    assert ("ok", "../report/events/2026-11-01", "2026-11-01") in rows
    bad_row = page.split(f">{BAD}</a>")[1].split("</tr>")[0]
    assert "<td class='bad' title='clean validation failed (1 failing)'>FAIL</td>" in bad_row
    assert "drift over threshold: price" in bad_row
    assert "<td class='bad' title='clean took longer than the forecast&#x27;s upper bound'>-83%</td>" in page
    assert "1,020" in page and "2.16%" in page and "3.4 KB (4.0x)" in page and "4.0 s" in page
    assert page.count("src='data:image/png;base64,") == 8
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing from a CDN


def test_text_from_the_lake_is_escaped(lake_ctx):
    d = trends.collect("events", n=3)
    d["intervals"][-1].rejected_by_reason = {"<script>alert(1)</script>": 99}
    d["intervals"][-1].drift_failing = ["<b>x</b>"]
    page = trends.html_page(d, with_plots=False)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; (99)" in page
    assert "<b>x</b>" not in page


def test_empty_lake_renders_a_page():
    d = {"dataset": "events", "n": 30, "intervals": [], "thresholds": {}}
    assert "no committed interval" in trends.html_page(d)
    assert trends.fmt_bytes(3 * 2**30) == "3.0 GB" and trends.fmt_seconds(600) == "10.0 min"
