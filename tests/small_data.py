"""Small real-like raw intervals (~1,000 rows a day) for the baseline tests: the pipeline's defaults must
beat the trivial predictor and come near a linear model on data the size real datasets have per day.

- events (classification): :func:`write_events`, rows of the events spec with a per-row label.
- houses (regression, a price in the tens to hundreds of thousands): :data:`HOUSES_SPEC` written to a specs
  folder, rows from :func:`houses_table` written as raw Parquet under ``<lake>/raw/houses/ds=<date>/``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HOUSES_SPEC = """\
# House sales (a small regression dataset of the tests): one row = one sale, label = its price.
name: houses
description: House sales; label = the sale price.
schedule: "@daily"
start_date: "2026-11-01"
time_column: sold_ts
key: [sale_id]
dedupe_order: [sold_ts]
group_column: sale_id
split: {train: 0.8, val: 0.1, test: 0.1, salt: leptonflow-v1}
label: {column: price, task: regression}
row_count: {min: 1}
columns:
  sale_id:     {type: string, required: true}
  sold_ts:     {type: timestamp, required: true}
  region:      {type: category, allowed: [north, south, east, west, center], normalize: lower, on_unknown: map}
  house_type:  {type: category, allowed: [flat, terraced, semi, detached], normalize: lower, on_unknown: map}
  area_m2:     {type: float, required: true, min: 10.0, max: 2000.0, on_out_of_range: reject}
  rooms:       {type: int, min: 1, max: 20, on_out_of_range: clip}
  age_years:   {type: float, min: 0.0, max: 300.0, on_out_of_range: clip}
  distance_km: {type: float, min: 0.0, max: 200.0, on_out_of_range: clip}
  price:       {type: float, required: true, min: 0.0}
features:
  numeric: [area_m2, rooms, age_years, distance_km]
  categorical: [region, house_type]
  min_category_count: 5
"""

REGIONS = ["north", "south", "east", "west", "center"]
TYPES = ["flat", "terraced", "semi", "detached"]


def write_specs(folder: Path) -> Path:
    """A specs folder with the houses spec and the repository's events spec."""
    from tasks.spec import SPEC_DIR

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "houses.yaml").write_text(HOUSES_SPEC)
    (folder / "events.yaml").write_text((SPEC_DIR / "events.yaml").read_text())
    return folder


def houses_table(n: int, seed: int, ds: str) -> pa.Table:
    """`n` sales on day `ds`: a price mostly linear in the features (as real prices are), with noise."""
    rng = np.random.default_rng(seed)
    start = datetime.fromisoformat(ds).replace(tzinfo=UTC).timestamp()
    ts_us = ((start + rng.uniform(0, 86400, n)) * 1e6).astype("int64")
    region = rng.choice(len(REGIONS), n, p=[0.25, 0.2, 0.2, 0.2, 0.15])
    kind = rng.choice(len(TYPES), n, p=[0.35, 0.25, 0.2, 0.2])
    area = np.clip(rng.lognormal(np.log(85) + 0.25 * kind, 0.35, n), 15, 1500)
    rooms = np.clip(np.round(area / 25 + rng.normal(0, 0.8, n)), 1, 20).astype("int64")
    age = np.clip(rng.gamma(2.0, 18.0, n), 0, 250)
    distance = np.clip(rng.exponential(8.0, n), 0.1, 150)
    price = (60_000 + 1_150 * area + 3_500 * rooms - 280 * age - 1_900 * distance
             + np.array([5_000, -12_000, 0, 8_000, 30_000])[region] + np.array([0, 6_000, 12_000, 25_000])[kind]
             + rng.normal(0, 9_000, n))
    return pa.table({
        "sale_id": pa.array([f"h{seed}-{i}" for i in range(n)]),
        "sold_ts": pa.array(ts_us, type=pa.timestamp("us", tz="UTC")),
        "region": pa.array([REGIONS[i] for i in region]),
        "house_type": pa.array([TYPES[i] for i in kind]),
        "area_m2": pa.array(np.round(area, 1)),
        "rooms": pa.array(rooms),
        "age_years": pa.array(np.round(age, 1)),
        "distance_km": pa.array(np.round(distance, 2)),
        "price": pa.array(np.round(np.maximum(price, 5_000), -2)),
    })


def write_houses(lake_root: Path, ds: str, rows: int = 1000, seed: int = 0) -> Path:
    """The raw interval ``<lake>/raw/houses/ds=<ds>/part-0.parquet``."""
    folder = lake_root / "raw" / "houses" / f"ds={ds}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    pq.write_table(houses_table(rows, seed, ds), path)
    return path


def write_events(lake_root: Path, ds: str, rows: int = 1000, seed: int = 0) -> Path:
    """The raw interval ``<lake>/raw/events/ds=<ds>/part-0.parquet``: events whose label depends on each row's
    features (:func:`tests.train_data.make_events`; the demo's datagen labels whole sessions, ~125 per 1,000
    rows, too few for a test split of a day)."""
    from tests.train_data import make_events

    folder = lake_root / "raw" / "events" / f"ds={ds}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    pq.write_table(make_events(rows, seed, ds).drop_columns(["hour"]), path)  # hour is derived by the pipeline
    return path
