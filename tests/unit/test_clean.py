"""The clean step on a real (in-process) Dask cluster: every rule, exact accounting, dedupe across files,
determinism, cache hits, atomic replacement and bad input."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from distributed import LocalCluster

from tasks.context import StepContext
from tasks.io import hashing
from tasks.io.parquet import read_table
from tasks.prep import clean, datagen
from tasks.resources.step_metrics import StepMetrics
from tasks.spec import spec_for
from tests.keys import keyring_at

SPEC = spec_for("events")
DS = "2026-11-01"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def dask_address():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0", protocol="tcp",
                      host="127.0.0.1") as cluster:
        yield cluster.scheduler_address


def _ctx(tmp_path: Path, address: str, ds: str = DS, **params) -> StepContext:
    return StepContext("events", ds, lake_url=str(tmp_path / "lake"), keyring_path=keyring_at(tmp_path / "keys.json"),
                       params={"encrypt": False, **params}, cluster={"backend": "address", "address": address})


def _raw_dir(tmp_path: Path, ds: str = DS) -> Path:
    d = tmp_path / "lake" / "raw" / "events" / f"ds={ds}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _row(i: int, **over) -> dict:
    base = {"event_id": f"e{i}", "user_id": f"u{i % 7}", "email": f"U{i}@Mail.test", "session_id": f"s{i % 3}",
            "event_ts": datetime(2026, 11, 1, 10, 0, i % 60, tzinfo=UTC), "event_type": "view",
            "product_id": "p1", "category": "books", "price": 10.0 + i, "quantity": 1, "device": "mobile",
            "country": "US", "session_events": 5, "purchased": False}
    base.update(over)
    return base


def _write(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> None:
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    pq.write_table(pa.table(cols, schema=schema) if schema else pa.table(cols), path)


def _clean_rows(ctx: StepContext) -> pa.Table:
    m = ctx.lake.require("clean", "events", ctx.ds)
    parts = [read_table(ctx.lake.abspath(m, f)) for f in m.files]
    return pa.concat_tables(parts) if parts else SPEC.arrow_schema().empty_table()


def _quarantine(ctx: StepContext) -> pa.Table:
    m = ctx.lake.require("quarantine", "events", ctx.ds)
    return pa.concat_tables([read_table(ctx.lake.abspath(m, f)) for f in m.files])


def test_accounting_matches_generated_faults_exactly(tmp_path, dask_address):
    g = datagen.generate(str(tmp_path / "lake"), SPEC, DS, 1, 30_000, seed=11, files_per_day=3)
    info = g["intervals"][DS]
    ctx = _ctx(tmp_path, dask_address, partitions=3)
    r = clean.run(ctx)
    acc = r["accounting"]
    assert acc["rows_in"] == 30_000 == acc["rows_clean"] + acc["rows_rejected"]
    assert acc["rows_clean"] == info["expected_clean"]
    expected = {k: v for k, v in info["faults"].items() if k.split(":")[0] in
                {"missing_required", "duplicate_key", "out_of_range", "unknown_category", "out_of_interval"}}
    assert acc["rejected_by_reason"] == expected
    repaired = {k: v for k, v in info["faults"].items() if k.split(":")[0] in {"clipped", "mapped_unknown"}}
    assert acc["repaired_by_rule"] == repaired
    assert acc["files_in"] == 3 and acc["bytes_read"] == info["bytes"] and acc["bytes_shuffled"] > 0
    # the manifests agree with the data
    out, q = _clean_rows(ctx), _quarantine(ctx)
    assert out.num_rows == acc["rows_clean"] and q.num_rows == acc["rows_rejected"]
    assert out.schema == SPEC.arrow_schema()
    counts = dict(zip(*np.unique(q.column("_reason").to_numpy(zero_copy_only=False), return_counts=True),
                      strict=True))
    assert {k: int(v) for k, v in counts.items()} == expected
    # every rejected row is traceable to exactly one source row
    src = pc.binary_join_element_wise(q.column("_source_file"), q.column("_source_row").cast(pa.string()), "#")
    assert len(pc.unique(src)) == q.num_rows
    assert set(q.column("_source_file").to_pylist()) <= {f"raw/events/ds={DS}/part-{i:05d}.parquet" for i in range(3)}
    # clean rows obey the rules
    assert len(pc.unique(out.column("event_id"))) == out.num_rows
    assert pc.min(out.column("quantity")).as_py() >= 1 and pc.max(out.column("quantity")).as_py() <= 20
    assert pc.max(out.column("session_events")).as_py() <= 500
    assert set(pc.unique(out.column("device")).to_pylist()) <= {"desktop", "mobile", "tablet", "__unknown__"}
    assert set(pc.unique(out.column("country")).to_pylist()) <= {*SPEC.column("country").allowed, "__unknown__"}
    assert set(pc.unique(out.column("event_type")).to_pylist()) <= {"view", "cart", "checkout"}
    ts = out.column("event_ts")
    assert pc.min(ts).as_py() >= T0 and pc.max(ts).as_py() < datetime(2026, 11, 2, tzinfo=UTC)
    assert pc.all(pc.equal(out.column("email"), pc.utf8_lower(out.column("email")))).as_py()
    # result carries cluster metrics for the run history, every one under its canonical name
    assert set(StepMetrics.names()) <= set(r) and "rows_in" not in r and "threads" not in r
    m = StepMetrics.from_result(r, "clean")
    assert (m.workers, m.threads_per_worker, m.partitions) == (2, 1, 3) and m.memory_limit > 0
    assert m.peak_memory_per_worker > 0 and m.input_rows == 30_000 and m.output_rows == acc["rows_clean"]
    assert m.input_bytes == m.bytes_read == info["bytes"] and m.bytes_written > 0
    assert m.bytes_shuffled == acc["bytes_shuffled"] > 0


def test_every_rule_on_handmade_rows(tmp_path, dask_address):
    # price, quantity, purchased and event_ts arrive as strings: coercion with explicit unparseable handling
    rows = [
        _row(0, price="12.50", quantity="3", purchased="yes", event_ts="2026-11-01T10:00:00Z"),     # ok
        _row(1, price="abc", quantity="1", purchased="no", event_ts="2026-11-01 11:00:00"),         # unparseable:price
        _row(2, price="5", quantity="x", purchased="true", event_ts="2026-11-01T12:00:00+01:00"),  # bad quantity
        _row(3, price="5", quantity="50", purchased="0", event_ts="2026-11-01T01:00:00"),          # clipped to 20
        _row(4, price="-1", quantity="1", purchased="1", event_ts="2026-11-01T01:00:00"),          # out_of_range:price
        _row(5, price="7", quantity="1", purchased="1", event_ts="2026-11-02T00:00:00Z"),          # out_of_interval
        _row(6, price="7", quantity="1", purchased="1", event_ts="2026-10-31T23:59:59.999999Z"),   # out_of_interval
        _row(7, price="7", quantity="1", purchased="1", event_ts="not a time"),  # unparseable:event_ts
        _row(8, price="  ", quantity="1", purchased="1", event_ts="2026-11-01T05:00:00"),          # missing:price
        _row(9, event_id="   ", price="7", quantity="1", purchased="1", event_ts="2026-11-01T05:00:00"),  # missing id
        _row(10, event_type=" Refund", price="7", quantity="1", purchased="1", event_ts="2026-11-01T05:00:00"),
        _row(11, event_type=" CART ", device="Watch", country=" de", category="Garden ", price="7", quantity="0",
             purchased="F", event_ts="2026-11-01T23:59:59.999999"),                                # all repaired
        _row(12, price="7", quantity="1", purchased="maybe", event_ts="2026-11-01T05:00:00"),  # unparseable:purchased
        _row(13, price="1e9", quantity="", purchased="1", event_ts="2026-11-01T05:00:00"),         # out_of_range:price
    ]
    _write(_raw_dir(tmp_path) / "part-00000.parquet", rows)
    ctx = _ctx(tmp_path, dask_address)
    acc = clean.run(ctx)["accounting"]
    q = {r["_source_row"]: r["_reason"] for r in _quarantine(ctx).to_pylist()}
    assert q == {1: "unparseable:price", 2: "unparseable:quantity", 4: "out_of_range:price", 5: "out_of_interval",
                 6: "out_of_interval", 7: "unparseable:event_ts", 8: "missing_required:price",
                 9: "missing_required:event_id", 10: "unknown_category:event_type", 12: "unparseable:purchased",
                 13: "out_of_range:price"}
    assert acc["rows_in"] == 14 and acc["rows_clean"] == 3
    out = {r["event_id"]: r for r in _clean_rows(ctx).to_pylist()}
    assert out["e0"]["price"] == 12.5 and out["e0"]["quantity"] == 3 and out["e0"]["purchased"] is True
    assert out["e0"]["email"] == "u0@mail.test"
    assert out["e3"]["quantity"] == 20 and out["e3"]["purchased"] is False
    e11 = out["e11"]
    assert (e11["event_type"], e11["device"], e11["country"], e11["category"]) == ("cart", "__unknown__", "DE",
                                                                                   "__unknown__")
    assert e11["quantity"] == 1 and e11["event_ts"] == datetime(2026, 11, 1, 23, 59, 59, 999999, tzinfo=UTC)
    assert acc["repaired_by_rule"]["clipped:quantity"] == 2
    assert acc["repaired_by_rule"]["mapped_unknown:device"] == 1
    # quarantine keeps the raw values as strings
    raw_q = {r["_source_row"]: r for r in _quarantine(ctx).to_pylist()}
    assert raw_q[1]["price"] == "abc" and raw_q[10]["event_type"] == " Refund"


def test_dedupe_across_files_keeps_smallest_time_then_file_then_row(tmp_path, dask_address):
    d = _raw_dir(tmp_path)
    t = lambda s: datetime(2026, 11, 1, 8, 0, s, tzinfo=UTC)  # noqa: E731
    _write(d / "part-00000.parquet", [_row(1, event_ts=t(5), price=1.0), _row(2, event_ts=t(9), price=2.0),
                                      _row(3, event_ts=t(1), price=3.0), _row(3, event_ts=t(1), price=33.0)])
    _write(d / "part-00001.parquet", [_row(1, event_ts=t(5), price=11.0), _row(2, event_ts=t(3), price=22.0),
                                      _row(4, price=4.0)])
    ctx = _ctx(tmp_path, dask_address, partitions=4)
    acc = clean.run(ctx)["accounting"]
    assert acc["rejected_by_reason"] == {"duplicate_key": 3} and acc["rows_clean"] == 4
    price = {r["event_id"]: r["price"] for r in _clean_rows(ctx).to_pylist()}
    # e1: same time -> earlier file; e2: earlier time wins although in the later file; e3: same file -> smaller row
    assert price == {"e1": 1.0, "e2": 22.0, "e3": 3.0, "e4": 4.0}
    losers = {(r["_source_file"].rsplit("/", 1)[-1], r["_source_row"]) for r in _quarantine(ctx).to_pylist()}
    assert losers == {("part-00001.parquet", 0), ("part-00000.parquet", 1), ("part-00000.parquet", 3)}


def _digests(ctx: StepContext, stage: str) -> dict[str, str]:
    m = ctx.lake.require(stage, "events", ctx.ds)
    return {f.path.split("/", 1)[1]: hashlib.sha256(Path(ctx.lake.abspath(m, f)).read_bytes()).hexdigest()
            for f in m.files}


def test_output_is_byte_identical_across_cluster_sizes_and_reruns(tmp_path, dask_address, monkeypatch):
    monkeypatch.setenv("LEPTONFLOW_GC_GRACE_S", "0")  # superseded versions are removed at once
    datagen.generate(str(tmp_path / "lake"), SPEC, DS, 1, 20_000, seed=5, files_per_day=4)
    a = _ctx(tmp_path, dask_address, partitions=3, chunk_rows=4_000)
    ra = clean.run(a)
    da, qa = _digests(a, "clean"), _digests(a, "quarantine")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0",
                      protocol="tcp", host="127.0.0.1") as one:
        b = _ctx(tmp_path, one.scheduler_address, partitions=3, chunk_rows=4_000, rerun="second")
        rb = clean.run(b)
    assert rb["cache_hit"] is False and rb["clean_version"] != ra["clean_version"]
    assert _digests(b, "clean") == da and _digests(b, "quarantine") == qa
    assert len(da) == 9 and ra["accounting"] == rb["accounting"]  # 3 buckets x train/val/test
    # the superseded version folder is gone: readers only ever see one committed version
    versions = [p.name for p in (tmp_path / "lake/clean/events" / f"ds={DS}").iterdir() if p.name.startswith("v=")]
    assert versions == [f"v={rb['clean_version']}"]


def test_cache_hit_does_no_work_and_param_change_replaces(tmp_path, dask_address, monkeypatch):
    monkeypatch.setenv("LEPTONFLOW_GC_GRACE_S", "0")
    datagen.generate(str(tmp_path / "lake"), SPEC, DS, 1, 5_000, seed=2, files_per_day=2)
    ctx = _ctx(tmp_path, dask_address)
    first = clean.run(ctx)
    mpath = Path(ctx.lake.manifest_path("clean", "events", DS))  # in the committed version's folder
    before, records = mpath.read_bytes(), len(ctx.lake.log("events", DS).records())
    again = clean.run(_ctx(tmp_path, dask_address))
    assert again["cache_hit"] is True and again["output_rows"] == first["output_rows"]
    assert mpath.read_bytes() == before and len(ctx.lake.log("events", DS).records()) == records  # nothing written
    # a cache hit must not even need a cluster
    assert clean.run(_ctx(tmp_path, "tcp://127.0.0.1:1"))["cache_hit"] is True
    # Params of other steps (DAG-wide) do not invalidate clean
    assert clean.run(_ctx(tmp_path, dask_address, epochs=5, lr=0.1))["cache_hit"] is True
    changed = clean.run(_ctx(tmp_path, dask_address, partitions=2))
    assert changed["cache_hit"] is False and changed["files_out"] == 6 and changed["buckets"] == 2  # x 3 splits
    assert not (tmp_path / "lake/clean/events" / f"ds={DS}" / f"v={first['clean_version']}").exists()


def test_bad_inputs_fail_clearly_and_keep_committed_outputs(tmp_path, dask_address):
    # a good committed interval first
    datagen.generate(str(tmp_path / "lake"), SPEC, DS, 2, 2_000, seed=3, files_per_day=2)
    good = clean.run(_ctx(tmp_path, dask_address))
    d2 = _raw_dir(tmp_path, "2026-11-02")
    ctx2 = _ctx(tmp_path, dask_address, ds="2026-11-02")

    def fails(match: str) -> None:
        with pytest.raises(clean.CleanError, match=match):
            clean.run(_ctx(tmp_path, dask_address, ds="2026-11-02"))
        assert ctx2.lake.manifest("clean", "events", "2026-11-02") is None
        assert not any(p.name.startswith("v=") for p in (tmp_path / "lake/clean/events/ds=2026-11-02").glob("*"))

    with pytest.raises(clean.CleanError, match="no raw files"):
        clean.run(_ctx(tmp_path, dask_address, ds="2026-11-09"))
    victim = d2 / "part-00001.parquet"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated
    fails("part-00001.parquet: corrupt or truncated")
    victim.write_bytes(b"")
    fails("part-00001.parquet: empty file")
    _write(victim, [_row(1)])
    pq.write_table(pq.read_table(victim).drop_columns(["price"]), victim)
    fails("part-00001.parquet: required column 'price' is missing")
    pq.write_table(pa.table({**{k: [v] for k, v in _row(1).items()}, "event_ts": pa.array([[1]])}), victim)
    fails("part-00001.parquet: column 'event_ts' has type list<.*>, which cannot be read as timestamp")
    # a valid but empty file is fine; a file whose rows are all invalid is quarantined whole
    pq.write_table(pa.table({k: [v] for k, v in _row(1).items()}).slice(0, 0), victim)
    _write(d2 / "part-00003.parquet", [_row(50, price=-5.0), _row(51, event_type="nope")])
    r = clean.run(ctx2)
    assert r["accounting"]["rejected_by_reason"]["out_of_range:price"] >= 1
    q = _quarantine(ctx2)
    assert set(q.filter(pc.match_substring(q.column("_source_file"), "part-00003")).column("_reason").to_pylist()) == {
        "out_of_range:price", "unknown_category:event_type"}
    # the earlier interval is untouched
    m1 = ctx2.lake.require("clean", "events", DS)
    assert m1.version == good["clean_version"] and all(Path(ctx2.lake.abspath(m1, f)).exists() for f in m1.files)


def _reference_hash(v: str | None) -> int:
    """Plain-Python statement of the bucket hash (what other engines/releases must reproduce)."""
    mask = (1 << 64) - 1

    def mix(h: int) -> int:
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
        return h ^ (h >> 31)

    if v is None:
        return 0x5EED
    b = v.encode()
    s = 0
    for k in range(0, len(b), 8):  # little-endian 8-byte words, the last zero-padded
        c = (0x9E3779B97F4A7C15 * ((k // 8) % 8 + 1)) & mask
        s = (s + mix((int.from_bytes(b[k:k + 8], "little") + c) & mask) - mix(c)) & mask
    return mix(s ^ (((len(b) + 1) * 0x9E3779B97F4A7C15) & mask))


def test_hash_matches_reference_and_is_offset_safe():
    values = ["", "a", "event-1", None, "événement", "a", "x" * 300, "a\0", "y" * 64, "y" * 65, "abcdefgh"]
    arr = pa.array(values)
    h = hashing.hash_strings(arr)
    assert [int(x) for x in h] == [_reference_hash(v) for v in values]
    assert h[1] == h[5] and len(set(h[[0, 1, 2, 4, 6, 7, 8, 9, 10]].tolist())) == 9
    assert (hashing.hash_strings(arr.slice(2, 3)) == h[2:5]).all()
    assert (hashing.hash_strings(pa.chunked_array([arr.slice(0, 2)]).combine_chunks()) == h[:2]).all()


def test_shared_hashes_finds_exactly_the_repeated_values():
    """The reduce's duplicate-candidate pass (top-bit counting, then an exact pass) against a plain count,
    including hashes that share a bucket's low bits and hashes that differ only in their low bits."""
    rng = np.random.default_rng(4)
    for n in (0, 1, 2, 1_000, 200_000):
        h = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(16) + np.uint64(3)  # same low bits
        if n > 10:
            h[: n // 20] = h[n // 2: n // 2 + n // 20]
            h[n // 3] = h[n // 3 + 1] ^ np.uint64(1 << 8)  # same slot (top bits), different hash
        values, counts = np.unique(h, return_counts=True)
        want = np.flatnonzero(np.isin(h, values[counts > 1]))
        assert clean._shared_hashes(h).tolist() == want.tolist()


def test_dedupe_checks_real_keys_when_64bit_hashes_collide(tmp_path, dask_address, monkeypatch):
    """Reduces pick duplicate candidates by the map's 64-bit key hash; colliding hashes of different keys
    must not merge rows. With every hash forced equal the output is the same as with real hashes."""
    monkeypatch.setenv("LEPTONFLOW_GC_GRACE_S", "0")
    datagen.generate(str(tmp_path / "lake"), SPEC, DS, 1, 6_000, seed=9, files_per_day=2)
    real = clean.run(_ctx(tmp_path, dask_address, partitions=1))
    digests = _digests(_ctx(tmp_path, dask_address), "clean")
    monkeypatch.setattr(clean, "key_hash", lambda table, key: np.full(table.num_rows, 7, dtype=np.uint64))
    collided = clean.run(_ctx(tmp_path, dask_address, partitions=1, rerun="collide"))
    assert collided["cache_hit"] is False and collided["clean_version"] != real["clean_version"]
    assert collided["accounting"] == real["accounting"] and real["rejected_by_reason"]["duplicate_key"] > 0
    assert _digests(_ctx(tmp_path, dask_address), "clean") == digests
