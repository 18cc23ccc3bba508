"""Validation overhead: validate_raw + validate_clean vs clean + split on the same interval.

Same data (tasks.prep.datagen), same Dask cluster (one LocalCluster: 2 worker processes x 1
thread, reached through the ``address`` backend so no step pays cluster start-up), clean
and split files PME-encrypted (tasks.security.crypto) as in production. Per size and repeat, the
steps run in DAG order on interval D2 (D1 is committed first, so validate_clean computes
drift against it and the split checks run). The machine is shared and contention only
adds time, so the headline uses the best (minimum) of the repeats; all runs are in the
JSON. Target: overhead = (validate_raw + validate_clean) / (clean + split) <= 20%.

Memory: worker RSS is sampled every 0.1 s. On the shared cluster a step's peak includes what
earlier steps left in the workers, so both validation steps also run once more on the
embedded ``local`` backend (a fresh LocalCluster per step, as in production without a shared
cluster): that peak per worker is validation's own. Two data sizes show whether it grows
with the data (it should not much: chunks are bounded).

Peer: GX's own pandas engine (single process, whole interval loaded into one DataFrame)
on the standard row-level expectations of the raw suite, for scale.

    PYTHONPATH=. .venv/bin/python bench/validate.py [--rows 300000,900000] [--repeats 2] [--no-encrypt]

Writes bench/results/validate.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.context import StepContext
from tasks.prep import (
    clean,
    datagen,
    split,
)
from tasks.security import keyring
from tasks.validation.suites import load_suite
from tasks.validation.validate import run_clean, run_raw

log = logging.getLogger("bench.validate")
RESULTS = REPO / "bench" / "results" / "validate.json"
D1, D2 = "2026-11-01", "2026-11-02"


class RssSampler:
    """Peak USS (memory unique to the process) of this process's children (the Dask workers), sampled in a thread."""

    def __init__(self, only_new: bool = False) -> None:
        # only_new: ignore processes that already run (the shared cluster's workers)
        self.skip = {p.pid for p in psutil.Process().children(recursive=True)} if only_new else set()
        self.peak_sum = self.peak_one = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            rss = []
            for p in me.children(recursive=True):
                if p.pid in self.skip:
                    continue
                try:
                    rss.append(p.memory_full_info().uss)  # unique pages: forked workers share the parent's
                except psutil.Error:
                    pass
            if rss:
                self.peak_sum = max(self.peak_sum, sum(rss))
                self.peak_one = max(self.peak_one, max(rss))
            self._stop.wait(0.1)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()


def timed(fn, ctx: StepContext, only_new: bool = False) -> tuple[float, dict[str, Any], int]:
    with RssSampler(only_new) as s:
        t0 = time.perf_counter()
        out = fn(ctx)
        wall = time.perf_counter() - t0
    return wall, out, s.peak_one


def gx_pandas_peer(raw_files: list[str]) -> dict[str, Any]:
    import great_expectations as gx
    import pandas as pd

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    doc = load_suite("events", "raw")
    exps = [
        e
        for e in doc["expectations"]
        if e["type"] in ("expect_column_values_to_not_be_null", "expect_column_values_to_be_between")
    ]
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    df = pd.concat([pd.read_parquet(f) for f in raw_files], ignore_index=True)
    batch = (
        gx.get_context(mode="ephemeral")
        .data_sources.add_pandas("p")
        .add_dataframe_asset("a")
        .add_batch_definition_whole_dataframe("b")
        .get_batch(batch_parameters={"dataframe": df})
    )
    res = batch.validate(
        gx.ExpectationSuite(name="peer", expectations=exps),
        result_format="SUMMARY",
        expectation_parameters={"interval_start": f"{D2}T00:00:00+00:00", "interval_end": "2026-11-03T00:00:00+00:00"},
    )
    wall = time.perf_counter() - t0
    return {
        "wall_s": round(wall, 3),
        "expectations": len(res.results),
        "rss_growth_bytes": psutil.Process().memory_info().rss - rss0,
        "unexpected_total": sum(r.result.get("unexpected_count") or 0 for r in res.results),
    }


def run_size(rows: int, repeats: int, encrypt: bool, workdir: Path, address: str) -> dict[str, Any]:
    lake = workdir / f"lake-{rows}"
    gen = datagen.generate(str(lake), start_ds=D1, days=2, rows_per_day=rows, seed=11)

    keys = str(workdir / "keys.json")
    if not Path(keys).exists():
        keyring.generate(keys)  # explicitly: tasks never create a keyring

    def mk(ds: str, **p: Any) -> StepContext:
        return StepContext(
            dataset="events",
            ds=ds,
            lake_url=str(lake),
            keyring_path=keys,
            history_url=f"sqlite:///{workdir}/h.db",
            cluster={"backend": "address", "address": address},
            params={"encrypt": encrypt, "validation_policy": "warn", **p},
        )

    clean.run(mk(D1))
    split.run(mk(D1))
    run_clean(mk(D1))  # as the DAG does: D1's stored drift profile is D2's baseline
    phases = (("validate_raw", run_raw), ("clean", clean.run), ("split", split.run), ("validate_clean", run_clean))

    def one_run(r: int) -> dict[str, Any]:
        for stage in ("clean", "quarantine", "split", "validation"):
            shutil.rmtree(lake / stage / "events" / f"ds={D2}", ignore_errors=True)  # no cache hits
        ctx = mk(D2, bench_repeat=r)  # a new param: clean/split cache keys change, so they do the work
        wall, outs, mem = {}, {}, {}
        for name, fn in phases:
            wall[name], outs[name], mem[name] = timed(fn, ctx)
        assert outs["validate_raw"]["rows_validated"] == rows
        assert outs["validate_clean"]["rows_validated"] == outs["clean"]["output_rows"]
        return {
            **{f"{k}_s": v for k, v in wall.items()},
            "overhead": (wall["validate_raw"] + wall["validate_clean"]) / (wall["clean"] + wall["split"]),
            "peak_worker_uss_shared_cluster": mem,
            "drift_baseline": outs["validate_clean"]["drift"]["baseline"],
            "validate_clean_failing": [
                f["expectation"] + ":" + str(f["column"]) for f in outs["validate_clean"]["failing"]
            ],
        }

    runs = []
    for r in range(repeats):
        runs.append(one_run(r))
        log.info("rows=%d repeat %d: %s", rows, r, runs[-1])
    # Memory of validation alone: each validation step again on the embedded local backend (its own
    # fresh LocalCluster, 2 workers x 1 thread), so the sampled peak is the step's own.
    fresh: dict[str, Any] = {}
    shutil.rmtree(lake / "validation" / "events" / f"ds={D2}", ignore_errors=True)
    cold = mk(D2)
    cold.cluster = {"backend": "local"}
    cold.upstream = {"plan_clean": {"workers": 2, "threads_per_worker": 1, "memory_limit": 4 << 30}}
    for name, fn in (("validate_raw", run_raw), ("validate_clean", run_clean)):
        wall, _, peak = timed(fn, cold, only_new=True)
        fresh[name] = {"peak_worker_uss": peak, "wall_s_with_cluster_start": round(wall, 3)}
    log.info("rows=%d validation on fresh local clusters: %s", rows, fresh)
    best = {k: min(x[k] for x in runs) for k in ("validate_raw_s", "clean_s", "split_s", "validate_clean_s")}
    raw_files = [str(p) for p in sorted((lake / "raw" / "events" / f"ds={D2}").glob("*.parquet"))]
    return {
        "rows_per_interval": rows,
        "raw_bytes": gen["intervals"][D2]["bytes"],
        "best": {k: round(v, 3) for k, v in best.items()},
        "overhead_best": round(
            (best["validate_raw_s"] + best["validate_clean_s"]) / (best["clean_s"] + best["split_s"]), 4
        ),
        "overhead_median": round(sorted(x["overhead"] for x in runs)[len(runs) // 2], 4),
        "validation_fresh_cluster": fresh,
        "runs": runs,
        "gx_pandas_peer": gx_pandas_peer(raw_files),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("distributed", "great_expectations", "tasks"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="300000,900000", help="rows per interval, comma-separated sizes")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-encrypt", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    import dask
    from distributed import LocalCluster

    workdir = Path(tempfile.mkdtemp(prefix="bench-validate-"))
    os.environ.setdefault("LEPTONFLOW_HOME", str(workdir))
    sizes = []
    try:
        # fork (as tasks.resources.cluster.local does) for the start and for restarts of worker processes
        with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
            cluster = LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                memory_limit="4GiB",
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",
                local_directory=str(workdir),
            )
            try:
                for rows in [int(x) for x in args.rows.split(",")]:
                    sizes.append(run_size(rows, args.repeats, not args.no_encrypt, workdir, cluster.scheduler_address))
            finally:
                cluster.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    worst = max(s["overhead_best"] for s in sizes)
    v_mem = [s["validation_fresh_cluster"]["validate_clean"]["peak_worker_uss"] for s in sizes]
    out = {
        "bench": "validate",
        "command": "PYTHONPATH=. .venv/bin/python bench/validate.py " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared": True},
        "cluster": "LocalCluster 2 workers x 1 thread, 4 GiB each, address backend",
        "encrypted": not args.no_encrypt,
        "sizes": sizes,
        "target_overhead": 0.20,
        "overhead_worst_size": worst,
        "target_met": worst <= 0.20,
        "validate_clean_peak_worker_uss_growth": round(v_mem[-1] / v_mem[0], 3) if len(v_mem) > 1 else None,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    hdr = (
        f"{'rows':>9} {'val_raw s':>9} {'clean s':>8} {'split s':>8} {'val_clean s':>11} {'overhead':>9} "
        f"{'vr peak MB':>11} {'vc peak MB':>11} {'GX pandas s':>11}"
    )
    lines = [hdr]
    for s in sizes:
        b = s["best"]
        lines.append(
            f"{s['rows_per_interval']:>9} {b['validate_raw_s']:>9.2f} {b['clean_s']:>8.2f} {b['split_s']:>8.2f} "
            f"{b['validate_clean_s']:>11.2f} {s['overhead_best']:>8.1%} "
            f"{s['validation_fresh_cluster']['validate_raw']['peak_worker_uss'] / 2**20:>11.0f} "
            f"{s['validation_fresh_cluster']['validate_clean']['peak_worker_uss'] / 2**20:>11.0f} "
            f"{s['gx_pandas_peer']['wall_s']:>11.2f}"
        )
    print("\n".join(lines))
    print(f"target overhead <= 20%: {'met' if out['target_met'] else 'NOT met'} (worst {worst:.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
