"""Parity with Great Expectations' own engine: the distributed, merged counts equal what GX's pandas
execution engine reports for the same suite on the same rows (standard row-level expectations)."""

from __future__ import annotations

import logging

import great_expectations as gx
import pandas as pd
import pyarrow as pa
import pytest
from distributed import Client

from tasks.validation import engine
from tasks.validation.suites import load_suite
from tests.unit.validate_data import ThreadCluster, clean_table, commit_tables, context, raw_day, raw_dir

PARAMS = {"interval_start": "2026-11-01T00:00:00+00:00", "interval_end": "2026-11-02T00:00:00+00:00"}
COMPARED = {
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_be_unique",
}


@pytest.fixture(scope="module")
def addr():
    with ThreadCluster() as a:
        yield a


def _gx_pandas(df: pd.DataFrame, suite_doc: dict) -> list:
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    ctx = gx.get_context(mode="ephemeral")
    batch = (
        ctx.data_sources.add_pandas("p")
        .add_dataframe_asset("a")
        .add_batch_definition_whole_dataframe("b")
        .get_batch(batch_parameters={"dataframe": df})
    )
    suite = gx.ExpectationSuite(name=suite_doc["name"], expectations=suite_doc["expectations"])
    return batch.validate(suite, expectation_parameters=PARAMS, result_format="SUMMARY").results


def _compare(ours, theirs) -> int:
    key = lambda r: (r.expectation_config.type, r.expectation_config.kwargs["column"])  # noqa: E731
    by = {key(b): b for b in theirs}  # GX orders its results its own way
    assert set(by) == {key(a) for a in ours.results}
    n = 0
    for a in ours.results:
        b = by[key(a)]
        for k in ("element_count", "unexpected_count", "missing_count"):
            assert a.result.get(k) == b.result.get(k), (a.expectation_config, k, a.result.get(k), b.result.get(k))
        assert a.success == b.success, a.expectation_config
        n += 1
    return n


def test_clean_suite_counts_equal_gx_pandas(tmp_path, addr):
    ctx = context(tmp_path, "2026-11-01", addr)
    t1 = clean_table(3_000, 1, "2026-11-01")
    t2 = clean_table(3_000, 1, "2026-11-01", start_id=2_500)  # 500 duplicate keys across files
    # break some rows: out of range, unknown category, nulls in a required column
    price = t2.column("price").to_pylist()
    device = t2.column("device").to_pylist()
    user = t2.column("user_id").to_pylist()
    for i in range(0, 3_000, 97):
        price[i] = -5.0
        device[i] = "watch"
        user[i] = None
    t2 = t2.set_column(t2.schema.get_field_index("price"), "price", pa.array(price))
    t2 = t2.set_column(t2.schema.get_field_index("device"), "device", pa.array(device))
    t2 = t2.set_column(t2.schema.get_field_index("user_id"), "user_id", pa.array(user, pa.string()))
    m = commit_tables(ctx.lake, "clean", "2026-11-01", [(t1, ""), (t2, "")], row_group_rows=700)
    urls = [ctx.lake.abspath(m, f) for f in m.files]
    doc = load_suite("events", "clean")
    doc = {**doc, "expectations": [e for e in doc["expectations"] if e["type"] in COMPARED]}
    with Client(addr) as client:
        ours = engine.validate(client, doc, urls, None, PARAMS).result
    theirs = _gx_pandas(pd.concat([pd.read_parquet(u) for u in urls], ignore_index=True), doc)
    assert _compare(ours, theirs) == len(doc["expectations"]) == 17
    failing = {
        (r.expectation_config.type, r.expectation_config.kwargs["column"]) for r in ours.results if not r.success
    }
    assert failing == {
        ("expect_column_values_to_be_between", "price"),
        ("expect_column_values_to_be_in_set", "device"),
        ("expect_column_values_to_not_be_null", "user_id"),
        ("expect_column_values_to_be_unique", "event_id"),
    }


def test_raw_suite_counts_equal_gx_pandas(tmp_path, addr):
    raw_day(tmp_path, rows=12_000, row_group_rows=2_000)
    urls = [str(p) for p in sorted(raw_dir(tmp_path).glob("*.parquet"))]
    doc = load_suite("events", "raw")
    # raw in_set rules normalize (trim/case) first, which GX's engine does not: compare the rest
    doc = {
        **doc,
        "expectations": [
            e for e in doc["expectations"] if e["type"] in COMPARED - {"expect_column_values_to_be_in_set"}
        ],
    }
    with Client(addr) as client:
        ours = engine.validate(client, doc, urls, None, PARAMS).result
    theirs = _gx_pandas(pd.concat([pd.read_parquet(u) for u in urls], ignore_index=True), doc)
    assert _compare(ours, theirs) == len(doc["expectations"]) >= 10
    assert any(r.result["unexpected_count"] for r in ours.results)  # datagen's faults are counted
