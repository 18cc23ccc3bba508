"""OpenLineage facets (plugins/leptonflow_airflow/lineage.py) from a real lake's manifests and the spec,
through the provider's own extractor; the whole-run events are checked in tests/e2e/test_openlineage.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

pytest.importorskip("airflow.providers.openlineage")

from airflow.providers.openlineage.extractors.base import DefaultExtractor  # noqa: E402
from leptonflow_airflow import lineage  # noqa: E402
from leptonflow_airflow.operators import LeptonflowStepOperator, ValidateOperator  # noqa: E402
from openlineage.client.serde import Serde  # noqa: E402

from tasks.context import StepContext  # noqa: E402
from tasks.io.lake import Manifest  # noqa: E402
from tasks.prep import datagen  # noqa: E402
from tasks.spec import spec_for  # noqa: E402

DS = "2026-11-03"


def test_names_follow_the_openlineage_convention():
    path = "/data/lake/clean/events/ds=2026-11-03"
    assert lineage.location(path) == ("file", path)
    assert lineage.location("file:///data/lake/") == ("file", "/data/lake")
    assert lineage.location("s3://bucket/prefix/raw/events/ds=2026-11-03") == \
        ("s3://bucket", "prefix/raw/events/ds=2026-11-03")


def test_column_lineage_follows_the_spec():
    spec = spec_for("events")
    facet = lineage.clean_column_lineage(spec, ("file", "/lake/raw/events/ds=x"), spec.column_names)
    assert set(facet.fields) == set(spec.column_names)
    assert facet.fields["email"].transformationType == "TRANSFORMATION"
    assert "normalize lower" in facet.fields["email"].transformationDescription
    assert "clip to [1, 20]" in facet.fields["quantity"].transformationDescription
    assert "'__unknown__'" in facet.fields["country"].transformationDescription
    assert facet.fields["event_id"].transformationType == "IDENTITY"
    assert facet.fields["price"].inputFields[0].field == "price"
    indirect = {(f.field, f.transformations[0].subtype) for f in facet.dataset}
    assert {("event_ts", "FILTER"), ("event_id", "FILTER"), ("user_id", "CONDITIONAL")} <= indirect
    assert ("price", "FILTER") in indirect  # out of range price is rejected, not clipped


def _gx_doc() -> dict:
    def r(kind, success, result, **kwargs):
        return {"success": success, "expectation_config": {"type": kind, "kwargs": kwargs}, "result": result}

    return {"success": False, "suite_name": "events.raw", "statistics": {"evaluated_expectations": 3},
            "meta": {"leptonflow": {"rows_validated": 200, "files": 1}},
            "results": [r("expect_table_row_count_to_be_between", True, {"observed_value": 200}, min_value=1),
                        r("expect_column_values_to_not_be_null", True, {"element_count": 200, "unexpected_count": 2},
                          column="event_id", mostly=0.95),
                        r("expect_column_values_to_be_between", False, {"element_count": 200, "unexpected_count": 40},
                          column="price", min_value=0.0, max_value=10000.0)]}


def test_quality_facets_carry_every_expectation():
    facets = lineage.quality_facets(_gx_doc())
    assertions = facets["dataQualityAssertions"].assertions
    assert [(a.assertion, a.column, a.success) for a in assertions] == [
        ("expect_table_row_count_to_be_between", None, True),
        ("expect_column_values_to_not_be_null", "event_id", True),
        ("expect_column_values_to_be_between", "price", False)]
    assert assertions[2].actual == "40" and json.loads(assertions[2].expected)["max_value"] == 10000.0
    metrics = facets["dataQualityMetrics"]
    assert metrics.rowCount == 200 and metrics.columnMetrics["event_id"].nullCount == 2


@pytest.fixture
def lake_ctx(lf_home):
    """A real lake: one raw interval (datagen), committed clean + quarantine + validation manifests."""
    ctx = StepContext(dataset="events", ds=DS)
    datagen.generate(ctx.lake_url, ctx.spec, DS, 1, 200, seed=3, files_per_day=2)
    lake = ctx.lake
    for stage, rows, group in (("clean", 180, "train"), ("quarantine", 20, "")):
        version, vdir = lake.new_version(stage, "events", DS)
        entry = lake.put_bytes(vdir, version, "part-00000.parquet", b"x" * 100, group=group)
        entry.rows = rows
        extra = {"schema": ctx.spec.column_names} if stage == "clean" else {}
        lake.commit(Manifest(stage, "events", DS, version, files=[entry], extra=extra))
    version, vdir = lake.new_version("validation", "events", DS)
    lake.fs.makedirs(f"{vdir}/raw", exist_ok=True)
    entry = lake.put_bytes(vdir, version, "raw/result.json", json.dumps(_gx_doc()).encode())
    lake.commit(Manifest("validation", "events", DS, version, files=[entry]))
    return ctx


def _operator(cls, step, ctx, result):
    op = cls(task_id=step, step=step, dataset="events")
    op._lf_ctx, op._lf_result = ctx, result
    return op


def test_clean_task_lineage_through_the_providers_extractor(lake_ctx):
    result = {"ds": DS, "cache_hit": False, "input_rows": 200, "bytes_read": 5000, "workers": 2, "wall_s": 1.5,
              "rows_rejected": 20, "rejected_by_reason": {"duplicate_key": 12, "out_of_range:price": 8}}
    op = _operator(LeptonflowStepOperator, "clean", lake_ctx, result)
    start = DefaultExtractor(op).extract()
    assert start.inputs == [] and start.run_facets["leptonflow"].step == "clean"
    got = DefaultExtractor(op).extract_on_complete(None)
    (raw,) = got.inputs
    lake = lake_ctx.lake
    assert (raw.namespace, raw.name) == ("file", lake.interval_dir("raw", "events", DS))
    assert raw.inputFacets["inputStatistics"].rowCount == 200 and raw.inputFacets["inputStatistics"].fileCount == 2
    assert [f.name for f in raw.facets["schema"].fields] == lake_ctx.spec.column_names
    clean, quarantine = got.outputs
    assert clean.name.endswith(f"/clean/events/ds={DS}") and quarantine.name.endswith(f"/quarantine/events/ds={DS}")
    assert clean.outputFacets["outputStatistics"].rowCount == 180
    assert clean.facets["version"].datasetVersion == lake.require("clean", "events", DS).version
    assert clean.facets["columnLineage"].fields["email"].inputFields[0].name == raw.name
    assert clean.facets["symlinks"].identifiers[0].name == lake.dataset_dir("clean", "events")
    assert "_reason" in [f.name for f in quarantine.facets["schema"].fields]
    run = got.run_facets["leptonflow"]
    assert (run.ds, run.cacheHit, run.wallSeconds) == (DS, False, 1.5)
    assert run.metrics == {"input_rows": 200, "bytes_read": 5000, "workers": 2}
    assert run.summary["rejected_by_reason.out_of_range:price"] == 8
    event = json.loads(Serde.to_json(got.outputs[0]))  # what the transport sends
    assert event["facets"]["columnLineage"]["fields"]["quantity"]["transformationType"] == "TRANSFORMATION"


def test_failed_validation_reports_its_assertions_but_not_stale_outputs(lake_ctx):
    op = _operator(ValidateOperator, "validate_raw", lake_ctx, None)

    class TI:  # what the provider hands the failure hook: the task instance, started after the commits above
        start_date = None

    failed = DefaultExtractor(op).extract_on_failure(TI())
    (raw,) = failed.inputs
    assertions = raw.inputFacets["dataQualityAssertions"].assertions
    assert [a.success for a in assertions] == [True, True, False]
    assert [o.name.rsplit("/", 3)[-3] for o in failed.outputs] == ["validation"]  # committed: the Data Docs
    TI.start_date = datetime.now(UTC) + timedelta(seconds=5)  # the manifests above are older than this start
    assert DefaultExtractor(op).extract_on_failure(TI()).outputs == []


def test_without_a_context_only_the_step_is_named():
    op = LeptonflowStepOperator(task_id="secure", step="secure", dataset="events")
    got = DefaultExtractor(op).extract_on_complete(None)
    assert got.inputs == [] and got.outputs == [] and got.run_facets["leptonflow"].step == "secure"
