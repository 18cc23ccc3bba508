"""Per-chunk evaluation (runs on Dask workers) and the exact merge of partial results.

A chunk is a run of row groups of one Parquet file. For every row-level expectation a
chunk reports element/missing/unexpected counts and a few unexpected examples; for
uniqueness it hash-partitions the key values into buckets (counted exactly by reduce
tasks); for drift it reports a profile (fine histograms, category counts, null counts,
min/max/sum). Merging is plain addition, so the merged counts are over all rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.io import parquet as parquet_io
from tasks.io.hashing import hash_strings
from tasks.io.hashing import key_hash as hashing_key_hash

log = logging.getLogger(__name__)

ROW_LEVEL = {
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
}
UNIQUE = {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"}
MAX_EXAMPLES = 20
HIST_BINS = 2048  # fine bins; drift coarsens them into ~10 bins of equal previous mass


@dataclass
class Chunk:
    """One unit of work: row groups `row_groups` of file `url`."""

    url: str
    row_groups: list[int]
    rows: int
    chunk_id: int
    columns: list[str]  # columns present in this file


@dataclass
class Profile:
    """What drift needs from a chunk: fine histograms over [lo, hi], category counts, null counts."""

    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)
    category: list[str] = field(default_factory=list)
    nulls: list[str] = field(default_factory=list)

    def columns(self) -> set[str]:
        return set(self.numeric) | set(self.category) | set(self.nulls)


def exp_columns(exp: dict[str, Any]) -> list[str]:
    kw = exp["kwargs"]
    if "column" in kw:
        return [kw["column"]]
    return list(kw.get("column_list", []))


def _to_py(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    return v


def _as_timestamp(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    t = arr.type
    if pa.types.is_timestamp(t) and t.tz is None:
        arr = pc.assume_timezone(arr, "UTC")  # naive raw timestamps are UTC by convention
    return pc.cast(arr, pa.timestamp("us", tz="UTC"))


def _bound(v: Any, ts: bool) -> pa.Scalar | None:
    if v is None:
        return None
    if ts:
        dt = datetime.fromisoformat(v) if isinstance(v, str) else v
        return pa.scalar(dt, type=pa.timestamp("us", tz="UTC"))
    return pa.scalar(float(v), type=pa.float64())


def unexpected_mask(table: pa.Table, exp: dict[str, Any]) -> tuple[pa.Array, pa.Array]:
    """(missing, unexpected) boolean masks of one row-level expectation over `table`.

    GX semantics: not_null counts nulls as unexpected (nothing is "missing"); the others
    ignore nulls (missing) and count non-null values that break the rule.
    """
    kind, kw = exp["type"], exp["kwargs"]
    col = table.column(kw["column"])
    isnull = pc.is_null(col)
    if kind == "expect_column_values_to_not_be_null":
        return pc.and_(isnull, pa.scalar(False)), isnull
    if kind == "expect_column_values_to_be_between":
        ts = pa.types.is_timestamp(col.type)
        vals = _as_timestamp(col) if ts else pc.cast(col, pa.float64())
        ok = pc.is_valid(vals)
        lo, hi = _bound(kw.get("min_value"), ts), _bound(kw.get("max_value"), ts)
        if lo is not None:
            ok = pc.and_kleene(ok, (pc.greater if kw.get("strict_min") else pc.greater_equal)(vals, lo))
        if hi is not None:
            ok = pc.and_kleene(ok, (pc.less if kw.get("strict_max") else pc.less_equal)(vals, hi))
        return isnull, pc.and_(pc.invert(isnull), pc.invert(pc.fill_null(ok, False)))
    if kind == "expect_column_values_to_be_in_set":
        vals = pc.cast(col, pa.string())
        norm = (exp.get("meta") or {}).get("leptonflow", {})
        if norm.get("trim"):
            vals = pc.utf8_trim_whitespace(vals)
        if norm.get("normalize") == "lower":
            vals = pc.utf8_lower(vals)
        elif norm.get("normalize") == "upper":
            vals = pc.utf8_upper(vals)
        inset = pc.is_in(vals, value_set=pa.array([str(v) for v in kw["value_set"]], pa.string()))
        return isnull, pc.and_(pc.invert(isnull), pc.invert(pc.fill_null(inset, False)))
    raise ValueError(f"{kind} is not a row-level expectation leptonflow evaluates per chunk")


def _min_max_sum(col: pa.ChunkedArray) -> dict[str, Any]:
    """min/max (and sum/count for numbers) of a column: merged into the result's observed range and mean."""
    ts = pa.types.is_timestamp(col.type)
    vals = _as_timestamp(col) if ts else pc.cast(col, pa.float64())
    mm = pc.min_max(vals)
    out = {"min": mm["min"].as_py(), "max": mm["max"].as_py(), "count": pc.count(vals).as_py(), "sum": None}
    if not ts:
        out["sum"] = pc.sum(vals).as_py() or 0.0
    return out


def merge_observed(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return dict(b)
    # a mean needs every chunk's sum: one chunk settled by statistics (no sum) drops it
    out = {
        "count": a["count"] + b["count"],
        "sum": None if a["sum"] is None or b["sum"] is None else a["sum"] + b["sum"],
    }
    for k, f in (("min", min), ("max", max)):
        vals = [v for v in (a[k], b[k]) if v is not None]
        out[k] = f(vals) if vals else None
    return out


def _examples(col: pa.ChunkedArray, mask: pa.Array) -> list[Any]:
    picked = pc.filter(col, mask)
    return [_to_py(v) for v in picked.slice(0, MAX_EXAMPLES).to_pylist()]


def read_chunk(chunk: Chunk, crypto: Any, columns: list[str] | None) -> pa.Table:
    pf = parquet_io.open_parquet(chunk.url, crypto)
    try:
        return pf.read_row_groups(chunk.row_groups, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise parquet_io.ParquetReadError(f"{chunk.url}: row groups {chunk.row_groups}: {exc}") from exc


def hash_values(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Stable 64-bit hash of each value (as UTF-8 text); see :mod:`tasks.io.hashing`."""
    return hash_strings(arr)


def key_hash(keys: pa.Table) -> np.ndarray:
    """64-bit hash of each row's (compound) key."""
    return hashing_key_hash(keys, keys.column_names)


def _bucket_of(keys: pa.Table, n_buckets: int) -> np.ndarray:
    return (key_hash(keys) % np.uint64(n_buckets)).astype(np.int64)


def _valid_keys(table: pa.Table, key_columns: list[str]) -> pa.Table:
    keys = table.select(key_columns)
    valid = pc.is_valid(keys.column(key_columns[0]))
    for k in key_columns[1:]:
        valid = pc.and_(valid, pc.is_valid(keys.column(k)))
    return keys.filter(valid)


def profile_table(
    table: pa.Table, prof: Profile, known_nulls: dict[str, int] | None = None, rows: int | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rows": table.num_rows if rows is None else rows,
        "hist": {},
        "stats": {},
        "cats": {},
        "nulls": dict(known_nulls or {}),
    }
    names = set(table.column_names)
    for c, (lo, hi) in prof.numeric.items():
        if c not in names:
            continue
        v = pc.cast(table.column(c), pa.float64()).to_numpy(zero_copy_only=False)
        v = v[~np.isnan(v)]
        idx = np.clip(((v - lo) / (hi - lo) * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1) if hi > lo else v * 0
        out["hist"][c] = np.bincount(idx.astype(np.int64), minlength=HIST_BINS)
        out["stats"][c] = {
            "count": int(v.size),
            "sum": float(v.sum()),
            "min": float(v.min()) if v.size else None,
            "max": float(v.max()) if v.size else None,
        }
    for c in prof.category:
        if c in names:
            vc = pc.value_counts(pc.drop_null(table.column(c)))
            out["cats"][c] = dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True))
    for c in prof.nulls:
        if c in names and c not in out["nulls"]:
            out["nulls"][c] = table.column(c).null_count
    return out


def _stat_ok(v: Any, bound: Any, strict: bool, low: bool) -> bool:
    return (v > bound if strict else v >= bound) if low else (v < bound if strict else v <= bound)


@dataclass
class _GroupStats:
    """What a chunk's row-group statistics say about one column: its null count and per-group min/max."""

    nulls: int = 0
    lo_seen: list[Any] = field(default_factory=list)
    hi_seen: list[Any] = field(default_factory=list)


def _group_stats(md: Any, chunk: Chunk, j: int, min_max: bool) -> _GroupStats | None:
    """Column `j`'s statistics over the chunk's row groups (with min/max when `min_max`), or None if any lacks them."""
    out = _GroupStats()
    for g in chunk.row_groups:
        st = md.row_group(g).column(j).statistics
        if st is None or not st.has_null_count:
            return None
        out.nulls += st.null_count
        if min_max:
            if not st.has_min_max:
                return None
            out.lo_seen.append(st.min)
            out.hi_seen.append(st.max)
    return out


def _stat_value(v: Any, ts: bool) -> Any:
    """A statistic or bound as a comparable value: an aware datetime for timestamps, else a float."""
    if ts:
        dt = datetime.fromisoformat(v) if isinstance(v, str) else v
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)  # naive raw timestamps are UTC
    return float(v)


def _range_from_statistics(
    chunk: Chunk, kw: dict[str, Any], stats: _GroupStats, arrow_type: pa.DataType
) -> dict[str, Any] | None:
    """Counts of a range rule when the statistics prove every value inside the bounds (int/timestamp only), or None."""
    ts = pa.types.is_timestamp(arrow_type)
    if not (ts or pa.types.is_integer(arrow_type)) or not stats.lo_seen:
        return None
    vmin, vmax = _stat_value(min(stats.lo_seen), ts), _stat_value(max(stats.hi_seen), ts)
    lo, hi = kw.get("min_value"), kw.get("max_value")
    if lo is not None and not _stat_ok(vmin, _stat_value(lo, ts), kw.get("strict_min"), True):
        return None
    if hi is not None and not _stat_ok(vmax, _stat_value(hi, ts), kw.get("strict_max"), False):
        return None
    observed = {
        "min": vmin if ts else min(stats.lo_seen),
        "max": vmax if ts else max(stats.hi_seen),
        "count": chunk.rows - stats.nulls,
        "sum": None,
    }
    return {
        "element_count": chunk.rows,
        "missing_count": stats.nulls,
        "unexpected_count": 0,
        "examples": [],
        "observed": observed,
    }


def _from_statistics(pf: Any, chunk: Chunk, e: dict[str, Any], arrow_type: pa.DataType) -> dict[str, Any] | None:
    """Counts of a not-null or range rule proven from the chunk's row-group statistics alone, or None.

    Null counts in Parquet statistics are exact, so not-null never needs the column. A range rule
    is proven only when every row group's min/max lies inside the bounds, and only for int and
    timestamp columns (float statistics leave NaN out). Anything unproven is read and counted.
    """
    md = pf.metadata
    col = exp_columns(e)[0]
    j = next((k for k in range(md.num_columns) if md.schema.column(k).path == col), None)
    if j is None:
        return None
    stats = _group_stats(md, chunk, j, e["type"] == "expect_column_values_to_be_between")
    if stats is None:
        return None
    if e["type"] == "expect_column_values_to_not_be_null":
        return {
            "element_count": chunk.rows,
            "missing_count": 0,
            "unexpected_count": stats.nulls,
            "examples": [None] * min(stats.nulls, MAX_EXAMPLES),
        }
    return _range_from_statistics(chunk, e["kwargs"], stats, arrow_type)


def _null_counts(pf: Any, chunk: Chunk, columns: list[str]) -> dict[str, int]:
    """Exact null counts from row-group statistics, for the columns whose statistics have them."""
    md = pf.metadata
    index = {md.schema.column(k).path: k for k in range(md.num_columns)}
    out = {}
    for c in columns:
        if c not in index:
            continue
        stats = [md.row_group(g).column(index[c]).statistics for g in chunk.row_groups]
        if all(st is not None and st.has_null_count for st in stats):
            out[c] = sum(st.null_count for st in stats)
    return out


def _settle_from_statistics(
    pf: Any, chunk: Chunk, exps: list[dict[str, Any]], part: dict[str, Any]
) -> list[dict[str, Any]]:
    """Record in `part` the rules naming a column the file lacks (as errors) and the row-level rules the
    row-group statistics settle (as counts); return the row-level rules left to count on the data."""
    present = set(chunk.columns)
    schema = pf.schema_arrow
    todo = []
    for e in exps:
        missing_cols = [c for c in exp_columns(e) if c not in present]
        if missing_cols:
            part["errors"][e["i"]] = f"column {missing_cols[0]!r} not found in {chunk.url}"
            continue
        if e["type"] not in ROW_LEVEL:
            continue
        proven = _from_statistics(pf, chunk, e, schema.field(exp_columns(e)[0]).type)
        if proven is not None:
            part["exp"][e["i"]] = proven
        else:
            todo.append(e)
    return todo


def _read_needed(
    pf: Any, chunk: Chunk, todo: list[dict[str, Any]], profile: Profile, key_columns: list[str],
    known_nulls: dict[str, int],
) -> pa.Table:
    """The chunk's row groups, only the columns the unsettled rules, the keys and the profile need."""
    wanted = {c for e in todo for c in exp_columns(e)} | set(key_columns)
    wanted |= set(profile.numeric) | set(profile.category) | (set(profile.nulls) - set(known_nulls))
    try:
        return pf.read_row_groups(chunk.row_groups, columns=[c for c in chunk.columns if c in wanted])
    except (OSError, pa.ArrowException) as exc:
        raise parquet_io.ParquetReadError(f"{chunk.url}: row groups {chunk.row_groups}: {exc}") from exc


def _count_rule(table: pa.Table, e: dict[str, Any], chunk: Chunk) -> tuple[dict[str, Any] | None, str | None]:
    """(counts, None) of one row-level rule over the chunk's rows, or (None, why) when the column cannot be
    evaluated (a type the rule does not apply to)."""
    try:
        missing, unexpected = unexpected_mask(table, e)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        col = exp_columns(e)[0]
        return None, f"column {col!r} in {chunk.url} ({table.schema.field(col).type}): {exc}"
    n_unexp = pc.sum(unexpected).as_py() or 0
    counts = {
        "element_count": chunk.rows,
        "missing_count": pc.sum(missing).as_py() or 0,
        "unexpected_count": n_unexp,
        "examples": _examples(table.column(exp_columns(e)[0]), unexpected) if n_unexp else [],
    }
    if e["type"] == "expect_column_values_to_be_between":
        counts["observed"] = _min_max_sum(table.column(exp_columns(e)[0]))
    return counts, None


def _key_buckets(
    table: pa.Table, chunk: Chunk, key_columns: list[str], n_buckets: int
) -> tuple[int, list[np.ndarray]] | None:
    """(rows with a null key part, the non-null keys' 64-bit hashes per bucket), or None when the chunk
    checks no uniqueness (no key, or a key column missing from its file)."""
    present = set(chunk.columns)
    if not (key_columns and all(k in present for k in key_columns)):
        return None
    keys = _valid_keys(table, key_columns)
    # Uniqueness, round 1: only 64-bit key hashes travel, hash-partitioned into buckets.
    h = key_hash(keys)
    b = h % np.uint64(n_buckets)
    return chunk.rows - keys.num_rows, [h[b == j] for j in range(n_buckets)]


def evaluate_chunk(
    chunk: Chunk,
    crypto: Any,
    exps: list[dict[str, Any]],
    profile: Profile,
    key_columns: list[str],
    n_buckets: int,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Partial results of one chunk, and its key hashes hash-partitioned into `n_buckets`.

    Rules the row-group statistics settle (see :func:`_from_statistics`) are counted without
    reading their columns; the rest is read once, only the columns needed.
    """
    pf = parquet_io.open_parquet(chunk.url, crypto)
    part: dict[str, Any] = {"rows": chunk.rows, "exp": {}, "errors": {}}
    todo = _settle_from_statistics(pf, chunk, exps, part)
    known_nulls = _null_counts(pf, chunk, profile.nulls)
    table = _read_needed(pf, chunk, todo, profile, key_columns, known_nulls)
    for e in todo:
        counts, err = _count_rule(table, e, chunk)
        if err is not None:
            part["errors"][e["i"]] = err
        else:
            part["exp"][e["i"]] = counts
    part["profile"] = profile_table(table, profile, known_nulls, chunk.rows)
    keyed = _key_buckets(table, chunk, key_columns, n_buckets)
    if keyed is None:
        return part, []
    part["key_missing"], buckets = keyed
    return part, buckets


def first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def bucket(pair: tuple[Any, list[np.ndarray]], j: int) -> np.ndarray | None:
    return pair[1][j] if pair[1] else None


def candidate_hashes(*arrays: np.ndarray | None) -> np.ndarray:
    """Key hashes seen more than once in one bucket: the only keys that can be duplicates."""
    parts = [a for a in arrays if a is not None and a.size]
    if not parts:
        return np.zeros(0, dtype=np.uint64)
    values, counts = np.unique(np.concatenate(parts), return_counts=True)
    return values[counts > 1]


def keys_with_hashes(chunk: Chunk, crypto: Any, key_columns: list[str], candidates: np.ndarray) -> pa.Table | None:
    """Uniqueness, round 2 (only when round 1 found candidates): the actual keys whose hash is a candidate."""
    if not all(k in chunk.columns for k in key_columns):
        return None
    keys = _valid_keys(read_chunk(chunk, crypto, key_columns), key_columns)
    return keys.filter(pa.array(np.isin(key_hash(keys), candidates)))


def count_duplicates(*tables: pa.Table | None) -> dict[str, Any]:
    """Rows whose key occurs more than once (GX counts every occurrence), compared on the exact key values.

    Fed with the candidate keys of round 2, so a 64-bit hash collision never counts as a duplicate.
    """
    parts = [t for t in tables if t is not None and t.num_rows]
    if not parts:
        return {"unexpected_count": 0, "examples": []}
    t = pa.concat_tables(parts).combine_chunks()  # contiguous buffers for Acero's group_by
    cols = t.column_names
    g = t.group_by(cols).aggregate([([], "count_all")])
    dup = g.filter(pc.greater(g.column("count_all"), 1))
    ex = dup.slice(0, MAX_EXAMPLES).select(cols).to_pylist()
    examples = [r[cols[0]] if len(cols) == 1 else r for r in ex]
    return {"unexpected_count": int(pc.sum(dup.column("count_all")).as_py() or 0), "examples": examples}


def merge_partials(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum of partial results over chunks (in chunk order, so examples are deterministic)."""
    out: dict[str, Any] = {"rows": 0, "exp": {}, "errors": {}, "key_missing": 0}
    for p in parts:
        out["rows"] += p["rows"]
        out["key_missing"] += p.get("key_missing", 0)
        for i, msg in p["errors"].items():
            out["errors"].setdefault(i, []).append(msg)
        for i, r in p["exp"].items():
            m = out["exp"].setdefault(
                i, {"element_count": 0, "missing_count": 0, "unexpected_count": 0, "examples": []}
            )
            for k in ("element_count", "missing_count", "unexpected_count"):
                m[k] += r[k]
            if len(m["examples"]) < MAX_EXAMPLES:
                m["examples"] += r["examples"][: MAX_EXAMPLES - len(m["examples"])]
            if "observed" in r:
                m["observed"] = merge_observed(m.get("observed"), r["observed"])
    out["profile"] = merge_profiles([p["profile"] for p in parts])
    return out


def merge_profiles(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": 0, "hist": {}, "stats": {}, "cats": {}, "nulls": {}}
    for p in profiles:
        out["rows"] += p["rows"]
        for c, h in p["hist"].items():
            out["hist"][c] = out["hist"][c] + h if c in out["hist"] else h.copy()
        for c, s in p["stats"].items():
            m = out["stats"].setdefault(c, {"count": 0, "sum": 0.0, "min": None, "max": None})
            m["count"] += s["count"]
            m["sum"] += s["sum"]
            for k, f in (("min", min), ("max", max)):
                if s[k] is not None:
                    m[k] = s[k] if m[k] is None else f(m[k], s[k])
        for c, vc in p["cats"].items():
            m = out["cats"].setdefault(c, {})
            for v, n in vc.items():
                m[v] = m.get(v, 0) + n
        for c, n in p["nulls"].items():
            out["nulls"][c] = out["nulls"].get(c, 0) + n
    for s in out["stats"].values():
        s["mean"] = s["sum"] / s["count"] if s["count"] else None
    return out


def quarantine_chunk(
    chunk: Chunk, crypto: Any, exps: list[dict[str, Any]], url: str, rel_path: str, write_crypto: Any = None
) -> Any:
    """Rows of `chunk` that break any of `exps` (first broken rule wins), written as a quarantine file.

    Columns as in the clean step's quarantine: raw columns as strings, plus ``_reason``
    (``validation:<expectation type>``), ``_column``, ``_source_file`` and ``_source_row``.
    Returns the FileEntry, or None when no row of the chunk is offending.
    """
    table = read_chunk(chunk, crypto, None)
    n = table.num_rows
    reason = np.full(n, -1, dtype=np.int64)
    for j, e in enumerate(exps):
        if not all(c in table.column_names for c in exp_columns(e)):
            continue
        _, unexpected = unexpected_mask(table, e)
        hit = np.asarray(pc.fill_null(unexpected, False).to_numpy(zero_copy_only=False), dtype=bool)
        reason[hit & (reason < 0)] = j
    rows = np.flatnonzero(reason >= 0)
    if rows.size == 0:
        return None
    pf = parquet_io.open_parquet(chunk.url, crypto)
    start = sum(pf.metadata.row_group(g).num_rows for g in range(chunk.row_groups[0]))
    bad = table.take(pa.array(rows))
    cols = {c: pc.cast(bad.column(c), pa.string()) for c in bad.column_names}
    cols["_reason"] = pa.array([f"validation:{exps[j]['type']}" for j in reason[rows]], pa.string())
    cols["_column"] = pa.array([exp_columns(exps[j])[0] for j in reason[rows]], pa.string())
    cols["_source_file"] = pa.array([chunk.url] * rows.size, pa.string())
    cols["_source_row"] = pa.array(rows + start, pa.int64())
    return parquet_io.write_table(url, pa.table(cols), rel_path, crypto=write_crypto)


def split_groups_chunk(chunk: Chunk, crypto: Any, column: str, split: str, n_buckets: int) -> list[pa.Table]:
    """Distinct non-null values of the group column in one split chunk, hash-partitioned."""
    table = read_chunk(chunk, crypto, [column])
    vals = pc.unique(pc.drop_null(table.column(column)).combine_chunks())
    t = pa.table({"g": vals, "split": pa.array([split] * len(vals), pa.string())})
    b = _bucket_of(t.select(["g"]), n_buckets) if t.num_rows else np.zeros(0, np.int64)
    return [t.filter(pa.array(b == j)) for j in range(n_buckets)]


def pick(tables: list[pa.Table], j: int) -> pa.Table:
    return tables[j]


def count_shared_groups(*tables: pa.Table) -> dict[str, Any]:
    """Groups (in one hash bucket) that occur in more than one split."""
    parts = [t for t in tables if t.num_rows]
    if not parts:
        return {"groups": 0, "shared": 0, "examples": []}
    g = pa.concat_tables(parts).combine_chunks().group_by("g").aggregate([("split", "count_distinct")])
    shared = g.filter(pc.greater(g.column("split_count_distinct"), 1))
    return {
        "groups": g.num_rows,
        "shared": shared.num_rows,
        "examples": shared.column("g").slice(0, MAX_EXAMPLES).to_pylist(),
    }
