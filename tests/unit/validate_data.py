"""Test data for the validation tests: clean-contract tables, lake commits, contexts, a Dask cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.context import StepContext
from tasks.io import parquet as parquet_io
from tasks.io.lake import Lake, Manifest
from tasks.prep import datagen
from tasks.spec import spec_for
from tests.keys import keyring_at

SPEC = spec_for("events")
DEVICES = ["desktop", "mobile", "tablet"]
COUNTRIES = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA"]
CATS = ["electronics", "books", "home", "fashion", "toys", "sports", "beauty", "grocery"]


def clean_table(
    n: int,
    seed: int,
    ds: str,
    *,
    start_id: int = 0,
    price_mu: float = 3.5,
    device_p: tuple[float, float, float] = (0.5, 0.4, 0.1),
    email_null: float = 0.1,
) -> pa.Table:
    """A table in the clean contract (spec.arrow_schema()), valid for interval `ds`."""
    rng = np.random.default_rng(seed)
    t0 = datetime.fromisoformat(ds).replace(tzinfo=UTC)
    ts = [t0 + timedelta(seconds=int(s)) for s in rng.integers(0, 86_400, n)]
    users = rng.integers(0, max(1, n // 10), n)
    email = np.array([f"u{u}@x.io" for u in users], dtype=object)
    email[rng.random(n) < email_null] = None
    cols: dict[str, Any] = {
        "event_id": [f"e{seed}-{start_id + i}" for i in range(n)],
        "user_id": [f"u{u}" for u in users],
        "email": list(email),
        "session_id": [f"s{u}-{k}" for u, k in zip(users, rng.integers(0, 3, n), strict=True)],
        "event_ts": ts,
        "event_type": list(rng.choice(["view", "cart", "checkout"], n, p=[0.7, 0.2, 0.1])),
        "product_id": [f"p{k}" for k in rng.integers(0, 500, n)],
        "category": list(rng.choice(CATS, n)),
        "price": np.clip(rng.lognormal(price_mu, 0.8, n), 0, 10_000),
        "quantity": rng.integers(1, 21, n),
        "device": list(rng.choice(DEVICES, n, p=list(device_p))),
        "country": list(rng.choice(COUNTRIES, n)),
        "session_events": rng.integers(1, 60, n),
        "purchased": rng.random(n) < 0.3,
    }
    return pa.table(cols, schema=SPEC.arrow_schema())


def commit_tables(
    lake: Lake,
    stage: str,
    ds: str,
    tables: list[tuple[pa.Table, str]],
    crypto: Any = None,
    row_group_rows: int = parquet_io.ROW_GROUP_ROWS,
) -> Manifest:
    """Write `tables` (table, group) as one committed output of `stage` (what clean/split do)."""
    version, vdir = lake.new_version(stage, "events", ds)
    entries = []
    for i, (t, group) in enumerate(tables):
        rel = f"{group or 'part'}/part-{i:05d}.parquet"
        entries.append(
            parquet_io.write_table(
                f"{vdir}/{rel}", t, f"v={version}/{rel}", group=group, crypto=crypto, row_group_rows=row_group_rows
            )
        )
    return lake.commit(Manifest(stage, "events", ds, version, files=entries))


def context(tmp_path: Path, ds: str, address: str, **params: Any) -> StepContext:
    params.setdefault("encrypt", False)
    return StepContext(
        dataset="events",
        ds=ds,
        lake_url=str(tmp_path / "lake"),
        keyring_path=keyring_at(tmp_path / "keys" / "keyring.json"),
        params=params,
        cluster={"backend": "address", "address": address},
        history_url=f"sqlite:///{tmp_path}/h.db",
    )


def raw_day(
    tmp_path: Path,
    ds: str = "2026-11-01",
    rows: int = 20_000,
    seed: int = 5,
    row_group_rows: int | None = None,
    **kw: Any,
) -> list[str]:
    """Raw files of one day from tasks.prep.datagen (optionally rewritten with small row groups)."""
    out = datagen.generate(str(tmp_path / "lake"), start_ds=ds, days=1, rows_per_day=rows, seed=seed, **kw)
    files = out["intervals"][ds]["files"]
    if row_group_rows:
        for f in files:
            t = pq.read_table(f)
            pq.write_table(t, f, row_group_size=row_group_rows)
    return files


def raw_dir(tmp_path: Path, ds: str = "2026-11-01") -> Path:
    return tmp_path / "lake" / "raw" / "events" / f"ds={ds}"


class ThreadCluster:
    """A real Dask scheduler + 2 workers on loopback TCP, threads in this process (fast to start)."""

    def __enter__(self) -> str:
        from distributed import LocalCluster

        self.cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=":0"
        )
        return self.cluster.scheduler_address

    def __exit__(self, *exc: Any) -> None:
        self.cluster.close()
