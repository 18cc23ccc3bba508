from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.io.code_version import code_version
from tasks.io.lake import MANIFEST, Lake, Manifest, ManifestError
from tasks.io.parquet import ParquetReadError, read_table, sha256_of, write_table, write_tables
from tasks.security.keyring import generate as load_keyring
from tasks.security.signing import signer_for, verifier_for


@pytest.fixture
def lake(tmp_path):
    ring = load_keyring(tmp_path / "keys" / "keyring.json")
    return Lake(str(tmp_path / "lake"), signer=signer_for(ring), verifier=verifier_for(ring), gc_grace_s=0)


def _commit(lake: Lake, ds: str, rows: int, **kw) -> Manifest:
    version, vdir = lake.new_version("clean", "events", ds)
    entry = write_table(f"{vdir}/part-0.parquet", pa.table({"x": list(range(rows))}), f"v={version}/part-0.parquet")
    return lake.commit(Manifest("clean", "events", ds, version, [entry], **kw))


def test_commit_writes_manifest_last_and_replaces_atomically(lake):
    first = _commit(lake, "2026-11-01", 3, input_fingerprint="a")
    assert lake.require("clean", "events", "2026-11-01").rows == 3
    second = _commit(lake, "2026-11-01", 5, input_fingerprint="b")
    m = lake.require("clean", "events", "2026-11-01")
    assert (m.version, m.rows) == (second.version, 5)
    # the superseded version's files are gone; the new ones read back with their checksum
    assert not lake.fs.exists(f"{lake.interval_dir('clean', 'events', '2026-11-01')}/v={first.version}")
    url = lake.abspath(m, m.files[0])
    assert read_table(url).num_rows == 5
    assert sha256_of(url) == m.files[0].sha256
    assert not [p for p in os.listdir(lake.interval_dir("clean", "events", "2026-11-01")) if ".tmp" in p]


def test_uncommitted_version_is_invisible(lake):
    _commit(lake, "2026-11-01", 3)
    lake.new_version("clean", "events", "2026-11-01")  # a writer that died before its commit
    assert lake.require("clean", "events", "2026-11-01").rows == 3
    assert lake.manifest("clean", "events", "2026-11-02") is None
    with pytest.raises(ManifestError, match="no committed clean output"):
        lake.require("clean", "events", "2026-11-02")


def test_edited_manifest_fails_signature(lake):
    _commit(lake, "2026-11-01", 3)
    path = lake.manifest_path("clean", "events", "2026-11-01")
    assert path.endswith(f"/v={lake.require('clean', 'events', '2026-11-01').version}/{MANIFEST}")
    doc = json.loads(open(path).read())
    doc["rows"] = 4
    open(path, "w").write(json.dumps(doc))
    with pytest.raises(ManifestError, match="signature check failed"):
        lake.require("clean", "events", "2026-11-01")


def test_cache_hit_needs_same_input_code_and_params(lake):
    code = code_version("tasks.publishing.report")
    _commit(lake, "2026-11-01", 3, input_fingerprint="fp", code_version=code, params={"a": 1})
    assert lake.cache_hit("clean", "events", "2026-11-01", "fp", code, {"a": 1}) is not None
    assert lake.cache_hit("clean", "events", "2026-11-01", "other", code, {"a": 1}) is None
    assert lake.cache_hit("clean", "events", "2026-11-01", "fp", "code2", {"a": 1}) is None
    assert lake.cache_hit("clean", "events", "2026-11-01", "fp", code, {"a": 2}) is None


def test_intervals_and_previous(lake):
    for ds in ("2026-11-03", "2026-11-01", "2026-11-02"):
        _commit(lake, ds, 1)
    assert lake.intervals("clean", "events") == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert lake.previous_manifest("clean", "events", "2026-11-03").ds == "2026-11-02"
    assert lake.previous_manifest("clean", "events", "2026-11-01") is None


def test_truncated_parquet_error_names_file(tmp_path):
    url = str(tmp_path / "t.parquet")
    write_table(url, pa.table({"x": list(range(1000))}), "t.parquet")
    data = open(url, "rb").read()
    open(url, "wb").write(data[: len(data) // 2])
    with pytest.raises(ParquetReadError, match="t.parquet"):
        read_table(url)


def test_streamed_pieces_write_the_same_file_as_one_table(tmp_path):
    """write_tables buffers pieces into full row groups: same bytes and checksum as write_table of the whole."""
    n = 50_000
    whole = pa.table({"x": list(range(n)), "s": [f"v{i % 97}" for i in range(n)]})
    one = write_table(str(tmp_path / "one.parquet"), whole, "one.parquet", row_group_rows=4_096)
    cuts = [0, 20_000, 20_001, 20_001, 33_333, n]  # the first piece covers the dictionary sample; one is empty
    pieces = (whole.slice(a, b - a) for a, b in zip(cuts, cuts[1:], strict=False))
    streamed = write_tables(str(tmp_path / "two.parquet"), whole.schema, pieces, "one.parquet", row_group_rows=4_096)
    assert streamed == one and streamed.rows == n
    md = pq.ParquetFile(tmp_path / "two.parquet").metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [4_096] * 12 + [n - 12 * 4_096]
    assert read_table(str(tmp_path / "two.parquet")).equals(whole)


def test_superseded_version_survives_grace_period(tmp_path):
    ring = load_keyring(tmp_path / "keys" / "keyring.json")
    lake = Lake(str(tmp_path / "lake"), signer=signer_for(ring), verifier=verifier_for(ring), gc_grace_s=3600)
    first = _commit(lake, "2026-11-01", 3)
    second = _commit(lake, "2026-11-01", 4)
    idir = lake.interval_dir("clean", "events", "2026-11-01")
    # a concurrent reader of the first version can still finish; readers only see the second
    assert lake.fs.exists(f"{idir}/v={first.version}")
    assert lake.require("clean", "events", "2026-11-01").version == second.version
    lake.gc_grace_s = 0
    assert lake.collect_garbage("clean", "events", "2026-11-01", keep=second.version) == [first.version]
