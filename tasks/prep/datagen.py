"""Synthetic e-commerce events for the ``events`` spec, with faults injected at known rates.

One row = one event of a user's session. The label ``purchased`` says whether the
event's session ends in a purchase; it is drawn from a logistic model of device,
country, hour, session length, category and price, and event types shift towards
cart/checkout in purchasing sessions, so it is learnable from the event's features.

Layout: ``<lake>/raw/<dataset>/ds=<YYYY-MM-DD>/part-<i>.parquet`` (``files_per_day``
files per day, each a separate "producer" covering the whole day, rows sorted by
time). Columns carry the RAW types a messy source gives: strings for ids and
categories (with whitespace/case noise), ``event_ts`` timestamp[us, UTC], ``price``
float64, ``quantity``/``session_events`` int64, ``purchased`` bool.

Everything is vectorized numpy/pyarrow and seeded per (seed, day, file), so the same
arguments give byte-identical files; memory is bounded by one file at a time.

Faults are disjoint (a faulty row has exactly one fault), so the return value says
exactly how many rows the clean step must reject per reason:

- ``null_required``  a required column set to null         -> ``missing_required:<col>``
- ``duplicate``      a copy of another row's event (same id; ~half from the previous
                     file of the same day, so dedupe must work across files) -> ``duplicate_key``
- ``out_of_range``   price < 0 or > 10000                   -> ``out_of_range:price``
- ``unknown_category`` unknown event_type (rejected) or category/device/country (mapped)
- ``out_of_interval`` event_ts moved outside the day        -> ``out_of_interval``
- ``clip``           quantity / session_events out of range (clipped, kept)
- ``noise``          whitespace/case noise on category columns and email (kept)

``drift`` in [0, 1] shifts device/country mix and price level; ``poison_rows`` per day
replaces valid rows by a tight cluster of anomalous (but in-range) purchasing rows.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.spec import DatasetSpec, spec_for

log = logging.getLogger(__name__)

US_PER_DAY = 86_400_000_000
# In-memory (Arrow) bytes per generated row, measured; used to turn ``gb`` into rows.
ARROW_BYTES_PER_ROW = 148

DEVICES = ["desktop", "mobile", "tablet"]
DEVICE_P = np.array([0.40, 0.50, 0.10])
DEVICE_EFFECT = np.array([0.6, -0.5, 0.0])
COUNTRIES = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA"]
COUNTRY_P = np.array([0.30, 0.12, 0.12, 0.10, 0.14, 0.10, 0.07, 0.05])
COUNTRY_EFFECT = np.array([0.4, 0.3, 0.2, 0.1, -0.7, -0.5, 0.3, 0.3])
CATEGORIES = ["electronics", "books", "home", "fashion", "toys", "sports", "beauty", "grocery"]
CATEGORY_P = np.array([0.18, 0.14, 0.14, 0.16, 0.08, 0.10, 0.10, 0.10])
CATEGORY_EFFECT = np.array([-0.4, 0.5, 0.0, 0.2, 0.1, -0.1, 0.3, 0.6])
CATEGORY_PRICE = np.array([300.0, 18.0, 60.0, 45.0, 25.0, 55.0, 22.0, 9.0])
EVENT_TYPES = ["view", "cart", "checkout"]
# Hour-of-day curve of session starts and its effect on purchase propensity.
HOUR_P = np.array([1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 8, 9, 9, 8, 5, 3], dtype=float)
HOUR_P /= HOUR_P.sum()
HOUR_EFFECT = np.where(np.isin(np.arange(24), [18, 19, 20, 21, 22]), 0.6, 0.0) - np.where(np.arange(24) < 6, 0.8, 0.0)
EMAIL_DOMAINS = ["example.com", "mail.test", "shop.test", "inbox.example"]
BASE_LOGIT = -2.0  # tuned for a ~25-30% positive rate


@dataclass(frozen=True)
class FaultRates:
    """Fraction of rows receiving each fault (disjoint; must sum to < 0.5)."""

    null_required: float = 0.01
    duplicate: float = 0.02
    out_of_range: float = 0.005
    unknown_category: float = 0.008
    out_of_interval: float = 0.005
    clip: float = 0.005
    noise: float = 0.05

    @classmethod
    def none(cls) -> FaultRates:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


_FAULT_ORDER = ["null_required", "duplicate", "out_of_range", "unknown_category", "out_of_interval", "clip", "noise"]


def _seed(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]))


def _strings(prefix: str, ints: np.ndarray) -> pa.Array:
    """prefix + decimal integer, built by Arrow (no per-row Python)."""
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(ints, pa.int64()), pa.string()), "")


def _take_dict(values: list[str], idx: np.ndarray) -> pa.Array:
    return pc.take(pa.array(values, pa.string()), pa.array(idx, pa.int32()))


def _variants(values: list[str], rng: np.random.Generator, n: int, base_idx: np.ndarray) -> pa.Array:
    """Whitespace/case-noised variants of values[base_idx] (what a sloppy source sends)."""
    forms = []
    for v in values:
        forms += [f" {v}", f"{v.upper()} ", v.title(), f"  {v.lower()}\t" if v.isupper() else f"{v.upper()}"]
    k = rng.integers(0, 4, size=n)
    return _take_dict(forms, base_idx * 4 + k)


def _sessions(rng: np.random.Generator, n_rows: int, n_users: int, drift: float) -> dict[str, np.ndarray]:
    """Enough sessions to cover n_rows events; attributes per session."""
    mean_len = 8.0
    n_sess = int(n_rows / mean_len * 1.3) + 16
    length = np.minimum(1 + rng.poisson(mean_len - 1, size=n_sess), 60)
    cum = np.cumsum(length)
    n_sess = int(np.searchsorted(cum, n_rows) + 1)
    length = length[:n_sess].copy()
    length[-1] -= int(cum[n_sess - 1] - n_rows)
    user = rng.integers(0, n_users, size=n_sess)
    # a user's country and usual device are stable: derive them from the user id
    urng_country = (user * 2654435761) % 1000 / 1000.0
    cp = COUNTRY_P * (1 - drift) + drift * np.array([0.05, 0.05, 0.05, 0.05, 0.4, 0.3, 0.05, 0.05])
    country = np.searchsorted(np.cumsum(cp / cp.sum()), urng_country, side="right").clip(0, len(COUNTRIES) - 1)
    dp = DEVICE_P * (1 - drift) + drift * np.array([0.1, 0.85, 0.05])
    device = rng.choice(len(DEVICES), size=n_sess, p=dp / dp.sum())
    hour = rng.choice(24, size=n_sess, p=HOUR_P)
    category = rng.choice(len(CATEGORIES), size=n_sess, p=CATEGORY_P)
    price_level = CATEGORY_PRICE[category] * np.exp(rng.normal(0.0, 0.5, size=n_sess)) * (1 + drift)
    logit = (
        BASE_LOGIT
        + DEVICE_EFFECT[device]
        + COUNTRY_EFFECT[country]
        + HOUR_EFFECT[hour]
        + CATEGORY_EFFECT[category]
        + 0.55 * np.log(length.clip(1, None))
        - 0.35 * np.log(price_level / CATEGORY_PRICE[category])
        - 0.6
    )
    purchased = rng.random(n_sess) < 1.0 / (1.0 + np.exp(-logit))
    start_s = hour * 3600 + rng.integers(0, 3600, size=n_sess)
    return {
        "length": length, "user": user, "country": country, "device": device, "hour": hour,
        "category": category, "price_level": price_level, "purchased": purchased, "start_s": start_s,
    }


def _base_file(
    day_index: int, day_start_us: int, file_index: int, n_rows: int, n_users: int, seed: int, drift: float
) -> tuple[dict[str, Any], np.random.Generator]:
    """Valid rows of one file as numpy/Arrow columns, sorted by event time."""
    rng = _seed(seed, day_index, file_index, 1)
    s = _sessions(rng, n_rows, n_users, drift)
    n_sess = len(s["length"])
    sess_of = np.repeat(np.arange(n_sess), s["length"])
    pos = np.arange(n_rows) - np.repeat(np.cumsum(s["length"]) - s["length"], s["length"])
    offset_us = (pos * 45 + rng.integers(0, 30, size=n_rows)) * 1_000_000 + rng.integers(0, 1_000_000, size=n_rows)
    ts = day_start_us + np.minimum(s["start_s"][sess_of] * 1_000_000 + offset_us, US_PER_DAY - 1)
    own_cat = rng.random(n_rows) < 0.8
    category = np.where(own_cat, s["category"][sess_of], rng.choice(len(CATEGORIES), size=n_rows, p=CATEGORY_P))
    price = np.round(
        np.where(own_cat, s["price_level"][sess_of], CATEGORY_PRICE[category]) * rng.uniform(0.8, 1.2, size=n_rows), 2
    )
    purchased = s["purchased"][sess_of]
    u = rng.random(n_rows)
    event_type = np.where(
        purchased,
        np.where(u < 0.50, 0, np.where(u < 0.78, 1, 2)),
        np.where(u < 0.82, 0, np.where(u < 0.97, 1, 2)),
    )
    product = category * 10_000 + rng.integers(0, 2_000, size=n_rows)
    order = np.argsort(ts, kind="stable")
    base_id = ((seed % 1000) * 10_000 + day_index) * 100 + file_index
    cols = {
        "event_id": np.arange(n_rows)[order],
        "user": s["user"][sess_of][order],
        "session": sess_of[order] + base_id * 10_000_000,
        "event_ts": ts[order],
        "event_type": event_type[order],
        "product": product[order],
        "category": category[order],
        "price": price[order],
        "quantity": np.minimum(1 + rng.poisson(0.4, size=n_rows), 20)[order],
        "device": s["device"][sess_of][order],
        "country": s["country"][sess_of][order],
        "session_events": s["length"][sess_of][order],
        "purchased": purchased[order],
        "hour": s["hour"][sess_of][order],
    }
    cols["event_id_prefix"] = f"e{base_id}-"
    return cols, rng


def _to_table(c: dict[str, Any]) -> pa.Table:
    n = len(c["event_ts"])
    email = pc.binary_join_element_wise(
        _strings("user", c["user"]), _take_dict(EMAIL_DOMAINS, c["user"] % len(EMAIL_DOMAINS)), "@"
    )
    return pa.table(
        {
            "event_id": _strings(c["event_id_prefix"], c["event_id"]),
            "user_id": _strings("u", c["user"]),
            "email": email,
            "session_id": _strings("s", c["session"]),
            "event_ts": pa.array(c["event_ts"], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "event_type": _take_dict(EVENT_TYPES, c["event_type"]),
            "product_id": _strings("p", c["product"]),
            "category": _take_dict(CATEGORIES, c["category"]),
            "price": pa.array(c["price"], pa.float64()),
            "quantity": pa.array(c["quantity"], pa.int64()),
            "device": _take_dict(DEVICES, c["device"]),
            "country": _take_dict(COUNTRIES, c["country"]),
            "session_events": pa.array(c["session_events"], pa.int64()),
            "purchased": pa.array(c["purchased"], pa.bool_()),
        }
    ).slice(0, n)


def _set(table: pa.Table, name: str, rows: np.ndarray, values: pa.Array) -> pa.Table:
    """table[name][rows] = values (one value broadcast, or one per row), vectorized through a mask."""
    if len(rows) == 0:
        return table
    col = table.column(name).combine_chunks()
    idx = np.zeros(len(col), dtype=np.int64) if len(values) == 1 else _scatter(rows, len(col))
    mask = np.zeros(len(col), dtype=bool)
    mask[rows] = True
    new = pc.if_else(pa.array(mask), pc.take(values, pa.array(idx)).cast(col.type), col)
    return table.set_column(table.schema.get_field_index(name), name, new)


def _scatter(rows: np.ndarray, n: int) -> np.ndarray:
    """Index array of length n pointing row rows[k] at k (other positions at 0)."""
    idx = np.zeros(n, dtype=np.int64)
    idx[rows] = np.arange(len(rows))
    return idx


@dataclass
class _Faulting:
    """One file's table while faults are applied to it, with what every fault step shares.

    The steps draw from ``rng`` in a fixed order (the order of ``_inject``), so the same seed gives
    the same faults; ``counts`` collects the per-reason totals of the whole day.
    """

    table: pa.Table
    rng: np.random.Generator
    counts: dict[str, int]
    day_start_us: int

    def set_rows(self, name: str, rows: np.ndarray, values: pa.Array) -> None:
        """table[name][rows] = values (see ``_set``)."""
        self.table = _set(self.table, name, rows, values)

    def count(self, key: str, k: int) -> None:
        """Count `k` more rows under `key` (the key is created on first use, so zero-row reasons stay out)."""
        self.counts[key] = self.counts.get(key, 0) + k


def _fault_kinds(rng: np.random.Generator, faults: FaultRates, n: int) -> np.ndarray:
    """Per row: index into ``_FAULT_ORDER`` of its one fault, or ``len(_FAULT_ORDER)`` for none."""
    rates = np.array([getattr(faults, k) for k in _FAULT_ORDER])
    if rates.sum() >= 0.5:
        raise ValueError(f"fault rates sum to {rates.sum():.3f}; must be < 0.5")
    return np.searchsorted(np.cumsum(rates), rng.random(n), side="right")


def _poison(f: _Faulting, fault_free: np.ndarray, poison_rows: int) -> None:
    """Turn up to `poison_rows` fault-free rows into a tight anomalous cluster of in-range purchasing rows."""
    rng = f.rng
    prow = np.sort(rng.choice(fault_free, size=min(poison_rows, f.table.num_rows), replace=False))
    k = len(prow)
    f.set_rows("price", prow, pa.array(9_900.0 + rng.uniform(0, 50, size=k)))
    f.set_rows("quantity", prow, pa.array(np.full(k, 20)))
    f.set_rows("session_events", prow, pa.array(np.full(k, 480) + rng.integers(0, 20, size=k)))
    f.set_rows("device", prow, pa.array(["tablet"]))
    f.set_rows("country", prow, pa.array(["JP"]))
    f.set_rows("purchased", prow, pa.array([True]))
    f.set_rows(
        "event_ts", prow,
        pa.array(f.day_start_us + 3 * 3_600_000_000 + rng.integers(0, 600_000_000, size=k)).cast(
            pa.timestamp("us", tz="UTC")),
    )
    f.count("poison", k)


def _duplicate_sources(
    f: _Faulting, dup: np.ndarray, clean_rows: np.ndarray, prev_sources: pa.Table | None
) -> tuple[pa.Table, np.ndarray]:
    """Valid rows to copy onto the `dup` rows (about half from the previous file of the day when there is one),
    and which of them came from that previous file."""
    rng, table = f.rng, f.table
    from_prev = (rng.random(len(dup)) < 0.5) & (prev_sources is not None and prev_sources.num_rows > 0)
    src_local = rng.choice(clean_rows, size=len(dup)) if len(clean_rows) else np.zeros(len(dup), dtype=np.int64)
    local = table.take(pa.array(src_local))
    if prev_sources is None or not prev_sources.num_rows:
        return local, from_prev
    prev = prev_sources.take(pa.array(rng.integers(0, prev_sources.num_rows, size=len(dup))))
    copies = pa.Table.from_arrays(
        [pc.if_else(pa.array(from_prev), prev.column(c).combine_chunks(), local.column(c).combine_chunks())
         for c in table.column_names], names=table.column_names)
    return copies, from_prev


def _duplicate(f: _Faulting, dup: np.ndarray, clean_rows: np.ndarray, prev_sources: pa.Table | None) -> None:
    """Overwrite the `dup` rows with copies of valid rows (same event id), so dedupe must work across files."""
    rng = f.rng
    copies, from_prev = _duplicate_sources(f, dup, clean_rows, prev_sources)
    # half the copies are re-sent later (same id, later timestamp), half are exact copies
    later = np.where(rng.random(len(dup)) < 0.5, rng.integers(1, 300_000_000, size=len(dup)), 0)
    ts = pc.cast(copies.column("event_ts"), pa.int64()).to_numpy()
    ts = np.minimum(ts + later, f.day_start_us + US_PER_DAY - 1)
    copies = copies.set_column(copies.schema.get_field_index("event_ts"), "event_ts",
                               pa.array(ts).cast(pa.timestamp("us", tz="UTC")))
    for c in f.table.column_names:
        f.set_rows(c, dup, copies.column(c).combine_chunks())
    f.counts["duplicate_key"] += len(dup)
    f.count("duplicate_from_other_file", int(from_prev.sum()))


def _null_required(f: _Faulting, nr: np.ndarray, required: list[str]) -> None:
    """Null one required column (picked per row) of each `nr` row."""
    which = f.rng.integers(0, len(required), size=len(nr))
    for j, col in enumerate(required):
        r = nr[which == j]
        if len(r):
            f.set_rows(col, r, pa.nulls(1, f.table.schema.field(col).type))
            f.count(f"missing_required:{col}", len(r))


def _out_of_range(f: _Faulting, orr: np.ndarray) -> None:
    """Prices below 0 or above 10000 (rejected)."""
    rng = f.rng
    negative = rng.random(len(orr)) < 0.5  # drawn first: the draws keep the order of the seeded files
    bad = np.where(negative, -rng.uniform(1, 100, size=len(orr)), rng.uniform(12_000, 90_000, size=len(orr)))
    f.set_rows("price", orr, pa.array(np.round(bad, 2)))
    f.counts["out_of_range:price"] += len(orr)


_UNKNOWN = {"event_type": ["refund", "wishlist"], "category": ["garden", "automotive"],
            "device": ["smartwatch", "console"], "country": ["XX", "ZZ"]}


def _unknown_category(f: _Faulting, uc: np.ndarray) -> None:
    """Unknown category values: an unknown event_type is rejected, the other columns map to the unknown value."""
    rng = f.rng
    col_pick = rng.integers(0, 4, size=len(uc))
    for j, col in enumerate(_UNKNOWN):
        r = uc[col_pick == j]
        if len(r):
            f.set_rows(col, r, _take_dict(_UNKNOWN[col], rng.integers(0, 2, size=len(r))))
            f.count(f"unknown_category:{col}" if col == "event_type" else f"mapped_unknown:{col}", len(r))


def _out_of_interval(f: _Faulting, oi: np.ndarray) -> None:
    """Timestamps moved before or after the day."""
    rng, day_start_us = f.rng, f.day_start_us
    shift = rng.integers(1, 3 * US_PER_DAY, size=len(oi))
    bad_ts = np.where(rng.random(len(oi)) < 0.5, day_start_us - shift, day_start_us + US_PER_DAY + shift - 1)
    f.set_rows("event_ts", oi, pa.array(bad_ts).cast(pa.timestamp("us", tz="UTC")))
    f.counts["out_of_interval"] += len(oi)


def _clip(f: _Faulting, cl: np.ndarray) -> None:
    """Values the clean step clips and keeps: quantity 0 or > 20 (half the rows), session_events > 500 (the rest)."""
    rng = f.rng
    half = rng.random(len(cl)) < 0.5
    f.set_rows("quantity", cl[half], pa.array(np.where(rng.random(int(half.sum())) < 0.5, 0, 25)))
    f.set_rows("session_events", cl[~half], pa.array(rng.integers(501, 900, size=int((~half).sum()))))
    f.count("clipped:quantity", int(half.sum()))
    f.count("clipped:session_events", int((~half).sum()))


def _noise(f: _Faulting, nz: np.ndarray) -> None:
    """Whitespace/case noise on the category columns and upper-cased emails (kept after normalization)."""
    for col, values in (("device", DEVICES), ("category", CATEGORIES), ("event_type", EVENT_TYPES),
                        ("country", COUNTRIES)):
        cur = f.table.column(col).combine_chunks().take(pa.array(nz))
        base_idx = pc.index_in(cur, value_set=pa.array(values)).fill_null(0).to_numpy()
        f.set_rows(col, nz, _variants(values, f.rng, len(nz), base_idx))
    f.set_rows("email", nz, pc.utf8_upper(f.table.column("email").combine_chunks().take(pa.array(nz))))
    f.count("noise", len(nz))


def _inject(
    table: pa.Table,
    rng: np.random.Generator,
    spec: DatasetSpec,
    faults: FaultRates,
    day_start_us: int,
    prev_sources: pa.Table | None,
    poison_rows: int,
    counts: dict[str, int],
) -> tuple[pa.Table, pa.Table]:
    """Apply disjoint faults; return (faulty table, clean rows offered as duplicate sources to the next file).

    The steps run (and draw from `rng`) in this fixed order, so a seed always gives the same file.
    """
    kind = _fault_kinds(rng, faults, table.num_rows)
    rows = {k: np.flatnonzero(kind == i) for i, k in enumerate(_FAULT_ORDER)}
    clean_rows = np.flatnonzero(kind >= _FAULT_ORDER.index("clip"))  # clip/noise/none rows stay valid
    f = _Faulting(table, rng, counts, day_start_us)
    if poison_rows:
        _poison(f, np.flatnonzero(kind == len(_FAULT_ORDER)), poison_rows)
    n_src = min(len(clean_rows), max(16, len(rows["duplicate"])))
    sources_next = f.table.take(pa.array(rng.choice(clean_rows, size=n_src, replace=False)))
    if len(rows["duplicate"]):
        _duplicate(f, rows["duplicate"], clean_rows, prev_sources)
    _null_required(f, rows["null_required"], spec.required)
    _out_of_range(f, rows["out_of_range"])
    _unknown_category(f, rows["unknown_category"])
    _out_of_interval(f, rows["out_of_interval"])
    _clip(f, rows["clip"])
    if len(rows["noise"]):
        _noise(f, rows["noise"])
    return f.table, sources_next


def rows_for_gb(gb: float, days: int) -> int:
    """Rows per day that make ``gb`` GB of in-memory (Arrow) data over ``days`` days."""
    return max(1, int(gb * 1e9 / ARROW_BYTES_PER_ROW / max(days, 1)))


# Columns datagen writes: the spec it is given must have all of them.
_EVENT_COLUMNS = {"event_id", "user_id", "email", "session_id", "event_ts", "event_type", "product_id", "category",
                  "price", "quantity", "device", "country", "session_events", "purchased"}
# Fault count prefixes the clean step rejects (the others are mapped, clipped or normalized and kept).
_REJECTED = {"missing_required", "duplicate_key", "out_of_range", "unknown_category", "out_of_interval"}


@dataclass(frozen=True)
class _Run:
    """What every day and file of one ``generate`` call is written with."""

    fs: Any
    dataset_dir: str  # <lake root>/raw/<dataset>
    dataset: str
    spec: DatasetSpec
    seed: int
    faults: FaultRates
    rows_per_day: int
    files_per_day: int
    n_users: int
    drift: float
    poison_rows: int


def _spread(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal counts, the first ``total % parts`` of them one larger."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _check_request(spec: DatasetSpec, drift: float) -> None:
    """Refuse a spec without the e-commerce event columns, or a drift outside [0, 1]."""
    missing = _EVENT_COLUMNS - set(spec.column_names)
    if missing:
        raise ValueError(f"datagen makes e-commerce events; spec {spec.name!r} lacks columns {sorted(missing)}")
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift must be in [0, 1], got {drift}")


def _write_file(
    run: _Run, path: str, day_index: int, day_start_us: int, i: int, n: int, prev: pa.Table | None,
    counts: dict[str, int],
) -> tuple[pa.Table, pa.Table]:
    """Generate, fault and write file `i` (`n` rows) of a day; return it and the duplicate sources for file i+1."""
    cols, rng = _base_file(day_index, day_start_us, i, n, run.n_users, run.seed, run.drift)
    table = _to_table(cols)
    table, prev = _inject(table, rng, run.spec, run.faults, day_start_us, prev,
                          _spread(run.poison_rows, run.files_per_day)[i], counts)
    with run.fs.open(path, "wb") as fh:
        pq.write_table(table, fh, row_group_size=256 * 1024, compression="snappy")
    return table, prev


def _write_day(run: _Run, day: date) -> tuple[str, dict[str, Any]]:
    """Write the files of one day; return its ds and its summary (files, bytes, exact fault counts)."""
    ds = day.isoformat()
    day_start_us = int(datetime.fromisoformat(ds).replace(tzinfo=UTC).timestamp()) * 1_000_000
    ddir = f"{run.dataset_dir}/ds={ds}"
    run.fs.makedirs(ddir, exist_ok=True)
    counts: dict[str, int] = {"duplicate_key": 0, "out_of_range:price": 0, "out_of_interval": 0}
    prev: pa.Table | None = None
    files, day_bytes, positives = [], 0, 0
    day_index = (day - date(2000, 1, 1)).days
    for i, n in enumerate(_spread(run.rows_per_day, run.files_per_day)):
        path = f"{ddir}/part-{i:05d}.parquet"
        table, prev = _write_file(run, path, day_index, day_start_us, i, n, prev, counts)
        size = run.fs.size(path)
        positives += int(pc.sum(table.column("purchased").cast(pa.int64())).as_py() or 0)
        files.append(path)
        day_bytes += size
    rejected = sum(v for k, v in counts.items() if k.split(":")[0] in _REJECTED)
    log.info("datagen %s ds=%s: %d rows in %d files (%.1f MB)", run.dataset, ds, run.rows_per_day,
             run.files_per_day, day_bytes / 1e6)
    return ds, {
        "files": files, "rows": run.rows_per_day, "bytes": day_bytes, "faults": counts,
        "expected_rejected": rejected, "expected_clean": run.rows_per_day - rejected,
        "positive_rate": round(positives / run.rows_per_day, 4),
    }


def generate(
    lake_url: str,
    spec: DatasetSpec | None = None,
    start_ds: str = "2026-11-01",
    days: int = 1,
    rows_per_day: int = 100_000,
    seed: int = 7,
    faults: FaultRates = FaultRates(),
    files_per_day: int = 4,
    drift: float = 0.0,
    poison_rows: int = 0,
    gb: float | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Write ``days`` days of raw events to the lake and return a JSON summary with exact fault counts.

    ``gb`` (total in-memory size over all days) overrides ``rows_per_day``.
    """
    spec = spec or spec_for(dataset or "events")
    dataset = dataset or spec.name
    _check_request(spec, drift)
    if gb is not None:
        rows_per_day = rows_for_gb(gb, days)
    if rows_per_day < files_per_day:
        raise ValueError(f"rows_per_day ({rows_per_day}) must be >= files_per_day ({files_per_day})")
    fs, root = fsspec.core.url_to_fs(lake_url)
    run = _Run(fs, f"{root.rstrip('/')}/raw/{dataset}", dataset, spec, seed, faults, rows_per_day, files_per_day,
               max(200, rows_per_day // 12), drift, poison_rows)
    start = date.fromisoformat(start_ds)
    summary: dict[str, Any] = {"dataset": dataset, "start": start_ds, "days": days, "rows_per_day": rows_per_day,
                               "files_per_day": files_per_day, "seed": seed, "drift": drift, "poison_rows": poison_rows,
                               "faults": asdict(faults), "intervals": {}}
    total_rows = total_bytes = 0
    for d in range(days):
        ds, interval = _write_day(run, start + timedelta(days=d))
        summary["intervals"][ds] = interval
        total_rows += rows_per_day
        total_bytes += interval["bytes"]
    summary["rows"] = total_rows
    summary["bytes"] = total_bytes
    return summary


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tasks datagen", description=__doc__.split("\n")[0])
    p.add_argument("--lake", required=True, help="lake root URL")
    p.add_argument("--dataset", default="events")
    p.add_argument("--start", default="2026-11-01", help="first day, YYYY-MM-DD")
    p.add_argument("--days", type=int, default=1)
    p.add_argument("--rows", type=int, default=100_000, help="rows per day")
    p.add_argument("--gb", type=float, help="total in-memory GB over all days (overrides --rows)")
    p.add_argument("--files-per-day", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--drift", type=float, default=0.0)
    p.add_argument("--poison-rows", type=int, default=0)
    p.add_argument("--no-faults", action="store_true", help="generate clean data")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tasks.context import Settings  # the CLI reads the environment through Settings, like every entry point

    out = generate(
        args.lake, spec_for(args.dataset, Settings.from_env().specs_dir), args.start, args.days, args.rows, args.seed,
        faults=FaultRates.none() if args.no_faults else FaultRates(), files_per_day=args.files_per_day,
        drift=args.drift, poison_rows=args.poison_rows, gb=args.gb, dataset=args.dataset,
    )
    print(json.dumps(out, indent=1))
    return 0
