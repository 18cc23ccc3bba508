from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import quote

import pyarrow as pa
import pytest

from tasks.context import StepContext
from tasks.io.lake import Manifest
from tasks.io.parquet import write_table
from tasks.publishing import report
from tests.lake_files import committed_file


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


# ---- what the pages render is escaped; bad URL parts are refused before they touch the lake -----------

HOSTILE = "<img src=x onerror=alert(document.domain)>"


class _Tags(HTMLParser):
    """Every start tag and attribute of a page, as a browser's parser sees them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _assert_inert(page: str) -> None:
    tags = _Tags(page).tags
    assert not [t for t, _ in tags if t in ("script", "svg", "iframe", "object", "embed")]
    assert not [(t, a) for t, attrs in tags for a in attrs if a.startswith("on")]
    assert not [t for t, attrs in tags if t == "img" and not (attrs.get("src") or "").startswith("data:image/png")]
    assert not [v for _, attrs in tags for v in attrs.values() if v and v.strip().lower().startswith("javascript:")]


def test_index_page_escapes_hostile_names():
    page = report.index_page([(HOSTILE, "<script>alert(1)</script>"), ("events", "2026-11-01")])
    _assert_inert(page)
    assert "&lt;img src=x onerror=alert(document.domain)&gt;" in page
    assert "href='report/events/2026-11-01'" in page
    # the hostile name's link is percent-encoded: it cannot leave its attribute
    assert "href='report/%3Cimg%20src%3Dx%20onerror%3Dalert%28document.domain%29%3E/" in page


def test_report_page_escapes_what_the_lake_and_history_hold():
    facts = {
        "dataset": HOSTILE, "ds": "<svg onload=alert(1)>", "lake": HOSTILE, "artifacts": "<b onclick=x>",
        "raw_files": 1,
        "stages": {
            "clean": {"rows": 3, "files": 1, "bytes": 10, "version": "<script>alert(2)</script>", "signed": True,
                      "groups": {HOSTILE: 3}, "extra": {"accounting": {"rows_in": 3, "rows_clean": 3,
                                                                      "rows_rejected": 0,
                                                                      "rejected_by_reason": {HOSTILE: 0}}},
                      "file_paths": {"<x onmouseover=alert(3)>.html": "/nowhere"}},
            "validation": {"rows": 0, "files": 1, "bytes": 5, "version": "v", "signed": True, "groups": {},
                           "extra": {"suites": {"raw": {"success": False, "failing": [
                               {"expectation": HOSTILE, "column": HOSTILE, "unexpected_count": 1}]}}},
                           "file_paths": {f"{HOSTILE}/index.html": "/nowhere"}},
        },
        "history": [{"stage": HOSTILE, "workers": "<i onclick=1>", "threads": 1, "predicted_wall_s": HOSTILE,
                     "wall_s": 1.0}],
        "published": {"artifact_url": HOSTILE, "manifest_sha256": "<script>"},
    }
    page = report.html_page(facts, docs_href=lambda stage, path: f"../../datadocs/x/y/{quote(path)}")
    _assert_inert(page)
    assert "&lt;img src=x onerror=alert(document.domain)&gt;" in page
    assert "href='../../datadocs/x/y/%3Cimg%20src%3Dx%20onerror%3Dalert%28document.domain%29%3E/index.html'" in page


@pytest.mark.parametrize("dataset, ds, error", [
    ("events", "2026-13-45", report.MalformedRequest),
    ("events", "yesterday", report.MalformedRequest),
    ("events", "../../keys", report.MalformedRequest),
    ("events", "2026-11-01/../..", report.MalformedRequest),
    ("events", "", report.MalformedRequest),
    ("Events", "2026-11-01", report.NotInLake),
    (HOSTILE, "2026-11-01", report.NotInLake),
    ("..", "2026-11-01", report.NotInLake),
    ("e" * 65, "2026-11-01", report.NotInLake),
])
def test_bad_url_parts_are_refused(lf_home, dataset, ds, error):
    with pytest.raises(error):
        report.check_request(dataset, ds)
    with pytest.raises(error):
        report.collect(dataset, ds)


def test_url_intervals_follow_the_steps_grammar():
    """The page accepts exactly the interval names a step accepts (an ISO date or hour), nothing that 500s later."""
    for ds in ("2026-11-01", "2026-11-01T05"):
        report.check_request("events", ds)
    for ds in ("2026-11-01T05:00:00", "20261101", "2026-02-30"):
        with pytest.raises(report.MalformedRequest, match="is not an ISO date"):
            report.check_request("events", ds)


def test_index_lists_only_dataset_intervals(lf_home):
    ctx = StepContext(dataset="events", ds="2026-11-03")
    _commit(ctx, "clean", 2, {})
    clean = lf_home / "lake" / "clean"
    (clean / HOSTILE / "ds=2026-11-01").mkdir(parents=True)
    (clean / "events" / f"ds={HOSTILE}").mkdir(parents=True)
    assert report.committed_intervals(str(lf_home / "lake")) == [("events", "2026-11-03")]


# ---- Data Docs files: only what the signed validation manifest lists -----------------------------------

def _data_docs(ctx: StepContext) -> None:
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    from tasks.validation import datadocs

    cfg = ExpectationConfiguration(type="expect_column_values_to_not_be_null", kwargs={"column": "user_id"})
    res = ExpectationValidationResult(success=False, expectation_config=cfg, result={
        "element_count": 3, "unexpected_count": 1, "partial_unexpected_list": ["secret-user-1"]})
    stats = {"evaluated_expectations": 1, "successful_expectations": 0, "unsuccessful_expectations": 1,
             "success_percent": 0.0}
    result = ExpectationSuiteValidationResult(success=False, results=[res], suite_name="events.raw", statistics=stats)
    datadocs.publish(ctx.lake, ctx.dataset, ctx.ds, "raw", result, {"suite": "events.raw"}, "fp", {},
                     gx_page=False, pii_columns=["user_id", "email"])


def test_docs_file_serves_committed_data_docs_only(lf_home):
    from tasks.errors import IntegrityError

    ds = "2026-11-04"
    ctx = StepContext(dataset="events", ds=ds)
    _commit(ctx, "clean", 3, {})
    _data_docs(ctx)
    page, media = report.docs_file("events", ds, "raw/index.html")
    assert media == "text/html" and b"[masked: pii]" in page and b"secret-user-1" not in page
    assert report.docs_file("events", ds, "raw/result.json")[1] == "application/json"
    clean = ctx.lake.manifest("clean", "events", ds)
    keyring = lf_home / "keys" / "keyring.json"
    refused = {
        "raw/../../../../keys/keyring.json": report.MalformedRequest,
        "/etc/passwd": report.MalformedRequest,
        str(keyring): report.MalformedRequest,
        "raw//index.html": report.MalformedRequest,
        "raw\\..\\index.html": report.MalformedRequest,
        "_manifest.json": report.NotInLake,  # not a listed file
        "raw/missing.html": report.NotInLake,
        f"../../clean/events/ds={ds}/{clean.files[0].path}": report.MalformedRequest,
        clean.files[0].path: report.NotInLake,  # a data file's name: not in the validation manifest
    }
    for path, error in refused.items():
        with pytest.raises(error):
            report.docs_file("events", ds, path)
    # a page changed after it was committed is not served
    target = committed_file(lf_home / "lake", "validation", "events", ds, "raw/index.html")
    target.write_bytes(target.read_bytes().replace(b"</h1>", b"<script>alert(1)</script></h1>"))
    with pytest.raises(IntegrityError, match="index.html"):
        report.docs_file("events", ds, "raw/index.html")


def test_docs_location_maps_lake_paths_of_the_docs_zone_only(lf_home):
    lake = str(lf_home / "lake")
    assert report.docs_location(lake, f"{lake}/validation/events/ds=2026-11-01/raw/index.html") == (
        "events", "2026-11-01", "raw/index.html")
    for path in (f"{lake}/clean/events/ds=2026-11-01/v=1/p.parquet", str(lf_home / "keys" / "keyring.json"),
                 "/etc/passwd", f"{lake}/validation/events/raw/index.html", "", f"{lake}/validation"):
        with pytest.raises(report.NotInLake):
            report.docs_location(lake, path)
    # a traversal that starts inside the zone is refused too
    for path in (f"{lake}/validation/events/ds=2026-11-01/../../../../keys/keyring.json",
                 f"{lake}/validation/events/ds=2026-11-01/raw/../../../../../etc/passwd",
                 f"{lake}/validation/events/ds=../../keys/raw/index.html"):
        with pytest.raises(report.MalformedRequest):
            report.docs_location(lake, path)


def test_docs_stage_is_the_data_docs_stage():
    from tasks.validation import datadocs

    assert report.DOCS_STAGE == datadocs.STAGE
