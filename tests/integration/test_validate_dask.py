"""Validation on a real multi-process Dask cluster (``dask scheduler`` + 2 ``dask worker`` processes on
loopback, reached through the ``address`` backend), reading PME-encrypted clean files on the workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client

from tasks.io import parquet as parquet_io
from tasks.prep.datagen import FaultRates
from tasks.validation import engine
from tasks.validation.validate import QUARANTINE_STAGE, read_quarantine, run_clean, run_raw
from tests.lake_files import committed_file
from tests.unit.validate_data import SPEC, clean_table, commit_tables, context, raw_day, raw_dir

REPO = Path(__file__).resolve().parents[2]
DASK = str(Path(sys.executable).with_name("dask"))
D1, D2 = "2026-11-01", "2026-11-02"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("dask")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sfile = d / "scheduler.json"
    procs = [
        subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                ":0",
                "--scheduler-file",
                str(sfile),
            ],
            env=env,
            cwd=d,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for _ in range(300):
            if sfile.exists() and sfile.stat().st_size:
                break
            time.sleep(0.1)
        for i in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        DASK,
                        "worker",
                        "--scheduler-file",
                        str(sfile),
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--memory-limit",
                        "1GiB",
                        "--no-dashboard",
                        "--name",
                        f"w{i}",
                        "--local-directory",
                        str(d),
                    ],
                    env=env,
                    cwd=d,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with Client(scheduler_file=str(sfile), timeout=60) as c:
            c.wait_for_workers(2, timeout=120)
            address = c.scheduler.address
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_raw_counts_on_worker_processes_equal_pandas_recount(tmp_path, cluster, monkeypatch):
    raw_day(tmp_path, rows=60_000, row_group_rows=5_000, faults=FaultRates(null_required=0.03, out_of_range=0.01))
    monkeypatch.setattr(engine, "CHUNK_ROWS", 10_000)
    res = run_raw(context(tmp_path, D1, cluster, validation_policy="warn"))
    assert res["rows_validated"] == 60_000 and res["chunks"] == 8
    assert res["dashboard"].startswith("http://") and res["dashboard"].endswith("/status")  # a standing cluster
    df = pd.concat([pd.read_parquet(p) for p in sorted(raw_dir(tmp_path).glob("*.parquet"))])
    gx = json.loads(committed_file(tmp_path / "lake", "validation", "events", D1, "raw/result.json").read_text())
    for r in gx["results"]:
        cfg, out = r["expectation_config"], r["result"]
        if cfg["type"] == "expect_column_values_to_not_be_null":
            assert out["unexpected_count"] == int(df[cfg["kwargs"]["column"]].isna().sum())
        if cfg["type"] == "expect_column_values_to_be_between" and cfg["kwargs"]["column"] == "price":
            assert out["unexpected_count"] == int(((df.price < 0) | (df.price > 10_000)).sum()) > 0


def test_encrypted_clean_uniqueness_and_drift(tmp_path, cluster):
    ctx1 = context(tmp_path, D1, cluster, encrypt=True)
    crypto = ctx1.crypto()
    commit_tables(ctx1.lake, "clean", D1, [(clean_table(20_000, 1, D1), "")], crypto=crypto, row_group_rows=4_000)
    ctx2 = context(tmp_path, D2, cluster, encrypt=True, validation_policy="warn")
    a = clean_table(15_000, 2, D2, price_mu=4.3)
    b = clean_table(15_000, 2, D2, start_id=14_000, price_mu=4.3)  # 1000 ids shared with `a`
    m = commit_tables(ctx2.lake, "clean", D2, [(a, ""), (b, "")], crypto=crypto, row_group_rows=4_000)
    # the clean files really are encrypted: no plaintext read
    with pytest.raises(parquet_io.ParquetReadError):
        parquet_io.read_table(ctx2.lake.abspath(m, m.files[0]))
    res = run_clean(ctx2)
    f = {x["expectation"]: x for x in res["failing"]}
    ids = pa.concat_tables([parquet_io.read_table(ctx2.lake.abspath(m, e), crypto) for e in m.files])
    counts = ids.column("event_id").to_pandas().value_counts()
    assert f["expect_column_values_to_be_unique"]["unexpected_count"] == int(counts[counts > 1].sum()) == 2_000
    assert res["drift"]["failing"] == ["price"] and res["drift"]["columns"]["price"]["psi"] > 0.25
    assert res["rows_validated"] == 30_000
    assert res["dashboard"].startswith("http://")  # for the task's "Dask dashboard" link


def test_quarantine_files_are_encrypted_and_committed(tmp_path, cluster):
    raw_day(tmp_path, rows=8_000, faults=FaultRates(out_of_range=0.2))
    ctx = context(tmp_path, D1, cluster, encrypt=True, validation_policy="quarantine")
    res = run_raw(ctx)
    assert res["quarantine"]["rows"] > 1_000
    urls = read_quarantine(ctx)
    with pytest.raises(parquet_io.ParquetReadError):
        parquet_io.read_table(urls[0])
    q = pa.concat_tables([parquet_io.read_table(u, ctx.crypto()) for u in urls])
    assert q.num_rows == ctx.lake.require(QUARANTINE_STAGE, "events", D1).rows == res["quarantine"]["rows"]
    assert set(SPEC.column_names) < set(q.column_names)
    assert pq.ParquetFile(urls[0], decryption_properties=ctx.crypto().decryption_properties(urls[0])).metadata
