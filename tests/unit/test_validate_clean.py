"""validate_clean: exact schema, key uniqueness over all files, drift vs the previous interval, split checks."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tasks.validation.validate import ValidationFailed, run_clean, run_raw
from tests.lake_files import committed_file, doc_paths
from tests.unit.validate_data import ThreadCluster, clean_table, commit_tables, context, raw_day

D1, D2 = "2026-11-01", "2026-11-02"


@pytest.fixture(scope="module")
def addr():
    with ThreadCluster() as a:
        yield a


def _failing(res: dict, kind: str) -> dict[str, dict]:
    return {f["column"]: f for f in res["failing"] if f["expectation"] == kind}


def _commit_clean(ctx, ds, n=6_000, seed=1, **kw):
    half = n // 2
    return commit_tables(
        ctx.lake,
        "clean",
        ds,
        [(clean_table(half, seed, ds, **kw), ""), (clean_table(n - half, seed, ds, start_id=half, **kw), "")],
        row_group_rows=1_000,
    )


def test_clean_passes_and_drift_needs_a_previous_interval(tmp_path, addr):
    ctx = context(tmp_path, D1, addr)
    _commit_clean(ctx, D1)
    res = run_clean(ctx)
    assert res["success"] is True and res["rows_validated"] == 6_000
    assert res["drift"]["previous_ds"] is None and res["drift"]["failing"] == []
    assert res["data_docs"].endswith("/clean/index.html") and "validation/events/ds=2026-11-01/v=" in res["data_docs"]


def test_no_drift_between_similar_intervals(tmp_path, addr):
    _commit_clean(context(tmp_path, D1, addr), D1, seed=1)
    ctx = context(tmp_path, D2, addr)
    _commit_clean(ctx, D2, seed=2)
    res = run_clean(ctx)
    assert res["success"] is True, res["failing"]
    assert res["drift"]["previous_ds"] == D1
    assert 0 <= res["drift"]["columns"]["price"]["psi"] < 0.05


def test_drift_detected_per_column(tmp_path, addr):
    _commit_clean(context(tmp_path, D1, addr), D1, seed=1)
    ctx = context(tmp_path, D2, addr, validation_policy="warn")
    _commit_clean(ctx, D2, seed=2, price_mu=4.5, device_p=(0.2, 0.7, 0.1), email_null=0.4)
    res = run_clean(ctx)
    assert res["success"] is False
    assert set(res["drift"]["failing"]) == {"email", "price", "device"}
    psi = _failing(res, "expect_column_psi_to_be_below")["price"]["observed_value"]
    assert psi > 0.25
    share = _failing(res, "expect_column_category_share_delta_to_be_below")["device"]["observed_value"]
    assert share == pytest.approx(0.3, abs=0.03)
    nulls = _failing(res, "expect_column_null_rate_delta_to_be_below")["email"]["observed_value"]
    assert nulls == pytest.approx(0.3, abs=0.03)
    # columns that did not move stay green
    assert "country" not in res["drift"]["failing"] and "quantity" not in res["drift"]["failing"]


def test_unseen_category_in_clean(tmp_path, addr):
    ctx = context(tmp_path, D1, addr)
    t = clean_table(3_000, 1, D1)
    t = t.set_column(t.schema.get_field_index("event_type"), "event_type", pa.array(["view"] * 2_990 + ["refund"] * 10))
    commit_tables(ctx.lake, "clean", D1, [(t, "")])
    with pytest.raises(ValidationFailed, match=r"in_set on column 'event_type': 10 unexpected of 3000 rows"):
        run_clean(ctx)


def test_duplicate_keys_across_files_counted_exactly(tmp_path, addr):
    ctx = context(tmp_path, D1, addr, validation_policy="warn")
    a = clean_table(4_000, 1, D1)
    b = clean_table(4_000, 1, D1, start_id=3_700)  # ids 3700..3999 repeat the first file's last 300
    c = clean_table(500, 1, D1, start_id=100)  # and 100..599 again: (300 + 500) keys x 2 rows each
    m = commit_tables(ctx.lake, "clean", D1, [(a, ""), (b, ""), (c, "")], row_group_rows=700)
    res = run_clean(ctx)
    f = _failing(res, "expect_column_values_to_be_unique")["event_id"]
    files = [ctx.lake.abspath(m, e) for e in m.files]
    want = (
        duckdb.connect()
        .execute(
            f"SELECT sum(c) FROM (SELECT event_id, count(*) c FROM read_parquet({files}) "
            "GROUP BY event_id HAVING count(*) > 1)"
        )
        .fetchone()[0]
    )
    assert f["unexpected_count"] == want == 1_600 and f["element_count"] == 8_500


def test_clean_schema_must_be_exact(tmp_path, addr):
    ctx = context(tmp_path, D1, addr)
    t = clean_table(2_000, 1, D1)
    t = t.set_column(t.schema.get_field_index("quantity"), "quantity", pc.cast(t.column("quantity"), pa.int32()))
    commit_tables(ctx.lake, "clean", D1, [(t, "")])
    with pytest.raises(ValidationFailed, match=r"of_type on column 'quantity'.*type int32 \(expected int64\)"):
        run_clean(ctx)


def test_clean_column_order_is_part_of_the_schema(tmp_path, addr):
    ctx = context(tmp_path, D1, addr)
    t = clean_table(2_000, 1, D1)
    names = t.column_names
    commit_tables(ctx.lake, "clean", D1, [(t.select([names[1], names[0], *names[2:]]), "")])
    with pytest.raises(ValidationFailed, match="expect_table_columns_to_match_ordered_list"):
        run_clean(ctx)


def test_split_groups_disjoint_and_rows_accounted(tmp_path, addr):
    ctx = context(tmp_path, D1, addr, validation_policy="warn")
    t = clean_table(6_000, 1, D1)
    commit_tables(ctx.lake, "clean", D1, [(t, "")])
    users = pc.cast(pc.utf8_slice_codeunits(t.column("user_id"), 1), pa.int64())
    mod = pc.bit_wise_and(users, 7).to_numpy()
    train, val, test = t.filter(pa.array(mod < 6)), t.filter(pa.array(mod == 6)), t.filter(pa.array(mod == 7))
    commit_tables(ctx.lake, "split", D1, [(train, "train"), (val, "val"), (test, "test")])
    ok = run_clean(ctx)
    assert ok["success"] is True, ok["failing"]
    # leak: some val users also land in train, and rows no longer add up
    leak = val.slice(0, 40)
    commit_tables(ctx.lake, "split", D1, [(pa.concat_tables([train, leak]), "train"), (val, "val"), (test, "test")])
    bad = run_clean(ctx)
    shared = len(set(leak.column("user_id").to_pylist()))
    assert _failing(bad, "expect_split_groups_to_be_disjoint")["user_id"]["observed_value"] == shared
    rows = [f for f in bad["failing"] if f["expectation"] == "expect_split_rows_to_match_clean"][0]
    assert rows["observed_value"] == 6_040


def test_validation_manifest_keeps_both_suites(tmp_path, addr):
    raw_day(tmp_path, rows=3_000)
    ctx = context(tmp_path, D1, addr)
    run_raw(ctx)
    _commit_clean(ctx, D1, n=2_000)
    run_clean(ctx)
    m = ctx.lake.require("validation", "events", D1)
    paths = doc_paths({f.path for f in m.files})  # each suite's pages stay in the version they were committed in
    assert {"raw/index.html", "clean/index.html", "raw/result.json", "clean/result.json"} <= paths
    assert "raw/gx.html" not in paths  # GX's CDN-styled page only with Param gx_data_docs
    assert "gx.html" not in committed_file(tmp_path / "lake", "validation", "events", D1, "raw/index.html").read_text()
    assert set(m.extra["suites"]) == {"raw", "clean"}


def test_drift_baseline_stored_profile_equals_recomputed(tmp_path, addr, monkeypatch):
    from tasks.validation import validate

    ctx1 = context(tmp_path, D1, addr)
    _commit_clean(ctx1, D1, seed=1)
    assert run_clean(ctx1)["drift"]["baseline"] is None  # first interval: nothing to compare with
    ctx2 = context(tmp_path, D2, addr, validation_policy="warn")
    _commit_clean(ctx2, D2, seed=2, price_mu=4.0, device_p=(0.3, 0.6, 0.1))
    stored = run_clean(ctx2)
    assert stored["drift"]["baseline"] == "stored profile"
    monkeypatch.setattr(validate, "_stored_profile", lambda *_: None)  # no stored profile: re-read D1's files
    again = run_clean(context(tmp_path, D2, addr, validation_policy="warn", rerun="recompute"))
    assert again["drift"]["baseline"] == "recomputed"
    assert again["drift"]["columns"] == stored["drift"]["columns"] and stored["drift"]["failing"]


def test_statistics_settle_int_and_timestamp_ranges_without_reading(tmp_path, addr):
    import json

    ctx = context(tmp_path, D1, addr)
    t = clean_table(3_000, 1, D1)
    commit_tables(ctx.lake, "clean", D1, [(t, "")], row_group_rows=500)
    run_clean(ctx)
    doc = json.loads(committed_file(tmp_path / "lake", "validation", "events", D1, "clean/result.json").read_text())
    between = {
        r["expectation_config"]["kwargs"]["column"]: r["result"]
        for r in doc["results"]
        if r["expectation_config"]["type"] == "expect_column_values_to_be_between"
    }
    q = between["quantity"]  # int: proven from row-group min/max, so no sum and no mean
    assert (q["details"]["observed_min"], q["details"]["observed_max"]) == (
        pc.min(t.column("quantity")).as_py(),
        pc.max(t.column("quantity")).as_py(),
    )
    assert q["details"]["observed_mean"] is None and q["unexpected_count"] == 0 and q["element_count"] == 3_000
    p = between["price"]  # float: always read (statistics leave NaN out), so the mean is there
    assert p["details"]["observed_mean"] == pytest.approx(pc.mean(t.column("price")).as_py())
    ts = between["event_ts"]
    assert ts["details"]["observed_min"] == pc.min(t.column("event_ts")).as_py().isoformat()
