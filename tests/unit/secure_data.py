"""Small clean-schema event tables and committed lake outputs for the crypto/secure/anomaly tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from tasks.context import StepContext
from tasks.io import parquet as parquet_io
from tasks.io.lake import Manifest

DEVICES = ["desktop", "mobile", "tablet"]
COUNTRIES = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA"]
CATEGORIES = ["electronics", "books", "home", "fashion", "toys", "sports", "beauty", "grocery"]


def events(n: int, ds: str, seed: int = 0, poison: int = 0) -> pa.Table:
    """`n` clean events of day `ds`; the last `poison` rows form a tight anomalous cluster."""
    rng = np.random.default_rng(seed)
    day = int(datetime.fromisoformat(ds).replace(tzinfo=UTC).timestamp()) * 1_000_000
    ids = np.arange(n) + seed * 10_000_000
    users = rng.integers(0, max(2, n // 5), n)
    price = np.round(rng.lognormal(3.5, 0.8, n), 2).clip(0.5, 5000)
    quantity = rng.integers(1, 4, n)
    session_events = rng.integers(1, 40, n)
    device = rng.choice(DEVICES, n, p=[0.4, 0.5, 0.1])
    country = rng.choice(COUNTRIES, n, p=[0.3, 0.12, 0.12, 0.1, 0.14, 0.1, 0.07, 0.05])
    ts = day + rng.integers(0, 86_400_000_000, n)
    if poison:
        p = slice(n - poison, n)
        price[p] = 9_900 + rng.uniform(0, 50, poison)
        quantity[p] = 20
        session_events[p] = 480 + rng.integers(0, 20, poison)
        device[p] = "tablet"
        country[p] = "JP"
    return pa.table(
        {
            "event_id": pa.array([f"e{i}" for i in ids]),
            "user_id": pa.array([f"u{u}" for u in users]),
            "email": pa.array([f"user{u}@example.com" for u in users]),
            "session_id": pa.array([f"s{u}-{i % 7}" for u, i in zip(users, ids, strict=True)]),
            "event_ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "event_type": pa.array(rng.choice(["view", "cart", "checkout"], n, p=[0.7, 0.2, 0.1])),
            "product_id": pa.array([f"p{x}" for x in rng.integers(0, 500, n)]),
            "category": pa.array(rng.choice(CATEGORIES, n)),
            "price": pa.array(price),
            "quantity": pa.array(quantity.astype("int64")),
            "device": pa.array(device),
            "country": pa.array(country),
            "session_events": pa.array(session_events.astype("int64")),
            "purchased": pa.array(rng.random(n) < 0.2),
        }
    )


def commit_table(ctx: StepContext, stage: str, parts: dict[str, pa.Table], crypto=None) -> Manifest:
    """Write `parts` ({group: table}) as one committed, signed manifest of `stage`."""
    lake = ctx.lake
    version, vdir = lake.new_version(stage, ctx.dataset, ctx.ds)
    files = []
    for i, (group, table) in enumerate(parts.items()):
        rel = f"v={version}/{group or 'part'}-{i:05d}.parquet"
        url = lake.full_url(f"{vdir}/{rel.split('/', 1)[1]}")
        files.append(parquet_io.write_table(url, table, rel, group=group, crypto=crypto))
    return lake.commit(Manifest(stage, ctx.dataset, ctx.ds, version, files=files))


def quarantine_rows(n: int) -> pa.Table:
    return pa.table(
        {
            "event_id": pa.array([f"q{i}" for i in range(n)]),
            "user_id": pa.array([f"u{i}" for i in range(n)]),
            "email": pa.array([f"q{i}@example.com" for i in range(n)]),
            "price": pa.array(["-1"] * n),
            "_reason": pa.array(["out_of_range:price"] * n),
            "_source_file": pa.array(["raw/part-00000.parquet"] * n),
            "_source_row": pa.array(list(range(n)), pa.int64()),
        }
    )


def secured_interval(ctx: StepContext, n: int = 3000) -> dict[str, Manifest]:
    """Committed clean, quarantine and split outputs of ctx's interval, encrypted as the pipeline does."""
    crypto = ctx.crypto()
    t = events(n, ctx.ds)
    k = n // 10
    return {
        "clean": commit_table(ctx, "clean", {"": t}, crypto),
        "quarantine": commit_table(ctx, "quarantine", {"": quarantine_rows(20)}, crypto),
        "split": commit_table(
            ctx, "split", {"train": t.slice(0, n - 2 * k), "val": t.slice(n - 2 * k, k), "test": t.slice(n - k)},
            crypto,
        ),
    }
