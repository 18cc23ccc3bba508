"""Drift between two merged profiles (this interval vs the previous committed one).

- numeric: PSI and KS from the fine histograms. The fine bins are coarsened into
  ``PSI_BINS`` bins of (about) equal mass in the previous interval, the usual PSI
  binning; empty bins get a small floor so PSI stays finite.
- categories: the largest absolute change of a category's share of non-null values
  (categories new in this interval count with previous share 0).
- nulls: the absolute change of a column's null rate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PSI_BINS = 10
PSI_FLOOR = 1e-4


def _coarsen(prev: np.ndarray, cur: np.ndarray, bins: int = PSI_BINS) -> tuple[np.ndarray, np.ndarray]:
    cdf = np.cumsum(prev) / max(prev.sum(), 1)
    # group fine bins by which previous-mass decile they end in
    group = np.minimum((cdf * bins - 1e-9).astype(np.int64), bins - 1)
    group = np.maximum.accumulate(np.clip(group, 0, bins - 1))
    p = np.bincount(group, weights=prev, minlength=bins)
    c = np.bincount(group, weights=cur, minlength=bins)
    return p, c


def psi_ks(prev_hist: np.ndarray, cur_hist: np.ndarray) -> tuple[float, float]:
    prev_hist = np.asarray(prev_hist, dtype=np.float64)
    cur_hist = np.asarray(cur_hist, dtype=np.float64)
    if prev_hist.sum() == 0 or cur_hist.sum() == 0:
        return 0.0, 0.0
    ks = float(np.max(np.abs(np.cumsum(prev_hist) / prev_hist.sum() - np.cumsum(cur_hist) / cur_hist.sum())))
    p, c = _coarsen(prev_hist, cur_hist)
    p = np.maximum(p / p.sum(), PSI_FLOOR)
    c = np.maximum(c / c.sum(), PSI_FLOOR)
    return float(np.sum((c - p) * np.log(c / p))), ks


def share_delta(prev: dict[str, int], cur: dict[str, int]) -> tuple[float, str | None, list[str]]:
    """(max |share change|, the category with it, categories never seen in the previous interval)."""
    pt, ct = sum(prev.values()), sum(cur.values())
    best, arg = 0.0, None
    for v in sorted(set(prev) | set(cur), key=str):
        d = abs((cur.get(v, 0) / ct if ct else 0.0) - (prev.get(v, 0) / pt if pt else 0.0))
        if d > best:
            best, arg = d, v
    return best, arg, sorted(str(v) for v in set(cur) - set(prev))


def evaluate(exp: dict[str, Any], prev: dict[str, Any] | None, cur: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """(success, GX result dict) of one drift expectation."""
    col, thr = exp["kwargs"]["column"], float(exp["kwargs"]["threshold"])
    if prev is None:
        return True, {"observed_value": None, "details": {"note": "no previous committed clean interval"}}
    kind = exp["type"]
    if kind == "expect_column_psi_to_be_below":
        if col not in prev["hist"] or col not in cur["hist"]:
            return False, {"observed_value": None, "details": {"note": f"column {col!r} missing in one interval"}}
        psi, ks = psi_ks(prev["hist"][col], cur["hist"][col])
        details = {"ks": round(ks, 6), "mean": cur["stats"][col]["mean"], "previous_mean": prev["stats"][col]["mean"]}
        return psi < thr, {"observed_value": round(psi, 6), "details": details}
    if kind == "expect_column_category_share_delta_to_be_below":
        d, arg, new = share_delta(prev["cats"].get(col, {}), cur["cats"].get(col, {}))
        return d < thr, {"observed_value": round(d, 6), "details": {"category": arg, "new_categories": new}}
    if kind == "expect_column_null_rate_delta_to_be_below":
        pr = prev["nulls"].get(col, 0) / prev["rows"] if prev["rows"] else 0.0
        cr = cur["nulls"].get(col, 0) / cur["rows"] if cur["rows"] else 0.0
        d = abs(cr - pr)
        return d < thr, {"observed_value": round(d, 6), "details": {"null_rate": cr, "previous_null_rate": pr}}
    raise ValueError(f"{kind} is not a drift expectation")
