"""Synthetic `split` manifests for training tests and the train benchmark.

Builds what the split step commits (docs/contracts.md "clean -> split -> train"):
files grouped train/val/test with the clean columns of the `events` spec plus the
derived `hour`, and ``extra["feature_stats"]`` fitted on train only. The label
depends on the features, so a trained model reaches a real AUC (~0.8).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.io.code_version import code_version
from tasks.io.lake import Lake, Manifest
from tasks.io.parquet import write_table

EVENT_TYPES = ["view", "cart", "checkout"]
CATEGORIES = ["electronics", "books", "home", "fashion", "toys", "sports", "beauty", "grocery"]
DEVICES = ["desktop", "mobile", "tablet"]
COUNTRIES = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA"]


def make_events(n: int, seed: int, ds: str = "2026-11-02") -> pa.Table:
    rng = np.random.default_rng(seed)
    start = datetime.fromisoformat(ds).replace(tzinfo=UTC).timestamp()
    ts_us = ((start + rng.uniform(0, 86400, n)) * 1e6).astype("int64")
    hour = (ts_us // 3_600_000_000) % 24
    event_type = rng.choice(3, n, p=[0.7, 0.2, 0.1])
    category = rng.choice(8, n)
    device = rng.choice(3, n, p=[0.5, 0.4, 0.1])
    country = rng.choice(8, n)
    price = np.clip(rng.lognormal(3.5, 1.0, n), 0.0, 10000.0)
    quantity = rng.integers(1, 6, n)
    session_events = rng.poisson(8, n) + 1
    logit = (
        -2.0
        + 2.5 * (event_type == 2)
        + 1.2 * (event_type == 1)
        + 0.15 * (session_events - 8)
        - 0.5 * np.log(price / 30.0)
        + 0.6 * (device == 0)
        + 0.8 * np.sin(hour / 24 * 2 * np.pi)
    )
    purchased = rng.random(n) < 1 / (1 + np.exp(-logit))
    cat_null = rng.random(n) < 0.05
    user = rng.integers(0, max(1, n // 5), n)
    return pa.table(
        {
            "event_id": pa.array([f"e{seed}-{i}" for i in range(n)]),
            "user_id": pa.array([f"u{u}" for u in user]),
            "email": pa.array([None] * n, type=pa.string()),
            "session_id": pa.array([f"s{u}" for u in user]),
            "event_ts": pa.array(ts_us, type=pa.timestamp("us", tz="UTC")),
            "event_type": pa.array([EVENT_TYPES[i] for i in event_type]),
            "product_id": pa.array([f"p{i % 97}" for i in range(n)]),
            "category": pa.array([None if z else CATEGORIES[i] for i, z in zip(category, cat_null, strict=True)]),
            "price": pa.array(price, type=pa.float64()),
            "quantity": pa.array(quantity, type=pa.int64()),
            "device": pa.array([DEVICES[i] for i in device]),
            "country": pa.array([COUNTRIES[i] for i in country]),
            "session_events": pa.array(session_events, type=pa.int64()),
            "purchased": pa.array(purchased, type=pa.bool_()),
            "hour": pa.array(hour, type=pa.int64()),
        }
    )


NUMERIC = ["price", "quantity", "session_events", "hour"]
CATEGORICAL = ["event_type", "category", "device", "country"]


def fit_stats(train: pa.Table, label: str = "purchased", task: str = "classification") -> dict[str, Any]:
    numeric = {}
    for name in NUMERIC:
        v = train.column(name).to_numpy(zero_copy_only=False).astype(float)
        q = np.quantile(v, [0.01, 0.25, 0.5, 0.75, 0.99])
        numeric[name] = {
            "mean": float(v.mean()), "std": float(v.std()), "median": float(q[2]), "iqr": float(q[3] - q[1]),
            "min": float(v.min()), "max": float(v.max()),
            "quantiles": {"0.01": float(q[0]), "0.5": float(q[2]), "0.99": float(q[4])},
        }
    categorical = {}
    for name in CATEGORICAL:
        values, counts = np.unique(
            [x for x in train.column(name).to_pylist() if x is not None], return_counts=True
        )
        categorical[name] = {"vocab": sorted(str(v) for v, c in zip(values, counts, strict=True) if c >= 5),
                             "min_count": 5}
    return {"numeric": numeric, "categorical": categorical, "label": label, "task": task,
            "numeric_features": NUMERIC, "categorical_features": CATEGORICAL}


def make_split(
    lake: Lake,
    dataset: str = "events",
    ds: str = "2026-11-02",
    rows: dict[str, int] | None = None,
    files_per_group: int = 2,
    row_group_rows: int = 1024,
    crypto: Any = None,
    seed: int = 7,
) -> Manifest:
    """Commit a split manifest with `rows` per group into `lake` and return it."""
    rows = rows or {"train": 6000, "val": 1500, "test": 1500}
    version, vdir = lake.new_version("split", dataset, ds)
    tables = {g: make_events(n, seed + i, ds) for i, (g, n) in enumerate(rows.items())}
    stats = fit_stats(tables["train"])
    entries = []
    for group, table in tables.items():
        bounds = np.linspace(0, table.num_rows, files_per_group + 1).astype(int)
        for k in range(files_per_group):
            part = table.slice(bounds[k], bounds[k + 1] - bounds[k])
            rel = f"v={version}/{group}/part-{k:05d}.parquet"
            entries.append(
                write_table(f"{vdir}/{group}/part-{k:05d}.parquet", part, rel, group=group, crypto=crypto,
                            row_group_rows=row_group_rows)
            )
    manifest = Manifest(
        stage="split", dataset=dataset, ds=ds, version=version, files=entries,
        input_fingerprint=f"fixture-{seed}-{sorted(rows.items())}", code_version=code_version("tasks.spec"),
        params={"fixture": True}, extra={"feature_stats": stats},
    )
    return lake.commit(manifest)
