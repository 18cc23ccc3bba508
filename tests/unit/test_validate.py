"""validate_raw: every row counted on a real Dask cluster, merged into one GX result; bad inputs; policies."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult

from tasks.validation import engine
from tasks.validation.validate import QUARANTINE_STAGE, ValidationFailed, read_quarantine, run_raw
from tests.lake_files import committed_file, doc_paths
from tests.unit.validate_data import SPEC, ThreadCluster, context, raw_day, raw_dir

DS = "2026-11-01"


@pytest.fixture(scope="module")
def addr():
    with ThreadCluster() as a:
        yield a


def _by_type(result: dict, kind: str, column: str | None = None) -> list[dict]:
    return [f for f in result["failing"] if f["expectation"] == kind and (column is None or f["column"] == column)]


def _gx_result(tmp_path, ds=DS) -> dict:
    return json.loads(committed_file(tmp_path / "lake", "validation", "events", ds, "raw/result.json").read_text())


def test_merged_counts_equal_duckdb_recount(tmp_path, addr, monkeypatch):
    # small row groups + small chunks: each file is split into several chunks whose partials are merged
    raw_day(tmp_path, rows=40_000, row_group_rows=3_000)
    monkeypatch.setattr(engine, "CHUNK_ROWS", 3_000)
    res = run_raw(context(tmp_path, DS, addr, validation_policy="warn"))
    assert res["rows_validated"] == 40_000 and res["chunks"] == 16
    gx = _gx_result(tmp_path)
    glob = str(raw_dir(tmp_path) / "*.parquet")
    con = duckdb.connect()
    q = lambda sql: con.execute(sql.replace("FROM T", f"FROM read_parquet('{glob}')")).fetchone()[0]  # noqa: E731
    seen = set()
    for r in gx["results"]:
        cfg, out = r["expectation_config"], r["result"]
        col = cfg["kwargs"].get("column")
        if cfg["type"] == "expect_column_values_to_not_be_null":
            assert out["unexpected_count"] == q(f"SELECT count(*) - count({col}) FROM T"), col
            assert out["element_count"] == 40_000
        elif cfg["type"] == "expect_column_values_to_be_between" and col == "price":
            assert out["unexpected_count"] == q("SELECT count(*) FROM T WHERE price < 0 OR price > 10000")
            assert out["missing_count"] == q("SELECT count(*) - count(price) FROM T")
            d = out["details"]
            assert (d["observed_min"], d["observed_max"]) == (
                q("SELECT min(price) FROM T"),
                q("SELECT max(price) FROM T"),
            )
            assert d["observed_mean"] == pytest.approx(q("SELECT avg(price) FROM T"), rel=1e-9)
        elif cfg["type"] == "expect_column_values_to_be_between" and col == "event_ts":
            want = q(
                "SELECT count(*) FROM T WHERE event_ts < TIMESTAMPTZ '2026-11-01 00:00:00+00' "
                "OR event_ts >= TIMESTAMPTZ '2026-11-02 00:00:00+00'"
            )
            assert out["unexpected_count"] == want > 0
        elif cfg["type"] == "expect_column_values_to_be_in_set":
            values = ",".join(f"'{v}'" for v in cfg["kwargs"]["value_set"])
            want = q(f"SELECT count(*) FROM T WHERE {col} IS NOT NULL AND lower(trim({col})) NOT IN ({values})")
            assert out["unexpected_count"] == want > 0
            assert len(out["partial_unexpected_list"]) == min(want, 20)
        else:
            continue
        seen.add(cfg["type"])
        assert out["unexpected_percent_total"] == pytest.approx(100 * out["unexpected_count"] / 40_000)
    assert len(seen) == 3  # not_null, between, in_set all recounted
    assert res["success"] is True  # datagen's fault rates stay under the raw suite's mostly=0.95


def test_result_is_a_real_gx_object(tmp_path, addr):
    from distributed import Client

    from tasks.validation.suites import load_suite

    raw_day(tmp_path, rows=5_000)
    urls = [str(p) for p in sorted(raw_dir(tmp_path).glob("*.parquet"))]
    params = {"interval_start": "2026-11-01T00:00:00+00:00", "interval_end": "2026-11-02T00:00:00+00:00"}
    with Client(addr) as client:
        out = engine.validate(client, load_suite("events", "raw"), urls, None, params)
    gx = out.result
    assert isinstance(gx, ExpectationSuiteValidationResult) and gx.success is True
    assert all(isinstance(r, ExpectationValidationResult) for r in gx.results)
    assert (
        len(gx.results) == gx.statistics["evaluated_expectations"] == len(load_suite("events", "raw")["expectations"])
    )
    nn = next(r for r in gx.results if r.expectation_config.type == "expect_column_values_to_not_be_null")
    assert nn.result["element_count"] == 5_000 and "unexpected_percent" in nn.result
    # suite parameters were filled into the evaluated configuration
    ts = next(
        r
        for r in gx.results
        if r.expectation_config.kwargs.get("column") == "event_ts"
        and r.expectation_config.type == "expect_column_values_to_be_between"
    )
    assert ts.expectation_config.kwargs["min_value"] == params["interval_start"]
    # GX's own (de)serialization and rendering accept it
    doc = gx.to_json_dict()
    assert doc["suite_name"] == "events.raw" and doc["meta"]["leptonflow"]["rows_validated"] == 5_000
    from tasks.validation.datadocs import render_gx_html

    assert "expect_column_values_to_not_be_null" in render_gx_html(gx) or "not be null" in render_gx_html(gx)


def test_data_docs_committed(tmp_path, addr):
    raw_day(tmp_path, rows=5_000)
    ctx = context(tmp_path, DS, addr, gx_data_docs=True)
    res = run_raw(ctx)
    m = ctx.lake.require("validation", "events", DS)  # signed manifest, verified on read
    assert doc_paths({f.path for f in m.files}) >= {"raw/index.html", "raw/result.json", "raw/gx.html"}
    assert all(f.path.startswith(f"v={m.version}/raw/") for f in m.files)  # pages in the run's own version
    html = committed_file(tmp_path / "lake", "validation", "events", DS, "raw/index.html").read_text()
    assert "PASSED" in html and "expect_column_values_to_not_be_null" in html and "<script" not in html
    assert res["data_docs"].endswith(f"validation/events/ds=2026-11-01/v={m.version}/raw/index.html")
    assert _gx_result(tmp_path)["statistics"]["evaluated_expectations"] == res["evaluated_expectations"]


def _rewrite(tmp_path, fn) -> None:
    files = sorted(raw_dir(tmp_path).glob("*.parquet"))
    t = pq.read_table(files[1])
    pq.write_table(fn(t), files[1])


def test_schema_drift_column_renamed(tmp_path, addr):
    raw_day(tmp_path, rows=4_000)
    _rewrite(tmp_path, lambda t: t.rename_columns(["price_usd" if c == "price" else c for c in t.column_names]))
    with pytest.raises(ValidationFailed) as ei:
        run_raw(context(tmp_path, DS, addr))
    msg, res = str(ei.value), ei.value.result
    assert "missing ['price']" in msg and "unexpected ['price_usd']" in msg and "part-00001.parquet" in msg
    assert _by_type(res, "expect_table_columns_to_match_set")
    assert "column 'price' not found in" in json.dumps(res["failing"])


def test_schema_drift_column_added(tmp_path, addr):
    raw_day(tmp_path, rows=4_000)
    _rewrite(tmp_path, lambda t: t.append_column("coupon", pa.array(["x"] * t.num_rows)))
    with pytest.raises(ValidationFailed, match=r"unexpected \['coupon'\].*part-00001") as ei:
        run_raw(context(tmp_path, DS, addr))
    # only the exact-set rule fails: required columns are all still there
    assert [f["expectation"] for f in ei.value.result["failing"]] == ["expect_table_columns_to_match_set"]


def test_schema_drift_column_removed(tmp_path, addr):
    raw_day(tmp_path, rows=4_000)
    _rewrite(tmp_path, lambda t: t.drop_columns(["device"]))
    with pytest.raises(ValidationFailed, match=r"missing \['device'\]") as ei:
        run_raw(context(tmp_path, DS, addr))
    assert _by_type(ei.value.result, "expect_column_values_to_be_in_type_list", "device")


def test_schema_drift_type_changed(tmp_path, addr):
    raw_day(tmp_path, rows=4_000)
    _rewrite(
        tmp_path,
        lambda t: t.set_column(
            t.schema.get_field_index("quantity"), "quantity", pc.cast(t.column("quantity"), pa.string())
        ),
    )
    with pytest.raises(ValidationFailed) as ei:
        run_raw(context(tmp_path, DS, addr))
    f = _by_type(ei.value.result, "expect_column_values_to_be_in_type_list", "quantity")
    assert f and "type string (expected int8" in f[0]["error"] and "part-00001.parquet" in f[0]["error"]


def test_null_flood(tmp_path, addr):
    raw_day(tmp_path, rows=8_000)
    files = sorted(raw_dir(tmp_path).glob("*.parquet"))
    t = pq.read_table(files[0])
    pq.write_table(
        t.set_column(t.schema.get_field_index("user_id"), "user_id", pa.nulls(t.num_rows, pa.string())), files[0]
    )
    with pytest.raises(ValidationFailed, match=r"expect_column_values_to_not_be_null on column 'user_id'") as ei:
        run_raw(context(tmp_path, DS, addr))
    f = _by_type(ei.value.result, "expect_column_values_to_not_be_null", "user_id")[0]
    assert f["element_count"] == 8_000
    assert f["unexpected_count"] == pq.read_table(files[0]).num_rows + sum(
        pq.read_table(p).column("user_id").null_count for p in files[1:]
    )
    # nothing else fails: the error is specific
    assert len(ei.value.result["failing"]) == 1


def test_unseen_category(tmp_path, addr):
    raw_day(tmp_path, rows=8_000, seed=9)
    files = sorted(raw_dir(tmp_path).glob("*.parquet"))
    t = pq.read_table(files[2])
    i = t.schema.get_field_index("event_type")
    pq.write_table(t.set_column(i, "event_type", pa.array(["wishlist"] * t.num_rows)), files[2])
    with pytest.raises(ValidationFailed, match="expect_column_values_to_be_in_set on column 'event_type'") as ei:
        run_raw(context(tmp_path, DS, addr))
    f = _by_type(ei.value.result, "expect_column_values_to_be_in_set", "event_type")[0]
    assert f["unexpected_count"] >= t.num_rows
    gx = _gx_result(tmp_path)
    r = next(r for r in gx["results"] if r["expectation_config"]["type"] == "expect_column_values_to_be_in_set")
    assert "wishlist" in r["result"]["partial_unexpected_list"]


def test_zero_rows(tmp_path, addr):
    raw_day(tmp_path, rows=4_000)
    for f in raw_dir(tmp_path).glob("*.parquet"):
        t = pq.read_table(f)
        pq.write_table(t.slice(0, 0), f)
    with pytest.raises(ValidationFailed, match=r"expect_table_row_count_to_be_between: observed 0") as ei:
        run_raw(context(tmp_path, DS, addr))
    assert [f["expectation"] for f in ei.value.result["failing"]] == ["expect_table_row_count_to_be_between"]


def test_no_raw_files_is_zero_rows(tmp_path, addr):
    with pytest.raises(ValidationFailed, match="expect_table_row_count_to_be_between"):
        run_raw(context(tmp_path, DS, addr))


def test_warn_policy_returns_failure_and_docs(tmp_path, addr):
    raw_day(tmp_path, rows=4_000, faults=_heavy_price_faults())
    res = run_raw(context(tmp_path, DS, addr, validation_policy="warn"))
    assert res["success"] is False and _by_type(res, "expect_column_values_to_be_between", "price")
    html = committed_file(tmp_path / "lake", "validation", "events", DS, "raw/index.html").read_text()
    assert "FAILED" in html


def _heavy_price_faults():
    from tasks.prep.datagen import FaultRates

    return FaultRates(out_of_range=0.2)


def test_quarantine_policy_moves_offending_rows(tmp_path, addr):
    raw_day(tmp_path, rows=6_000, faults=_heavy_price_faults())
    ctx = context(tmp_path, DS, addr, validation_policy="quarantine")
    res = run_raw(ctx)
    f = _by_type(res, "expect_column_values_to_be_between", "price")[0]
    assert res["success"] is False and res["quarantine"]["rows"] == f["unexpected_count"] > 0
    m = ctx.lake.require(QUARANTINE_STAGE, "events", DS)  # signed, committed
    q = pa.concat_tables([pq.read_table(u) for u in read_quarantine(ctx)])
    assert m.rows == q.num_rows == f["unexpected_count"]
    assert set(q.column("_reason").to_pylist()) == {"validation:expect_column_values_to_be_between"}
    prices = pc.cast(q.column("price"), pa.float64())
    assert pc.all(pc.or_(pc.less(prices, 0), pc.greater(prices, 10_000))).as_py()
    # source file + row point back at the very raw row
    row = q.slice(0, 1).to_pylist()[0]
    src = pq.read_table(row["_source_file"]).slice(row["_source_row"], 1).to_pylist()[0]
    assert src["event_id"] == row["event_id"] and str(src["price"]) == row["price"]
    # a re-run on repaired data replaces the quarantine with an empty one: nothing stale is left
    raw_day(tmp_path, rows=6_000)
    assert run_raw(ctx)["quarantine"]["rows"] == 0
    assert ctx.lake.require(QUARANTINE_STAGE, "events", DS).rows == 0


def test_quarantine_policy_still_raises_on_schema_failure(tmp_path, addr):
    raw_day(tmp_path, rows=4_000)
    _rewrite(tmp_path, lambda t: t.drop_columns(["price"]))
    with pytest.raises(ValidationFailed, match="missing"):
        run_raw(context(tmp_path, DS, addr, validation_policy="quarantine"))


def test_bad_policy_and_cache_hit(tmp_path, addr):
    raw_day(tmp_path, rows=3_000)
    with pytest.raises(ValueError, match="setting validation_policy: must be one of fail, warn, quarantine"):
        run_raw(context(tmp_path, DS, addr, validation_policy="strict"))
    first = run_raw(context(tmp_path, DS, addr))
    again = run_raw(context(tmp_path, DS, addr))
    assert again["cache_hit"] is True and again["rows_validated"] == first["rows_validated"]
    _rewrite(tmp_path, lambda t: t.slice(0, 10))  # input changed: no cache hit, new counts
    third = run_raw(context(tmp_path, DS, addr))
    assert "cache_hit" not in third and third["rows_validated"] < first["rows_validated"]


def test_spec_required_columns_cover_suite():
    # every required column of the spec gets a not-null rule in the raw suite
    from tasks.validation.suites import load_suite

    nn = {
        e["kwargs"]["column"]
        for e in load_suite("events", "raw")["expectations"]
        if e["type"] == "expect_column_values_to_not_be_null"
    }
    assert nn == set(SPEC.required)
