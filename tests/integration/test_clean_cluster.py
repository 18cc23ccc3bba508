"""clean on a real multi-process Dask cluster: a `dask scheduler` and two `dask worker` processes on loopback.

- killing a worker mid-clean still gives byte-identical output and accounting vs the local backend
- worker memory stays bounded: rows reach the reduces through shuffle files on disk (nothing for Dask to hold
  or spill, with a managed-memory budget far below the data); a worker's Arrow high-water mark is a fraction
  of the data
- cache hit does no work; a rerun replaces the output atomically (old readers keep their files)
- bad input (a corrupt column chunk found only by a worker) fails with the file named, nothing committed
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from distributed import Client

from tasks.context import StepContext
from tasks.io.parquet import ParquetReadError, sha256_of
from tasks.prep import clean, datagen
from tasks.spec import spec_for
from tests.keys import keyring_at

REPO = Path(__file__).resolve().parents[2]
DASK = str(Path(sys.executable).with_name("dask"))
SPEC = spec_for("events")
DS = "2026-11-01"
ROWS = 300_000
WORKER_LIMIT = 700 * 2**20
# spill managed memory above 1% of the limit (~7 MB per worker): several times less than the ~45 MB shuffled
SPILL_FRACTION = 0.01
SPILL_ENV = {"DASK_DISTRIBUTED__WORKER__MEMORY__TARGET": str(SPILL_FRACTION),
             "DASK_DISTRIBUTED__WORKER__MEMORY__SPILL": "0.9", "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "0.95",
             "DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE": "False"}


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), **SPILL_ENV}
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                            start_new_session=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dask")
    sched_file = tmp / "scheduler.json"
    procs = [_spawn([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(sched_file)], tmp / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, (tmp / "scheduler.log").read_text()
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        workers = {}
        for name in ("w1", "w2"):
            workers[name] = _spawn([DASK, "worker", address, "--no-nanny", "--nthreads", "1", "--name", name,
                                    "--memory-limit", str(WORKER_LIMIT), "--local-directory", str(tmp / name),
                                    "--host", "127.0.0.1", "--no-dashboard"], tmp / f"{name}.log")
            procs.append(workers[name])
        with Client(address, timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        yield {"address": address, "workers": workers}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lake")
    datagen.generate(str(root), SPEC, DS, 1, ROWS, seed=17, files_per_day=12)  # 12 map tasks: time to kill one
    return root


def _ctx(lake: Path, cluster_cfg: dict, **params) -> StepContext:
    keys = keyring_at(lake.parent / f"{lake.name}-keys.json")
    return StepContext("events", DS, lake_url=str(lake), keyring_path=keys,
                       params={"encrypt": False, "partitions": 16, "chunk_rows": 12_000, **params},
                       cluster=cluster_cfg)


def _digests(ctx: StepContext, stage: str) -> dict[str, str]:
    m = ctx.lake.require(stage, "events", DS)
    return {f.path.split("/", 1)[1]: sha256_of(ctx.lake.abspath(m, f)) for f in m.files}


def test_worker_killed_mid_clean_gives_identical_output_with_bounded_memory(cluster, lake):
    ctx = _ctx(lake, {"backend": "address", "address": cluster["address"]}, rerun="address")
    box: dict = {}
    def target() -> None:
        try:
            box["result"] = clean.run(ctx)
        except BaseException as exc:  # surfaced below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    qroot = lake / "quarantine" / "events" / f"ds={DS}"
    deadline = time.monotonic() + 120
    while not list(qroot.glob("v=*/rejects-*.parquet")):  # first map tasks are done: the clean is under way
        assert time.monotonic() < deadline and t.is_alive(), box
        time.sleep(0.02)
    assert t.is_alive(), "clean finished before the worker could be killed"
    victim = cluster["workers"]["w2"]
    victim.kill()
    victim.wait(timeout=30)
    t.join(timeout=300)
    assert not t.is_alive() and "error" not in box, box.get("error")
    r = box["result"]
    assert r["workers"] == 2 and r["accounting"]["rows_in"] == ROWS

    addr_clean, addr_quarantine = _digests(ctx, "clean"), _digests(ctx, "quarantine")
    assert addr_clean and addr_quarantine

    # the same interval on the embedded local backend (another cluster, another size), from a fresh process
    # as an Airflow task runs it: `python -m tasks clean`
    env = {**os.environ, "PYTHONPATH": str(REPO), "LEPTONFLOW_KEYRING": ctx.keyring_path,
           "LEPTONFLOW_HOME": str(lake.parent / "lfhome"),
           "LEPTONFLOW_HISTORY_URL": f"sqlite:///{lake.parent / 'history.sqlite'}"}
    env.pop("LEPTONFLOW_KEYRING_JSON", None)
    cmd = [sys.executable, "-m", "tasks", "clean", "--dataset", "events", "--ds", DS, "--lake", str(lake),
           "--cluster", json.dumps({"backend": "local"}), "--param", "encrypt=false", "--param", "partitions=16",
           "--param", "chunk_rows=12000", "--param", "rerun=local"]
    out = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r_local = json.loads(out.stdout[out.stdout.index("{"):])
    assert r_local["cache_hit"] is False and r_local["clean_version"] != r["clean_version"]
    assert r_local["accounting"] == r["accounting"]
    now = _ctx(lake, {"backend": "local"})
    assert now.lake.require("clean", "events", DS).version == r_local["clean_version"]
    assert _digests(now, "clean") == addr_clean
    assert _digests(now, "quarantine") == addr_quarantine

    # memory: rows go from map to reduce through shuffle files on disk, never held by Dask; a worker's
    # Arrow working set (its high-water mark) is a fraction of the data it cleaned, and RSS stays under its limit
    assert 0 < r["peak_memory_per_worker"] < WORKER_LIMIT
    assert 0 < r["arrow_peak_per_worker"] < r["bytes_shuffled"] / 3


def test_cache_hit_and_atomic_rerun_on_the_cluster(cluster, lake, monkeypatch):
    address = {"backend": "address", "address": cluster["address"]}
    first = clean.run(_ctx(lake, address, rerun="cache"))
    old = _ctx(lake, address).lake.require("clean", "events", DS)
    with Client(cluster["address"]) as c:
        before = c.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.transition_log))
        hit = clean.run(_ctx(lake, address, rerun="cache"))
        after = c.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.transition_log))
    assert hit["cache_hit"] is True and hit["clean_version"] == first["clean_version"]
    assert after == before  # no task reached the scheduler
    rerun = clean.run(_ctx(lake, address, rerun="replaced"))
    new = _ctx(lake, address).lake.require("clean", "events", DS)
    assert new.version == rerun["clean_version"] != old.version
    # a reader that opened the old manifest can still read all of its files (grace period), and sees the same rows
    assert sum(pq.ParquetFile(_ctx(lake, address).lake.abspath(old, f)).metadata.num_rows for f in old.files) == \
        new.rows


def test_corrupt_column_chunk_is_named_and_nothing_is_committed(cluster, tmp_path):
    datagen.generate(str(tmp_path), SPEC, DS, 1, 20_000, seed=4, files_per_day=2)
    victim = tmp_path / "raw/events" / f"ds={DS}" / "part-00001.parquet"
    md = pq.ParquetFile(victim).metadata
    start = md.row_group(0).column(0).data_page_offset
    data = bytearray(victim.read_bytes())
    data[start: start + 64] = b"\xff" * 64  # the footer still reads: only a worker finds the damage
    victim.write_bytes(bytes(data))
    ctx = _ctx(tmp_path, {"backend": "address", "address": cluster["address"]})
    with pytest.raises(ParquetReadError, match="part-00001.parquet"):
        clean.run(ctx)
    assert ctx.lake.manifest("clean", "events", DS) is None
    assert ctx.lake.manifest("quarantine", "events", DS) is None
    assert not list((tmp_path / "clean").rglob("*.parquet"))
