"""Synthetic events: determinism, layout, raw types, exact fault accounting, learnable label."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from tasks.prep import datagen
from tasks.spec import spec_for

SPEC = spec_for("events")


def _digests(root: Path) -> dict[str, str]:
    files = sorted(root.rglob("*.parquet"))
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_gives_byte_identical_files_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ra = datagen.generate(str(a), SPEC, "2026-11-01", 2, 20_000, seed=3, files_per_day=3)
    datagen.generate(str(b), SPEC, "2026-11-01", 2, 20_000, seed=3, files_per_day=3)
    datagen.generate(str(c), SPEC, "2026-11-01", 2, 20_000, seed=4, files_per_day=3)
    da = _digests(a)
    assert len(da) == 6 and da == _digests(b)
    assert da != _digests(c)
    assert sorted(ra["intervals"]) == ["2026-11-01", "2026-11-02"]
    assert {p.name for p in (a / "raw/events/ds=2026-11-02").iterdir()} == {
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"}


def test_raw_types_row_count_and_fault_counts_match_the_data(tmp_path):
    out = datagen.generate(str(tmp_path), SPEC, "2026-11-01", 1, 40_000, seed=1, files_per_day=4)
    info = out["intervals"]["2026-11-01"]
    t = pads.dataset(str(tmp_path / "raw/events/ds=2026-11-01")).to_table()
    assert t.num_rows == 40_000 == info["rows"]
    assert t.schema.field("event_ts").type == pa.timestamp("us", tz="UTC")
    assert t.schema.field("price").type == pa.float64()
    assert t.schema.field("quantity").type == pa.int64()
    assert t.schema.field("purchased").type == pa.bool_()
    assert t.schema.field("device").type == pa.string()
    f = info["faults"]
    # nulls: exactly what the report says, per required column
    for col in SPEC.required:
        assert t.column(col).null_count == f.get(f"missing_required:{col}", 0), col
    # out-of-range prices
    price = t.column("price")
    assert pc.sum(pc.or_(pc.less(price, 0), pc.greater(price, 10_000)).cast(pa.int64())).as_py() == f[
        "out_of_range:price"]
    # out-of-interval timestamps
    ts = pc.cast(t.column("event_ts"), pa.int64()).to_numpy(zero_copy_only=False)
    lo = np.datetime64("2026-11-01T00:00:00", "us").astype(np.int64)
    outside = ((ts < lo) | (ts >= lo + datagen.US_PER_DAY)) & ~np.isnan(ts.astype(float))
    assert int(outside.sum()) == f["out_of_interval"]
    # duplicates: rows whose event id was already seen, some across files
    ids = t.column("event_id").drop_null()
    assert len(ids) - len(pc.unique(ids)) == f["duplicate_key"]
    assert f["duplicate_from_other_file"] > 0
    # unknown event types (rejected) and noisy-but-valid categories
    et = pc.utf8_lower(pc.utf8_trim_whitespace(t.column("event_type").drop_null()))
    unknown = pc.sum(pc.invert(pc.is_in(et, value_set=pa.array(["view", "cart", "checkout"]))).cast(pa.int64()))
    assert unknown.as_py() == f["unknown_category:event_type"]
    raw_dev = t.column("device")
    assert pc.sum(pc.invert(pc.is_in(raw_dev, value_set=pa.array(["desktop", "mobile", "tablet"]))).cast(
        pa.int64())).as_py() > f["mapped_unknown:device"]  # noise makes raw values differ from allowed
    assert info["expected_clean"] + info["expected_rejected"] == 40_000
    assert 0.2 <= info["positive_rate"] <= 0.35


def test_no_faults_option_and_gb_sizing(tmp_path):
    out = datagen.generate(str(tmp_path), SPEC, "2026-11-05", 1, 10_000, seed=2, faults=datagen.FaultRates.none())
    assert out["intervals"]["2026-11-05"]["expected_rejected"] == 0
    t = pads.dataset(str(tmp_path / "raw/events/ds=2026-11-05")).to_table()
    assert t.num_rows == len(pc.unique(t.column("event_id")))
    assert datagen.rows_for_gb(1.0, 2) == int(1e9 / datagen.ARROW_BYTES_PER_ROW / 2)
    assert abs(t.nbytes / t.num_rows - datagen.ARROW_BYTES_PER_ROW) / datagen.ARROW_BYTES_PER_ROW < 0.15


def test_drift_and_poison_knobs_change_the_distribution(tmp_path):
    none = datagen.FaultRates.none()
    base = datagen.generate(str(tmp_path / "a"), SPEC, "2026-11-01", 1, 20_000, seed=5, faults=none)
    assert base["poison_rows"] == 0
    datagen.generate(str(tmp_path / "b"), SPEC, "2026-11-01", 1, 20_000, seed=5, faults=datagen.FaultRates.none(),
                     drift=1.0, poison_rows=300)
    a = pads.dataset(str(tmp_path / "a/raw/events/ds=2026-11-01")).to_table()
    b = pads.dataset(str(tmp_path / "b/raw/events/ds=2026-11-01")).to_table()
    share = lambda t: pc.mean(pc.equal(t.column("device"), "mobile").cast(pa.float64())).as_py()  # noqa: E731
    assert share(b) > share(a) + 0.15
    assert pc.mean(b.column("price")).as_py() > 1.5 * pc.mean(a.column("price")).as_py()
    poison = pc.sum(pc.greater_equal(b.column("price"), 9_900).cast(pa.int64())).as_py()
    assert poison == 300


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="drift"):
        datagen.generate(str(tmp_path), SPEC, drift=2.0)
    with pytest.raises(ValueError, match="fault rates"):
        datagen.generate(str(tmp_path), SPEC, rows_per_day=100, faults=datagen.FaultRates(noise=0.6))


def test_cli_prints_summary(tmp_path, capsys):
    assert datagen.cli(["--lake", str(tmp_path), "--rows", "2000", "--days", "1", "--seed", "9"]) == 0
    assert '"rows": 2000' in capsys.readouterr().out
