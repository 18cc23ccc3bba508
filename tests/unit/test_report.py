from __future__ import annotations

import pyarrow as pa

from tasks.context import StepContext
from tasks.io.lake import Manifest
from tasks.io.parquet import write_table
from tasks.publishing import report


def _commit(ctx: StepContext, stage: str, rows: int, extra: dict, group: str = "") -> None:
    version, vdir = ctx.lake.new_version(stage, ctx.dataset, ctx.ds)
    e = write_table(f"{vdir}/p.parquet", pa.table({"x": list(range(rows))}), f"v={version}/p.parquet", group=group)
    ctx.lake.commit(Manifest(stage, ctx.dataset, ctx.ds, version, [e], extra=extra))


def test_summary_reads_the_lake(lf_home):
    ctx = StepContext(dataset="events", ds="2026-11-01")
    acc = {"rows_in": 10, "rows_clean": 7, "rows_rejected": 3, "rejected_by_reason": {"duplicate_key": 2, "x": 1}}
    _commit(ctx, "clean", 7, {"accounting": acc})
    d = report.collect("events", "2026-11-01")
    text = report.summary_text(d)
    assert "rows in 10 -> clean 7 + rejected 3  (balanced: True)" in text
    assert "duplicate_key" in text
    assert d["stages"]["clean"]["signed"]
    page = report.html_page(d)
    assert "<h2 id='stage-clean'>clean</h2>" in page


def test_unbalanced_accounting_is_shown(lf_home):
    ctx = StepContext(dataset="events", ds="2026-11-02")
    _commit(ctx, "clean", 7, {"accounting": {"rows_in": 10, "rows_clean": 7, "rows_rejected": 2}})
    assert "balanced: False" in report.summary_text(report.collect("events", "2026-11-02"))
