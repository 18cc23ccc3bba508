"""Feature statistics (fitted on train only) and the one feature transform.

Statistics are computed per partition (:func:`partial_fit`), merged associatively
(:func:`merge`) and finalized (:func:`finalize`) into the JSON that the split
manifest stores in ``extra["feature_stats"]`` (format: docs/contracts.md).

- mean/std/min/max/count: exact (Chan's parallel mean/variance merge).
- median/iqr/quantiles: APPROXIMATE, computed exactly on a bounded uniform sample of
  the values: each partition keeps the ``SAMPLE_SIZE`` values with the smallest
  pseudo-random priorities (bottom-k sketch, priorities seeded by the partition id so
  reruns are identical), and merging keeps the ``SAMPLE_SIZE`` smallest of the union,
  which is again a uniform sample of all values. Rank error ~ 0.5/sqrt(k).
- categorical vocabularies: exact counts; values seen at least ``min_category_count``
  times, sorted; vocab entry i has index i + 1 because index 0 is reserved for
  out-of-vocabulary values and nulls.
- the label (``target``): exact train count/mean/std/min/max (Chan's merge, as numeric features):
  the mean is the trivial predictor evaluation compares with, and regression trains on the label
  standardized with it (:mod:`tasks.training.model`).

:func:`transform` is the ONLY feature transform (training, evaluation, compression
and serving all call it).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.errors import FeatureError
from tasks.spec import DatasetSpec

SAMPLE_SIZE = 20_000
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_TIME_OPS = {"hour": pc.hour, "day_of_week": pc.day_of_week, "day": pc.day, "month": pc.month, "minute": pc.minute}


# ---- derived columns ------------------------------------------------------------------
def add_derived(table: pa.Table, derived: dict[str, dict[str, str]]) -> pa.Table:
    """Append derived feature columns (e.g. ``hour`` from ``event_ts``) that the table lacks."""
    for name, rule in derived.items():
        if name in table.column_names:
            continue
        src, op = rule.get("from"), rule.get("op")
        if src not in table.column_names:
            raise FeatureError(f"derived feature {name!r}: source column {src!r} is missing")
        col = table.column(src)
        if op in _TIME_OPS:
            if not pa.types.is_timestamp(col.type):
                raise FeatureError(f"derived feature {name!r}: op {op!r} needs a timestamp, {src!r} is {col.type}")
            out = _TIME_OPS[op](col).cast(pa.int64())
        elif op == "log1p":
            out = pc.ln(pc.add(pc.max_element_wise(col.cast(pa.float64()), 0.0), 1.0))
        else:
            raise FeatureError(f"derived feature {name!r}: unknown op {op!r} (known: {sorted(_TIME_OPS)} + log1p)")
        table = table.append_column(name, out)
    return table


# ---- fitting ----------------------------------------------------------------------------
def _priorities(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, 0x5EED])).random(n)


def _bottom_k(p: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest priorities in ascending order (argsort(p)[:k] in O(n))."""
    if len(p) > k:
        # priorities are uniform on [0, 1): the k smallest almost surely lie below ~1.2 k/n, so a cheap
        # comparison leaves a few k candidates (argpartition over all n only when it does not)
        idx = np.flatnonzero(p < min(1.0, 1.2 * k / len(p) + 1e-9))
        idx = idx[np.argpartition(p[idx], k - 1)[:k]] if len(idx) >= k else np.argpartition(p, k - 1)[:k]
        return idx[np.argsort(p[idx], kind="stable")]
    return np.argsort(p, kind="stable")


def source_columns(spec: DatasetSpec) -> list[str]:
    """The table columns :func:`partial_fit` reads: raw numeric and categorical features, derived sources and
    the label (its train mean and std: the trivial predictor, and the scale regression targets train on)."""
    f = spec.features
    cols = [c for c in (*f.numeric, *f.categorical) if c not in f.derived]
    cols += [r["from"] for r in f.derived.values() if r.get("from")]
    cols.append(spec.label.column)
    return list(dict.fromkeys(cols))


def _moments(arr: np.ndarray) -> dict[str, Any]:
    """Count, nulls, mean, sum of squared deviations, min and max of a float array (NaN = null)."""
    vals = arr[~np.isnan(arr)]
    n = len(vals)
    mean = float(vals.mean()) if n else 0.0
    d = vals - mean
    return {"count": n, "nulls": int(len(arr) - n), "mean": mean, "m2": float(np.dot(d, d)) if n else 0.0,
            "min": float(vals.min()) if n else None, "max": float(vals.max()) if n else None}


def _merge_moments(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Chan's parallel merge of two :func:`_moments`."""
    n = a["count"] + b["count"]
    delta = b["mean"] - a["mean"]
    mins = [x for x in (a["min"], b["min"]) if x is not None]
    maxs = [x for x in (a["max"], b["max"]) if x is not None]
    return {"count": n, "nulls": a["nulls"] + b["nulls"],
            "mean": a["mean"] + delta * b["count"] / n if n else 0.0,
            "m2": a["m2"] + b["m2"] + delta * delta * a["count"] * b["count"] / n if n else 0.0,
            "min": min(mins) if mins else None, "max": max(maxs) if maxs else None}


def _value_counts(column: pa.ChunkedArray) -> dict[Any, int]:
    """Non-null value -> count. Dictionary chunks count their indices (a dictionary may repeat a value)."""
    if not pa.types.is_dictionary(column.type):
        vc = pc.value_counts(column.combine_chunks())
        return {v: int(c) for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True)
                if v is not None}
    counts: dict[Any, int] = {}
    for chunk in column.chunks:
        idx = chunk.indices.drop_null().to_numpy()
        for v, c in zip(chunk.dictionary.to_pylist(), np.bincount(idx, minlength=len(chunk.dictionary)).tolist(),
                        strict=True):
            if c and v is not None:
                counts[v] = counts.get(v, 0) + c
    return counts


def partial_fit(table: pa.Table, spec: DatasetSpec, seed: int = 0, sample_size: int = SAMPLE_SIZE) -> dict[str, Any]:
    """Mergeable statistics of one partition (``seed`` = a stable partition id)."""
    table = add_derived(table, spec.features.derived)
    state: dict[str, Any] = {"rows": table.num_rows, "numeric": {}, "categorical": {}, "sample_size": sample_size}
    prio = _priorities(table.num_rows, seed)
    # The sample of a column = its non-null rows of smallest priority. Take twice the sample size of
    # smallest-priority rows once; a column with enough non-null rows among them needs no full pass.
    cand = _bottom_k(prio, 2 * sample_size)
    for col in spec.features.numeric:
        if col not in table.column_names:
            raise FeatureError(f"numeric feature {col!r} is not a column of the table")
        column = table.column(col)
        arr = column.cast(pa.float64()).to_numpy()  # nulls -> NaN
        if column.null_count:
            ok = ~np.isnan(arr)
            vals, rows = arr[ok], np.flatnonzero(ok)
        else:
            ok, vals, rows = None, arr, None
        n = len(vals)
        mean = float(vals.mean()) if n else 0.0
        d = vals - mean
        picked = cand if ok is None else cand[ok[cand]]
        if len(picked) < min(sample_size, n):  # many nulls: the full pass
            picked = rows[_bottom_k(prio[rows], sample_size)]
        picked = picked[:sample_size]
        state["numeric"][col] = {
            "count": n, "nulls": int(len(arr) - n), "mean": mean,
            "m2": float(np.dot(d, d)) if n else 0.0,
            "min": float(vals.min()) if n else None, "max": float(vals.max()) if n else None,
            "sample": arr[picked], "prio": prio[picked],
        }
    for col in spec.features.categorical:
        if col not in table.column_names:
            raise FeatureError(f"categorical feature {col!r} is not a column of the table")
        state["categorical"][col] = _value_counts(table.column(col))
    label = spec.label.column
    if label in table.column_names:
        try:
            state["target"] = _moments(table.column(label).cast(pa.float64()).to_numpy())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise FeatureError(f"label column {label!r} is not numeric or boolean: {exc}") from exc
    return state


def merge(*states: dict[str, Any]) -> dict[str, Any]:
    """Merge partial statistics (associative and order-independent up to float rounding)."""
    states = tuple(s for s in states if s)
    if not states:
        raise FeatureError("no partial feature statistics to merge (no training rows?)")
    out = {"rows": 0, "numeric": {}, "categorical": {}, "sample_size": states[0]["sample_size"]}
    for s in states:
        out["rows"] += s["rows"]
        if "target" in s:
            out["target"] = _merge_moments(out["target"], s["target"]) if "target" in out else dict(s["target"])
        for col, b in s["numeric"].items():
            a = out["numeric"].get(col)
            if a is None:
                out["numeric"][col] = dict(b)
                continue
            n = a["count"] + b["count"]
            delta = b["mean"] - a["mean"]
            mean = a["mean"] + delta * b["count"] / n if n else 0.0
            m2 = a["m2"] + b["m2"] + delta * delta * a["count"] * b["count"] / n if n else 0.0
            sample = np.concatenate([a["sample"], b["sample"]])
            prio = np.concatenate([a["prio"], b["prio"]])
            keep = np.argsort(prio, kind="stable")[: out["sample_size"]]
            mins = [x for x in (a["min"], b["min"]) if x is not None]
            maxs = [x for x in (a["max"], b["max"]) if x is not None]
            out["numeric"][col] = {
                "count": n, "nulls": a["nulls"] + b["nulls"], "mean": mean, "m2": m2,
                "min": min(mins) if mins else None, "max": max(maxs) if maxs else None,
                "sample": sample[keep], "prio": prio[keep],
            }
        for col, counts in s["categorical"].items():
            acc = out["categorical"].setdefault(col, {})
            for v, c in counts.items():
                acc[v] = acc.get(v, 0) + c
    return out


def finalize(state: dict[str, Any], spec: DatasetSpec) -> dict[str, Any]:
    """The JSON statistics of docs/contracts.md from merged partial statistics."""
    numeric = {}
    for col in spec.features.numeric:
        s = state["numeric"][col]
        sample = np.sort(s["sample"])
        q = {f"{p:g}": float(np.quantile(sample, p)) if len(sample) else 0.0 for p in QUANTILES}
        std = float(np.sqrt(s["m2"] / s["count"])) if s["count"] else 0.0
        numeric[col] = {
            "mean": s["mean"], "std": std, "median": q["0.5"], "iqr": q["0.75"] - q["0.25"],
            "min": s["min"], "max": s["max"], "count": s["count"], "nulls": s["nulls"], "quantiles": q,
            "quantile_method": f"exact on a bottom-k uniform sample of {len(sample)} values",
        }
    categorical = {}
    min_count = spec.features.min_category_count
    for col in spec.features.categorical:
        counts = state["categorical"].get(col, {})
        cspec = spec.column(col) if col in spec.column_names else None
        categorical[col] = {
            "vocab": sorted(v for v, c in counts.items() if c >= min_count),
            "min_count": min_count,
            "counts": dict(sorted(counts.items())),
            "normalize": cspec.normalize if cspec else "none",
        }
    out = {
        "numeric": numeric,
        "categorical": categorical,
        "label": spec.label.column,
        "task": spec.label.task,
        "numeric_features": list(spec.features.numeric),
        "categorical_features": list(spec.features.categorical),
        "derived": spec.features.derived,
        "rows": state["rows"],
    }
    t = state.get("target")
    if t and t["count"]:  # the label over the train rows: the trivial predictor, the regression target's scale
        out["target"] = {"mean": t["mean"], "std": float(np.sqrt(t["m2"] / t["count"])), "min": t["min"],
                         "max": t["max"], "count": t["count"]}
    return out


def fit(table: pa.Table, spec: DatasetSpec, seed: int = 0) -> dict[str, Any]:
    """Statistics of one table (small data; distributed callers use partial_fit/merge/finalize)."""
    return finalize(partial_fit(table, spec, seed), spec)


def stats_digest(stats: dict[str, Any]) -> str:
    import json

    return hashlib.sha256(json.dumps(stats, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- the transform --------------------------------------------------------------------------
def _normalized(col: pa.ChunkedArray | pa.Array, how: str) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    arr = pc.utf8_trim_whitespace(arr)
    if how == "lower":
        arr = pc.utf8_lower(arr)
    elif how == "upper":
        arr = pc.utf8_upper(arr)
    return arr


def transform(table: pa.Table, stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x_num float32 [n, n_numeric] standardized with nulls -> 0, x_cat int64 [n, n_cat] vocab
    indices with OOV/null -> 0, y float32 [n]; NaN when the table has no label column)."""
    table = add_derived(table, {k: v for k, v in stats.get("derived", {}).items() if k not in table.column_names})
    n = table.num_rows
    num_names, cat_names = stats["numeric_features"], stats["categorical_features"]
    x_num = np.zeros((n, len(num_names)), dtype=np.float32)
    for j, col in enumerate(num_names):
        if col not in table.column_names:
            raise FeatureError(f"transform: numeric feature column {col!r} is missing")
        st = stats["numeric"][col]
        try:
            arr = table.column(col).cast(pa.float64()).to_numpy()
        except pa.ArrowInvalid as exc:
            raise FeatureError(f"transform: column {col!r} is not numeric: {exc}") from exc
        std = st["std"] if st["std"] and st["std"] > 0 else 1.0
        z = (arr - st["mean"]) / std
        x_num[:, j] = np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)
    x_cat = np.zeros((n, len(cat_names)), dtype=np.int64)
    for j, col in enumerate(cat_names):
        if col not in table.column_names:
            raise FeatureError(f"transform: categorical feature column {col!r} is missing")
        st = stats["categorical"][col]
        vals = _normalized(table.column(col), st.get("normalize", "none"))
        idx = pc.index_in(vals, value_set=pa.array(st["vocab"], pa.string()))
        x_cat[:, j] = pc.add(idx, 1).fill_null(0).to_numpy()
    label = stats.get("label")
    if label and label in table.column_names:
        y = table.column(label).cast(pa.float32()).to_numpy().astype(np.float32)
    else:
        y = np.full(n, np.nan, dtype=np.float32)
    return x_num, x_cat, y
