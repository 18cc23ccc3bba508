"""The clean step: raw files of one interval -> clean rows + quarantined rows, on Dask.

Plan (all per-partition work is Arrow-native, no per-row Python):

1. On the client, read every raw file's footer: a corrupt/truncated/empty-bytes file,
   a file without a required column, or a column whose type cannot be read as the
   spec's type stops the step with an error naming the file and column, before any
   work is submitted. Row groups are grouped into chunks (few, large map tasks).
2. Map task per chunk: coerce every column to the spec type (unparseable values are
   flagged, never silently nulled), trim/case-normalize strings, then give each row
   the FIRST failing rule in this order: ``unparseable:<col>``, ``missing_required:<col>``,
   ``out_of_range:<col>`` (reject rules), ``unknown_category:<col>`` (reject rules),
   ``out_of_interval``. Clip/map rules repair the remaining rows. Rejected rows are
   written to quarantine from the task (raw values as strings + ``_reason``,
   ``_source_file``, ``_source_row``). Each valid row gets its split (``tasks.prep.split``:
   md5 once per distinct group value of the chunk's dictionary) and a 64-bit key hash; rows
   are ordered by (bucket = hash mod ``P``, split) and written to the task's Arrow IPC
   shuffle file, one record batch per (bucket, split), category columns still
   dictionary-encoded.
3. Reduce task per bucket: memory-map batch (bucket, split) of every map file (the shuffle
   goes through the lake, not worker memory). Rows whose key hash occurs more than once are
   the duplicate candidates; their exact keys decide, and the survivor per key is the first
   in (dedupe_order..., source file, source row); the others are quarantined as
   ``duplicate_key``. Each split's survivors (its batches minus the duplicates, still in
   (source file, source row) order) are filtered, decoded and written one map batch at a
   time into one file per split (``train/ val/ test/``), so no copy of a whole split is
   held, and the train rows give mergeable feature statistics. ``P``
   depends only on the input size, and every task is a pure function of its input, so
   output files are byte-identical whatever the cluster size or worker failures (with
   encryption off).
4. Exact accounting: rows_in (from the footers) == clean + rejected, else raise.
   The ``clean`` and ``quarantine`` manifests are committed by one commit record
   (:meth:`tasks.io.lake.Lake.commit`): both become visible or neither. On any error
   (or when a newer run of the interval committed meanwhile) this run's version folders
   are discarded and the committed outputs stay untouched.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from distributed import Client, wait

from tasks.context import StepContext
from tasks.errors import LeptonflowError, StorageError
from tasks.io.code_version import code_version
from tasks.io.hashing import key_hash
from tasks.io.lake import FileEntry, Lake, Manifest, fingerprint, is_local
from tasks.io.parquet import ParquetReadError, write_table, write_tables
from tasks.prep import features
from tasks.prep.split import GROUPS
from tasks.prep.split import assign as split_assign
from tasks.resources.cluster import client_for, describe, drain, reachable_dashboard
from tasks.resources.step_metrics import StepMetrics, cluster_metrics
from tasks.spec import ColumnSpec, DatasetSpec

log = logging.getLogger(__name__)

TARGET_FILE_BYTES = 128 << 20  # output files aim at ~128 MB
CHUNK_ROWS = 1 << 20  # rows per map task (whole row groups)
MERGE_FANIN = 8
SHUFFLE_DIR = "_shuffle"  # map -> reduce exchange files, removed before the commit
SRC_FILE, SRC_ROW, KEY_HASH = "_src_file", "_src_row", "_key_hash"
Q_REASON, Q_FILE, Q_ROW = "_reason", "_source_file", "_source_row"
_INT_RE = r"^[+-]?[0-9]{1,18}$"
_FLOAT_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$"
_TS_BODY = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?"
_TS_ZONED_RE = _TS_BODY + r"(Z|[+-][0-9]{2}:?[0-9]{2})$"
_TS_NAIVE_RE = _TS_BODY + r"$"
_TRUE = ["true", "t", "yes", "y", "1"]
_FALSE = ["false", "f", "no", "n", "0"]
UTC_US = pa.timestamp("us", tz="UTC")


class CleanError(LeptonflowError, RuntimeError):
    """The interval cannot be cleaned; the message names the file, column or rule."""


# ---- reasons ---------------------------------------------------------------------------
def reason_codes(spec: DatasetSpec) -> list[str]:
    """All reject reasons of `spec` in priority order (a row gets the first that applies)."""
    out = [f"unparseable:{c.name}" for c in spec.columns if c.type not in ("string", "category")]
    out += [f"missing_required:{c.name}" for c in spec.columns if c.required]
    out += [f"out_of_range:{c.name}" for c in spec.columns
            if (c.min is not None or c.max is not None) and c.on_out_of_range == "reject"]
    out += [f"unknown_category:{c.name}" for c in spec.columns if c.allowed and c.on_unknown == "reject"]
    out += ["out_of_interval", "duplicate_key"]
    return out


def quarantine_schema(spec: DatasetSpec) -> pa.Schema:
    return pa.schema([pa.field(c.name, pa.string()) for c in spec.columns]
                     + [pa.field(Q_REASON, pa.string()), pa.field(Q_FILE, pa.string()), pa.field(Q_ROW, pa.int64())])


# ---- coercion --------------------------------------------------------------------------
def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def check_coercible(t: pa.DataType, col: ColumnSpec, where: str) -> None:
    """Raise CleanError if a raw column of type `t` can never be read as `col.type`."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    num = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    ok = {
        "string": _is_str(t) or num or pa.types.is_boolean(t) or pa.types.is_timestamp(t) or pa.types.is_date(t),
        "int": _is_str(t) or num or pa.types.is_boolean(t),
        "float": _is_str(t) or num or pa.types.is_boolean(t),
        "bool": _is_str(t) or pa.types.is_integer(t) or pa.types.is_boolean(t),
        "timestamp": _is_str(t) or pa.types.is_timestamp(t) or pa.types.is_date(t),
        "null": True,
    }
    ok["category"] = ok["string"]
    if not (pa.types.is_null(t) or ok[col.type]):
        raise CleanError(f"{where}: column {col.name!r} has type {t}, which cannot be read as {col.type} (spec rule)")


def _cast_strings(s: pa.Array, target: pa.DataType, pattern: str) -> pa.Array:
    """Cast strings to `target`; values that do not parse become null (never an exception)."""
    try:
        return s.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    ok = pc.match_substring_regex(s, pattern).fill_null(False)
    filler = {pa.types.is_integer(target): "0", pa.types.is_floating(target): "0"}.get(True, "1970-01-01")
    try:
        return pc.if_else(ok, pc.if_else(ok, s, filler).cast(target), pa.nulls(len(s), target))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # rare: matches the pattern but still does not parse (month 13, overflow): per distinct value
        uniq = pc.unique(pc.filter(s, ok))
        parsed = []
        for v in uniq.to_pylist():
            try:
                parsed.append(pa.array([v]).cast(target)[0].as_py())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                parsed.append(None)
        return pc.take(pa.array(parsed, target), pc.index_in(s, value_set=uniq))


def _strip(arr: pa.Array) -> pa.Array:
    """Trimmed strings, empty -> null."""
    s = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(pc.binary_length(s), 0), pa.nulls(len(s), pa.string()), s)


def coerce(arr: pa.Array, col: ColumnSpec) -> tuple[pa.Array, np.ndarray]:
    """(values of the spec type, mask of rows whose non-empty value did not parse)."""
    if pa.types.is_dictionary(arr.type):
        if col.type in ("string", "category") and _is_str(arr.type.value_type):
            # normalize each distinct value once; the rows keep pointing at the (normalized) dictionary
            values, _ = coerce(arr.dictionary, col)
            return pa.DictionaryArray.from_arrays(arr.indices, values), np.zeros(len(arr), dtype=bool)
        arr = arr.dictionary_decode()
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    n = len(arr)
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(n, col.arrow_type()), np.zeros(n, dtype=bool)
    if col.type in ("string", "category"):
        s = _strip(arr if _is_str(t) else arr.cast(pa.string()))
        if col.normalize == "lower":
            s = pc.utf8_lower(s)
        elif col.normalize == "upper":
            s = pc.utf8_upper(s)
        return s, np.zeros(n, dtype=bool)
    src = arr
    if _is_str(t):
        src = _strip(arr)
        if col.type == "int":
            out = _cast_strings(src, pa.int64(), _INT_RE)
        elif col.type == "float":
            out = _cast_strings(src, pa.float64(), _FLOAT_RE)
        elif col.type == "bool":
            low = pc.utf8_lower(src)
            out = pc.if_else(pc.is_in(low, value_set=pa.array(_TRUE)), True,
                             pc.if_else(pc.is_in(low, value_set=pa.array(_FALSE)), False, pa.nulls(n, pa.bool_())))
        else:  # timestamp: zoned strings are converted to UTC, naive ones are taken as UTC
            zoned = pc.match_substring_regex(src, _TS_ZONED_RE).fill_null(False)
            z = _cast_strings(pc.if_else(zoned, src, pa.nulls(n, pa.string())), UTC_US, _TS_ZONED_RE)
            naive = _cast_strings(pc.if_else(zoned, pa.nulls(n, pa.string()), src), pa.timestamp("us"), _TS_NAIVE_RE)
            out = pc.if_else(zoned, z, naive.cast(UTC_US))
    elif col.type == "int":
        if pa.types.is_floating(t) or pa.types.is_decimal(t):
            f = arr.cast(pa.float64())
            integral = pc.and_(pc.equal(pc.floor(f), f), pc.less(pc.abs(f), 9.2e18))
            out = pc.if_else(integral, pc.if_else(integral, f, 0.0).cast(pa.int64()), pa.nulls(n, pa.int64()))
        else:
            out = _cast_numeric(arr, pa.int64())
    elif col.type == "float":
        f = arr.cast(pa.float64())
        out = pc.if_else(pc.is_nan(f).fill_null(False), pa.nulls(n, pa.float64()), f)  # NaN is a missing value
        src = out
    elif col.type == "bool":
        if pa.types.is_boolean(t):
            out = arr
        else:
            out = pc.if_else(pc.equal(arr, 1), True, pc.if_else(pc.equal(arr, 0), False, pa.nulls(n, pa.bool_())))
    else:  # timestamp from timestamp/date: naive values are UTC
        if pa.types.is_date(t):
            arr = arr.cast(pa.timestamp("us"))
        out = arr.cast(pa.timestamp("us", tz=arr.type.tz)).cast(UTC_US) if arr.type.tz else arr.cast(
            pa.timestamp("us")).cast(UTC_US)
    bad = pc.and_(pc.is_valid(src), pc.is_null(out)).to_numpy(zero_copy_only=False)
    return out, bad


def _cast_numeric(arr: pa.Array, target: pa.DataType) -> pa.Array:
    try:
        return arr.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. uint64 beyond int64: unparseable
        f = arr.cast(pa.float64())
        fits = pc.less(pc.abs(f), 9.2e18)
        return pc.if_else(fits, pc.if_else(fits, arr, 0).cast(target), pa.nulls(len(arr), target))


# ---- tasks (run on workers) ---------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    index: int
    file_index: int
    url: str  # full URL the workers open
    rel: str  # lake-relative path written to quarantine
    row_groups: tuple[int, ...]
    first_row: int  # row number of the chunk's first row within its file
    rows: int


@dataclass(frozen=True)
class Job:
    spec: DatasetSpec
    start_us: int
    end_us: int
    n_buckets: int
    clean_dir: str  # full URLs of the version folders
    quarantine_dir: str
    clean_version: str
    quarantine_version: str
    crypto: Any = None
    files: tuple[str, ...] = ()  # lake-relative raw file paths, by file index
    anomaly: Any = None  # tasks.security.anomaly.AnomalyModel fitted on earlier intervals (None: no history yet)
    shuffle_dir: str = ""  # full URL of the map -> reduce exchange folder (inside the clean version folder)
    shuffle_compression: str | None = None  # Arrow IPC buffer codec of the shuffle files (setting shuffle_compression)


def _read_as_dictionary(spec: DatasetSpec) -> list[str]:
    """String columns other than the key: read dictionary-encoded (normalized once per distinct value)."""
    return [c.name for c in spec.columns if c.type in ("string", "category") and c.name not in spec.key]


def _read_chunk(chunk: Chunk, spec: DatasetSpec | None = None) -> pa.Table:
    fs, path = fsspec.core.url_to_fs(chunk.url)
    # String columns other than the key are read dictionary-encoded: parquet stores them that way, so
    # decoding skips materializing every string, and trim/case run once per distinct value (coerce).
    dict_cols = _read_as_dictionary(spec) if spec is not None else []
    try:
        with fs.open(path, "rb") as fh:
            md = pq.ParquetFile(fh).metadata
            dict_cols = [c for c in dict_cols if c in md.schema.names]
            pf = pq.ParquetFile(fh, metadata=md, read_dictionary=dict_cols)
            return pf.read_row_groups(list(chunk.row_groups), use_threads=False)
    except (OSError, pa.ArrowException) as exc:
        raise ParquetReadError(f"{chunk.rel}: cannot read row groups {list(chunk.row_groups)}: {exc}") from exc


def _raw_strings(table: pa.Table, spec: DatasetSpec, rows: np.ndarray) -> dict[str, pa.Array]:
    out = {}
    sub = _take_rows(table, rows)  # per row group: no copy of the whole chunk, no dictionary unification
    for c in spec.columns:
        if c.name in sub.column_names:
            out[c.name] = sub.column(c.name).cast(pa.string()).combine_chunks()
        else:
            out[c.name] = pa.nulls(len(rows), pa.string())
    return out


def clean_chunk(chunk: Chunk, job: Job) -> dict[str, Any]:
    """Map task: rejected rows go to quarantine, valid ones to a bucketed shuffle file; returns the meta."""
    spec = job.spec
    raw = _read_chunk(chunk, spec)
    n = raw.num_rows
    if n != chunk.rows:
        raise CleanError(f"{chunk.rel}: row groups {list(chunk.row_groups)} have {n} rows, footer says {chunk.rows}")
    codes = {r: i + 1 for i, r in enumerate(reason_codes(spec))}
    reason = np.zeros(n, dtype=np.int16)

    def flag(code: str, mask: np.ndarray) -> None:
        np.copyto(reason, np.int16(codes[code]), where=(reason == 0) & mask)

    cols: dict[str, pa.Array] = {}
    for c in spec.columns:
        if c.name in raw.column_names:
            cols[c.name], bad = coerce(raw.column(c.name).combine_chunks(), c)
            if bad.any():
                flag(f"unparseable:{c.name}", bad)
        else:
            cols[c.name] = pa.nulls(n, c.arrow_type())
    for name in _read_as_dictionary(spec):
        if not pa.types.is_dictionary(cols[name].type):  # stored as another type, or missing: encode here
            cols[name] = pc.dictionary_encode(cols[name].cast(pa.string()))
    for c in spec.columns:
        if c.required:
            flag(f"missing_required:{c.name}", cols[c.name].is_null().to_numpy(zero_copy_only=False))
    repaired: dict[str, int] = {}
    for c in spec.columns:
        if c.min is None and c.max is None:
            continue
        v = cols[c.name]
        if pa.types.is_dictionary(v.type):
            v = v.dictionary_decode()
        low = pc.less(v, c.min).fill_null(False) if c.min is not None else pa.repeat(False, n)
        high = pc.greater(v, c.max).fill_null(False) if c.max is not None else pa.repeat(False, n)
        bad = pc.or_(low, high).to_numpy(zero_copy_only=False)
        if c.on_out_of_range == "reject":
            flag(f"out_of_range:{c.name}", bad)
        else:
            if c.min is not None:
                v = pc.max_element_wise(v, pa.scalar(c.min).cast(v.type))
            if c.max is not None:
                v = pc.min_element_wise(v, pa.scalar(c.max).cast(v.type))
            cols[c.name] = v
            repaired[f"clipped:{c.name}"] = int((bad & (reason == 0)).sum())
    for c in spec.columns:
        if not c.allowed:
            continue
        v = cols[c.name]
        values = v.dictionary if pa.types.is_dictionary(v.type) else v
        unknown = pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=pa.array(c.allowed)))).to_numpy(
            zero_copy_only=False)
        if pa.types.is_dictionary(v.type):  # decided per dictionary entry; rows follow their index
            mapped = pc.if_else(pa.array(unknown), c.unknown_value, values)
            unknown = np.append(unknown, False)[v.indices.fill_null(len(values)).to_numpy(zero_copy_only=False)]
        if c.on_unknown == "reject":
            flag(f"unknown_category:{c.name}", unknown)
        else:
            cols[c.name] = pa.DictionaryArray.from_arrays(v.indices, mapped) if pa.types.is_dictionary(v.type) \
                else pc.if_else(pa.array(unknown), c.unknown_value, v)
            repaired[f"mapped_unknown:{c.name}"] = int((unknown & (reason == 0)).sum())
    ts = cols[spec.time_column].cast(pa.int64()).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        outside = ~((ts >= job.start_us) & (ts < job.end_us))  # null (NaN) is outside too
    flag("out_of_interval", outside)

    rejected = np.flatnonzero(reason > 0)
    meta: dict[str, Any] = {"chunk": chunk.index, "rows_in": n, "rejected": {}, "repaired": repaired,
                            "quarantine": None, "bytes_shuffled": 0}
    if len(rejected):
        names = np.array(reason_codes(spec), dtype=object)
        q = _raw_strings(raw, spec, rejected)
        q[Q_REASON] = pa.array(names[reason[rejected] - 1].tolist(), pa.string())
        q[Q_FILE] = pa.array(np.full(len(rejected), chunk.rel, dtype=object).tolist(), pa.string())
        q[Q_ROW] = pa.array(rejected + chunk.first_row, pa.int64())
        rel = f"rejects-f{chunk.file_index:05d}-c{chunk.index:05d}.parquet"
        entry = write_table(f"{job.quarantine_dir}/{rel}", pa.table(q, schema=quarantine_schema(spec)),
                            f"v={job.quarantine_version}/{rel}", crypto=job.crypto)
        meta["quarantine"] = entry
        vals, counts = np.unique(reason[rejected], return_counts=True)
        meta["rejected"] = {str(names[v - 1]): int(k) for v, k in zip(vals, counts, strict=True)}

    keep = np.flatnonzero(reason == 0)
    schema = shuffle_schema(spec)
    # Each valid row's split (md5 of its group value) is decided here, once per distinct value of the chunk's
    # dictionary-encoded group column, and rows are ordered by (bucket, split): the reduce reads each split's
    # rows as contiguous batches and never reorders them. Within a batch rows stay in source order.
    n_groups = len(GROUPS)
    split = split_assign(cols[spec.group_column], spec)[keep]  # dictionary-encoded: md5 per distinct value
    h = key_hash(pa.table({k: cols[k] for k in spec.key}), spec.key)[keep]
    part = (h % np.uint64(job.n_buckets)).astype(np.int64) * n_groups + split
    by_part = np.argsort(part, kind="stable")
    order = pa.array(keep[by_part])
    bounds = np.searchsorted(part[by_part], np.arange(job.n_buckets * n_groups + 1))
    # dictionary columns: an int take, then ids/strings are decoded (only the kept rows), categories stay encoded
    arrays = [cols[c.name].take(order).cast(schema.field(c.name).type) for c in spec.columns]
    arrays.append(pa.array(np.full(len(keep), chunk.file_index, dtype=np.int32)))
    arrays.append(pa.array(keep[by_part] + chunk.first_row, pa.int64()))
    arrays.append(pa.array(h[by_part], pa.uint64()))
    meta["shuffle"] = _write_shuffle(f"{job.shuffle_dir}/map-{chunk.index:05d}.arrow", arrays, bounds,
                                     shuffle_schema(spec), job.shuffle_compression)
    meta["bytes_shuffled"] = meta["shuffle"]["bytes"]
    return meta


def shuffle_schema(spec: DatasetSpec) -> pa.Schema:
    """The clean schema with dictionary-encoded categories, plus source file/row and key hash.

    Only ``category`` columns (few distinct values) cross the shuffle dictionary-encoded: every map
    file carries its own dictionaries and a reduce maps those of every map file, so a free-text or id
    column's dictionary (~ rows / 8 entries) would make each reduce's work grow with the interval.
    """
    dict_cols = {c.name for c in spec.columns if c.type == "category" and c.name in _read_as_dictionary(spec)}
    fields = [pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in dict_cols else f
              for f in spec.arrow_schema()]
    return pa.schema([*fields, pa.field(SRC_FILE, pa.int32()), pa.field(SRC_ROW, pa.int64()),
                      pa.field(KEY_HASH, pa.uint64())])


def _decoded(table: pa.Table) -> pa.Table:
    """Dictionary columns back to plain strings (chunk by chunk: the maps' dictionaries differ)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    return table


def _take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """Rows (ascending positions) of a chunked table, decoded; taken per batch, so no dictionary unification."""
    pieces, lo = [], 0
    for batch in table.to_batches():
        hi = lo + batch.num_rows
        local = rows[np.searchsorted(rows, lo):np.searchsorted(rows, hi)] - lo
        if len(local):
            pieces.append(_decoded(pa.Table.from_batches([batch.take(pa.array(local))])))
        lo = hi
    return pa.concat_tables(pieces) if pieces else _decoded(table.slice(0, 0))


def _write_shuffle(url: str, arrays: list[pa.Array], bounds: np.ndarray, schema: pa.Schema,
                   compression: str | None = None) -> dict[str, Any]:
    """A map task's valid rows as an Arrow IPC file with one record batch per bucket.

    The shuffle goes through the lake's (shared) storage instead of worker memory: the
    reduce of bucket j reads batch j of every map file (memory-mapped on a local lake, so
    pages come from the page cache and nothing is pickled, sent or spilled). Files are
    replaced atomically, so a map recomputed after a worker loss rewrites identical bytes
    under readers that are still mapping the old ones.
    """
    fs, path = fsspec.core.url_to_fs(url)
    local = is_local(fs)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if local else path
    options = pa.ipc.IpcWriteOptions(compression=compression)
    try:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with (pa.OSFile(tmp, "wb") if local else fs.open(tmp, "wb")) as sink, \
                pa.ipc.new_file(sink, schema, options=options) as writer:
            for j in range(len(bounds) - 1):
                lo, hi = int(bounds[j]), int(bounds[j + 1])
                writer.write_batch(pa.RecordBatch.from_arrays([a.slice(lo, hi - lo) for a in arrays], schema=schema))
        if local:
            os.replace(tmp, path)
    except OSError as exc:  # a full disk names the file (pyarrow says only "Error writing bytes to file")
        if local and os.path.exists(tmp):
            os.unlink(tmp)
        raise StorageError(url, exc) from exc
    return {"url": url, "rows": np.diff(bounds).astype(int).tolist(), "bytes": int(fs.size(path))}


def _read_shuffle(shuffle: dict[str, Any], j: int) -> pa.RecordBatch:
    """Batch `j` of one map task's shuffle file (zero-copy from a memory map on a local lake)."""
    fs, path = fsspec.core.url_to_fs(shuffle["url"])
    local = is_local(fs)
    source = pa.memory_map(path) if local else fs.open(path, "rb")
    return pa.ipc.open_file(source).get_batch(j)


def _key_codes(table: pa.Table, key: tuple[str, ...]) -> np.ndarray:
    """Dense int64 code per row, equal iff the key values are equal (null equals null); hash-based, no sort."""
    code = np.zeros(table.num_rows, dtype=np.int64)
    for k in key:
        enc = pc.dictionary_encode(table.column(k).combine_chunks())
        idx = enc.indices.fill_null(len(enc.dictionary)).to_numpy(zero_copy_only=False).astype(np.int64)
        code = code * (len(enc.dictionary) + 1) + idx
        if len(key) > 1:
            code = np.unique(code, return_inverse=True)[1].astype(np.int64)  # keep codes dense: no overflow
    return code


def _shared_hashes(h: np.ndarray) -> np.ndarray:
    """Positions whose 64-bit hash occurs more than once.

    A counting pass over the hashes' top bits (~4 slots per row, so ~1 row in 5 shares a slot) leaves few
    rows for the exact hash-table pass: 2-3x faster than hashing every row. Top bits, because a bucket's
    rows share their low bits (bucket = hash % buckets).
    """
    if len(h) < 2:
        return np.zeros(0, dtype=np.int64)
    bits = min(32, max(10, int(np.ceil(np.log2(len(h) * 4)))))
    slot = (h >> np.uint64(64 - bits)).astype(np.intp)
    maybe = np.flatnonzero(np.bincount(slot, minlength=1 << bits)[slot] > 1)
    codes = pc.dictionary_encode(pa.array(h[maybe])).indices.to_numpy()
    return maybe[np.bincount(codes)[codes] > 1]


def _write_quarantine(rows: pa.Table, reason: str, name: str, job: Job) -> FileEntry:
    """Rows of a reduce (with their source columns) -> one quarantine file with `reason`."""
    spec = job.spec
    q = {c.name: rows.column(c.name).combine_chunks().cast(pa.string()) for c in spec.columns}
    q[Q_REASON] = pa.array([reason] * rows.num_rows, pa.string())
    q[Q_FILE] = pc.take(pa.array(job.files, pa.string()), rows.column(SRC_FILE).combine_chunks())
    q[Q_ROW] = rows.column(SRC_ROW).combine_chunks()
    rel = f"{name}.parquet"
    return write_table(f"{job.quarantine_dir}/{rel}", pa.table(q, schema=quarantine_schema(spec)),
                       f"v={job.quarantine_version}/{rel}", crypto=job.crypto)


def dedupe_bucket(j: int, job: Job, *metas: dict[str, Any]) -> dict[str, Any]:
    """Reduce task: keep the first row per key, quarantine the rest, write the bucket's clean rows by split."""
    spec = job.spec
    schema = shuffle_schema(spec)
    n_groups = len(GROUPS)
    # The map ordered its rows by (bucket, split): batch j * 3 + g holds bucket j's rows of split g.
    parts = []
    for g in range(n_groups):
        i = j * n_groups + g
        batches = [_read_shuffle(m["shuffle"], i) for m in metas if m["shuffle"]["rows"][i]]
        parts.append(pa.Table.from_batches(batches, schema=schema))  # chunked: no copy of the mapped batches
    table = pa.concat_tables(parts)
    n = table.num_rows
    out: dict[str, Any] = {"bucket": j, "rows": 0, "duplicates": 0, "anomalies": 0, "clean": [],
                           "quarantine": None, "anomaly_quarantine": None, "by_split": dict.fromkeys(GROUPS, 0),
                           "state": None}
    if n == 0:
        return out
    # Survivor per key = first in (dedupe_order..., source file, source row): sort those numbers, not the keys.
    # Only rows whose key occurs more than once need ordering (a few percent): no full sort.
    # Candidates share a 64-bit key hash (from the map); exact key codes are computed for those rows only.
    dup = _shared_hashes(table.column(KEY_HASH).combine_chunks().to_numpy())
    keep = np.ones(n, dtype=bool)
    if len(dup):
        order_cols = (*spec.dedupe_order, SRC_FILE, SRC_ROW)
        sub = _take_rows(table.select([*spec.key, *order_cols]), dup)
        codes = _key_codes(sub, spec.key)
        rank = pc.sort_indices(sub, sort_keys=[(c, "ascending", "at_end") for c in order_cols]).to_numpy()
        _, first = np.unique(codes[rank], return_index=True)
        keep[dup] = False
        keep[dup[rank[first]]] = True
    losers = np.flatnonzero(~keep)
    if len(losers):
        out["quarantine"] = _write_quarantine(_take_rows(table, losers), "duplicate_key", f"duplicates-{j:05d}", job)
        out["duplicates"] = len(losers)
    flagged_parts: list[pa.Table] = []
    offsets = np.cumsum([0, *(p.num_rows for p in parts)])
    stat_cols = [c for c in features.source_columns(spec) if c in schema.names]
    for g, name in enumerate(GROUPS):
        # Survivors of split g: its contiguous batches minus the duplicates (a filter, no reorder), decoded
        # and written one map batch at a time, so the reduce never holds a filtered or decoded copy of the split.
        train_cols: list[pa.Table] = []
        pieces = _survivor_pieces(parts[g], keep[offsets[g]:offsets[g + 1]], job, flagged_parts,
                                  train_cols if name == "train" else None, stat_cols)
        head = next(pieces, None)
        if head is None:
            continue
        rel = f"{name}/part-{j:05d}.parquet"
        entry = write_tables(f"{job.clean_dir}/{rel}", head.schema, itertools.chain([head], pieces),
                             f"v={job.clean_version}/{rel}", group=name, crypto=job.crypto)
        out["clean"].append(entry)
        out["by_split"][name] = entry.rows
        out["rows"] += entry.rows
        if train_cols:  # train-only feature statistics, mergeable across buckets (categories counted encoded)
            out["state"] = features.partial_fit(pa.concat_tables(train_cols), spec, seed=j)
    if flagged_parts:
        from tasks.security import anomaly
        flagged = pa.concat_tables(flagged_parts)
        out["anomaly_quarantine"] = _write_quarantine(flagged, anomaly.REASON, f"anomalies-{j:05d}", job)
        out["anomalies"] = flagged.num_rows
    return out


def _survivor_pieces(part: pa.Table, mask: np.ndarray, job: Job, flagged: list[pa.Table],
                     stats: list[pa.Table] | None, stat_cols: list[str]) -> Iterator[pa.Table]:
    """Per map batch of one split: kept rows, anomaly-screened, decoded, without the shuffle columns.

    Rows the anomaly model flags go to `flagged`; `stats` (train) collects the feature columns of the
    written rows, still dictionary-encoded (decoded when the anomaly screen ran: it scores decoded rows).
    """
    lo = 0
    for batch in part.to_batches():
        m = mask[lo:lo + batch.num_rows]
        lo += batch.num_rows
        encoded = pa.Table.from_batches([batch if m.all() else batch.filter(pa.array(m))])
        if not encoded.num_rows:
            continue
        rows = _decoded(encoded)
        if job.anomaly is not None:
            # Poisoned-data guard: survivors an IsolationForest fitted on earlier intervals flags go to quarantine.
            from tasks.security import anomaly
            rows, bad = anomaly.split_table(rows, job.anomaly)
            if bad.num_rows:
                flagged.append(bad)
            encoded = rows  # the screened survivors: statistics must count only rows that are written
            if not rows.num_rows:
                continue
        if stats is not None:
            stats.append(encoded.select(stat_cols))
        yield rows.drop_columns([SRC_FILE, SRC_ROW, KEY_HASH])


def _reduce_meta(out: dict[str, Any]) -> dict[str, Any]:
    """A reduce result without its (larger) feature statistics, for the client."""
    return {k: v for k, v in out.items() if k != "state"} | {"has_train": out["state"] is not None}


def _reduce_state(out: dict[str, Any]) -> Any:
    return out["state"]


def _merge_tree(client: Client, states: list[Any], prefix: str) -> Any:
    """Merge partial feature statistics on the cluster, MERGE_FANIN at a time."""
    level = 0
    while len(states) > 1:
        states = [client.submit(features.merge, *states[i:i + MERGE_FANIN], key=f"{prefix}-{level}-{i}")
                  for i in range(0, len(states), MERGE_FANIN)]
        level += 1
    return states[0]


# ---- the step ---------------------------------------------------------------------------------
def _inspect(lake: Lake, files: list[str], spec: DatasetSpec, chunk_rows: int) -> tuple[list[Chunk], int, int]:
    """Footers of all raw files: chunks, total rows, total bytes. Raises naming the bad file."""
    chunks: list[Chunk] = []
    total_rows = total_bytes = 0
    for fi, path in enumerate(files):
        rel = _rel(lake, path)
        size = lake.fs.size(path)
        if not size:
            raise CleanError(f"{rel}: empty file (0 bytes), not a Parquet file")
        try:
            with lake.fs.open(path, "rb") as fh:
                md = pq.ParquetFile(fh).metadata
                schema = md.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as exc:
            raise CleanError(f"{rel}: corrupt or truncated Parquet file: {exc}") from exc
        for c in spec.columns:
            if c.name not in schema.names:
                if c.required:
                    raise CleanError(f"{rel}: required column {c.name!r} is missing (spec {spec.name})")
                log.warning("%s: optional column %r is missing; it will be null", rel, c.name)
                continue
            check_coercible(schema.field(c.name).type, c, rel)
        extra = sorted(set(schema.names) - set(spec.column_names))
        if extra:
            log.warning("%s: columns %s are not in the spec and are dropped", rel, extra)
        if md.num_rows == 0:
            log.warning("%s: file has no rows", rel)
        total_rows += md.num_rows
        total_bytes += size
        url = lake.full_url(path)
        group: list[int] = []
        first = acc = 0
        for rg in range(md.num_row_groups):
            rg_rows = md.row_group(rg).num_rows
            if group and acc + rg_rows > chunk_rows:
                chunks.append(Chunk(len(chunks), fi, url, rel, tuple(group), first, acc))
                first, acc, group = first + acc, 0, []
            group.append(rg)
            acc += rg_rows
        if group:
            chunks.append(Chunk(len(chunks), fi, url, rel, tuple(group), first, acc))
    return chunks, total_rows, total_bytes


class _Sampler:
    """Peak worker memory and spilled bytes, sampled from the scheduler's worker metrics."""

    def __init__(self, client: Client):
        self.client = client
        self.peak = 0
        self.arrow_peak = 0
        self.spilled = 0
        self.last_log = 0.0

    def sample(self) -> None:
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # noqa: BLE001 - a missed sample must not fail the step
            return
        on_disk = 0
        for w in workers.values():
            m = w.get("metrics", {})
            self.peak = max(self.peak, int(m.get("memory", 0) or 0))
            sp = m.get("spilled_bytes", {})
            on_disk += int(sp.get("disk", 0) or 0) if isinstance(sp, dict) else 0
        self.spilled = max(self.spilled, on_disk)  # most bytes held on disk at once, all workers together


def _arrow_peak() -> int:
    return int(pa.default_memory_pool().max_memory() or 0)


def _run_graph(client: Client, chunks: list[Chunk], job: Job) -> tuple[list, list, Any, _Sampler]:
    """Submit map + shuffle + reduce tasks; wait with progress logging.

    Returns (map metas, reduce metas, merged train feature-statistics state or None, sampler).
    """
    P = job.n_buckets
    v = job.clean_version
    sampler = _Sampler(client)
    metas = [client.submit(clean_chunk, c, job, key=f"clean-map-{v}-{c.index}", pure=False) for c in chunks]
    # reduces depend on the small map metas only: the rows travel through the shuffle files
    reduces = [client.submit(dedupe_bucket, j, job, *metas, key=f"clean-reduce-{v}-{j}") for j in range(P)]
    reduce_metas = [client.submit(_reduce_meta, r, key=f"clean-rmeta-{v}-{j}") for j, r in enumerate(reduces)]
    pending = metas + reduce_metas
    t0 = time.monotonic()
    while True:
        try:
            wait(pending, timeout=1.0)
            finished = True
        except TimeoutError:
            finished = False
        sampler.sample()
        if not finished:  # give back workers the unfinished tasks can no longer use (tasks.resources.cluster.drain)
            drain.release_on_drain(client, sum(not f.done() for f in metas) + sum(not f.done() for f in reduces))
        now = time.monotonic()
        if finished or now - sampler.last_log > 5:
            sampler.last_log = now
            log.info("clean progress: map %d/%d, dedupe + split %d/%d (%.0fs)", sum(f.done() for f in metas),
                     len(metas), sum(f.done() for f in reduce_metas), len(reduces), now - t0)
        if finished or any(f.status in ("error", "cancelled") for f in pending):  # gather raises it
            break
    map_out, reduce_out = client.gather(metas), client.gather(reduce_metas)
    try:  # Arrow's own high-water mark per worker process (allocator retention excluded): the working set
        sampler.arrow_peak = max(client.run(_arrow_peak).values(), default=0)
    except Exception:  # noqa: BLE001 - a worker lost at the end must not fail the step
        sampler.arrow_peak = 0
    with_train = [client.submit(_reduce_state, r, key=f"clean-state-{v}-{j}")
                  for j, (r, o) in enumerate(zip(reduces, reduce_out, strict=True)) if o["has_train"]]
    state = client.gather(_merge_tree(client, with_train, f"clean-merge-{v}")) if with_train else None
    return map_out, reduce_out, state, sampler


def run(ctx: StepContext) -> dict[str, Any]:
    spec, lake = ctx.spec, ctx.lake
    files = lake.raw_files(ctx.dataset, ctx.ds)
    if not files:
        where = lake.interval_dir("raw", ctx.dataset, ctx.ds)
        raise CleanError(f"no raw files for {ctx.dataset} ds={ctx.ds} under {where}")
    start_us = int(ctx.interval_start.timestamp() * 1_000_000)
    end_us = int(ctx.interval_end.timestamp() * 1_000_000)
    params = ctx.cache_params(__name__)
    fp = fingerprint(lake.files_fingerprint(files), spec.fingerprint(), start_us, end_us, _anomaly_history(ctx))
    code = code_version(__name__)
    committed = lake.manifests(ctx.dataset, ctx.ds, ("clean", "quarantine"))  # one commit record: both or neither
    hit = committed["clean"]
    if all(m is not None and lake.same_output(m, fp, code, params) for m in committed.values()):
        log.info("clean %s ds=%s: cache hit (version %s)", ctx.dataset, ctx.ds, hit.version)
        return {"cache_hit": True, "version": hit.version, **hit.extra.get("result", {})}

    chunks, total_rows, total_bytes = _inspect(lake, files, spec, int(ctx.param("chunk_rows")))
    n_buckets = int(ctx.param("partitions")) or max(
        1, math.ceil(total_bytes / int(ctx.param("target_file_bytes"))))
    crypto = ctx.crypto()
    model = _anomaly_model(ctx)
    cver, cdir = lake.new_version("clean", ctx.dataset, ctx.ds)
    qver, qdir = lake.new_version("quarantine", ctx.dataset, ctx.ds)
    files_rel = tuple(_rel(lake, p) for p in files)
    job = Job(spec, start_us, end_us, n_buckets, lake.full_url(cdir), lake.full_url(qdir), cver, qver, crypto,
              files_rel, model, lake.full_url(f"{cdir}/{SHUFFLE_DIR}"),
              None if ctx.param("shuffle_compression") == "none" else ctx.param("shuffle_compression"))
    log.info("clean %s ds=%s: %d files, %d rows, %.1f MB -> %d map tasks, %d dedupe buckets",
             ctx.dataset, ctx.ds, len(files), total_rows, total_bytes / 1e6, len(chunks), n_buckets)
    try:
        with client_for(ctx.cluster, ctx.plan("clean")) as client:
            size = describe(client)
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
            per_worker_limit = max((w.get("memory_limit") or 0 for w in workers.values()), default=0)
            metas, reduces, train_state, sampler = _run_graph(client, chunks, job)
            sampler.sample()
        if lake.fs.exists(f"{cdir}/{SHUFFLE_DIR}"):
            lake.fs.rm(f"{cdir}/{SHUFFLE_DIR}", recursive=True)
        rejected: dict[str, int] = {}
        repaired: dict[str, int] = {}
        for m in metas:
            for k, v in m["rejected"].items():
                rejected[k] = rejected.get(k, 0) + v
            for k, v in m["repaired"].items():
                repaired[k] = repaired.get(k, 0) + v
        dups = sum(r["duplicates"] for r in reduces)
        if dups:
            rejected["duplicate_key"] = dups
        anomalies = sum(r["anomalies"] for r in reduces)
        anomaly_result = None
        if model is not None:
            from tasks.security import anomaly
            rejected[anomaly.REASON] = anomalies
            # rate over the rows the model scored; policy fail raises here, before anything is committed
            anomaly_result = anomaly.judge(ctx, sum(r["rows"] for r in reduces) + anomalies, anomalies)
            anomaly_result["history_intervals"] = model.history_intervals
        rows_in = sum(m["rows_in"] for m in metas)
        rows_clean = sum(r["rows"] for r in reduces)
        rows_rejected = sum(rejected.values())
        if rows_in != total_rows or rows_in != rows_clean + rows_rejected:
            raise CleanError(f"row accounting failed for {ctx.dataset} ds={ctx.ds}: footers say {total_rows}, read "
                             f"{rows_in}, clean {rows_clean} + rejected {rows_rejected}")
        clean_files = [e for r in reduces for e in r["clean"]]
        q_files = [m["quarantine"] for m in metas if m["quarantine"] is not None]
        q_files += [r["quarantine"] for r in reduces if r["quarantine"] is not None]
        q_files += [r["anomaly_quarantine"] for r in reduces if r["anomaly_quarantine"] is not None]
        accounting = {
            "rows_in": rows_in, "rows_clean": rows_clean, "rows_rejected": rows_rejected,
            "rejected_by_reason": dict(sorted(rejected.items())), "repaired_by_rule": dict(sorted(repaired.items())),
            "bytes_read": total_bytes, "bytes_written": sum(f.bytes for f in clean_files + q_files),
            "bytes_shuffled": sum(m["bytes_shuffled"] for m in metas), "files_in": len(files),
        }
        metrics = StepMetrics(
            input_bytes=total_bytes, input_rows=total_rows, output_rows=rows_clean, bytes_read=total_bytes,
            bytes_written=accounting["bytes_written"], bytes_shuffled=accounting["bytes_shuffled"],
            partitions=len(chunks), **(cluster_metrics(size) | {"memory_limit": per_worker_limit}),
            peak_memory_per_worker=sampler.peak, spilled_bytes=sampler.spilled,
        )
        result = {
            # the accounting's rows_in and rows_clean are input_rows and output_rows at the top level
            **{k: v for k, v in accounting.items() if k not in ("rows_in", "rows_clean")},
            "accounting": accounting, "clean_version": cver, "quarantine_version": qver,
            "files_out": len(clean_files), "quarantine_files": len(q_files), "buckets": n_buckets,
            "arrow_peak_per_worker": sampler.arrow_peak, **metrics.to_json(),
        }
        if rows_clean == 0:
            log.warning("clean %s ds=%s: every row was rejected", ctx.dataset, ctx.ds)
        common = {"input_fingerprint": fp, "code_version": code, "params": params}
        quarantine = Manifest("quarantine", ctx.dataset, ctx.ds, qver, files=_sorted(q_files), **common,
                              extra={"accounting": accounting, "reasons": reason_codes(spec)})
        by_split = {g: sum(r["by_split"][g] for r in reduces) for g in GROUPS}
        result["split_rows"] = by_split
        extra = {"accounting": accounting, "result": result, "schema": spec.arrow_schema().names,
                 "split": {"rows": by_split, "salt": spec.split.salt,
                           "ratios": {"train": spec.split.train, "val": spec.split.val, "test": spec.split.test},
                           "feature_stats": features.finalize(train_state, spec) if train_state is not None else None}}
        if anomaly_result is not None:
            extra["anomaly"] = anomaly_result
        # ONE commit record makes clean and quarantine visible together (or neither: the previous commit stays);
        # a run that was superseded meanwhile by a newer run of the interval is refused here (FencedError).
        lake.commit(Manifest("clean", ctx.dataset, ctx.ds, cver, files=_sorted(clean_files), **common, extra=extra),
                    quarantine)
    except BaseException:
        # only this run's own folders; the lake keeps any version a commit references
        lake.discard("clean", ctx.dataset, ctx.ds, cver)
        lake.discard("quarantine", ctx.dataset, ctx.ds, qver)
        raise
    log.info("clean %s ds=%s: %d in -> %d clean + %d rejected %s", ctx.dataset, ctx.ds, rows_in, rows_clean,
             rows_rejected, accounting["rejected_by_reason"])
    return {"cache_hit": False, **result, **reachable_dashboard(ctx.cluster, size)}  # not in the manifest: live


def _anomaly_history(ctx: StepContext) -> list[tuple[str, str]]:
    """The committed earlier intervals the anomaly model learns from: part of the input fingerprint."""
    if not ctx.param("anomaly_check"):
        return []
    n = int(ctx.param("anomaly_history_intervals"))
    earlier = [d for d in ctx.lake.intervals("clean", ctx.dataset) if d < ctx.ds][-n:]
    return [(d, ctx.lake.require("clean", ctx.dataset, d).version) for d in earlier]


def _anomaly_model(ctx: StepContext) -> Any:
    """IsolationForest fitted on earlier committed intervals, unless Param `anomaly_check` is off."""
    if not ctx.param("anomaly_check"):
        return None
    from tasks.security import anomaly  # lazy: scikit-learn only when there is history to fit
    return anomaly.fit_for_context(ctx)


def _sorted(entries: list[FileEntry]) -> list[FileEntry]:
    return sorted(entries, key=lambda e: e.path)


def _rel(lake: Lake, path: str) -> str:
    return path[len(lake.root) + 1:] if path.startswith(lake.root + "/") else path
