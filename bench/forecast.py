"""Forecast sizing vs Dask adapt() vs a static maximum, on a replayed workload trace.

Trace: one interval per day, weekly pattern (weekends ~55%), +1.5%/day trend, 5% noise and
one 3x spike. Each policy runs every interval of the trace and is scored on cost
(worker-seconds), makespan, deadline misses, memory events (spill / OOM) and, for the
forecast policy, wall-time MAPE once 10 intervals of history exist.

1. **Real** (short): a clean-like Dask workload (read Parquet, row filters, normalisation,
   dedupe shuffle on the key, write Parquet) over generated intervals, on real LocalClusters
   (processes, 1 thread each) on this machine. ``forecast`` sizes each run with
   ``tasks.forecast.make_plan`` fed from a real ``tasks.history`` SQLite store; ``adapt`` starts
   one worker and lets ``cluster.adapt(1, max)`` scale; ``static`` is a standing cluster of max.
2. **Simulated** (up to 1,000 workers): the runtime and memory model fitted on the real runs
   (``tasks.forecast.Forecaster``: overhead, parallel per-byte, serial per-byte, per-worker
   costs; residual noise from the real leave-one-out ratios; worker start-up measured) scaled to
   TB-sized intervals. The same noise draw per interval is shared by all policies. ``adapt``
   follows Dask's defaults (1 s adapt interval, 5 s target duration: target = work / 5 s).

Cost accounting per job: ``static`` is charged workers x wall (a standing cluster, start-up free);
``forecast`` workers x (start-up + wall) and its makespan includes the start-up wait (the sensor
waits for workers); ``adapt`` the integral of its worker count (scale-up lag is in its wall).

    PYTHONPATH=. .venv/bin/python bench/forecast.py [--real-intervals 14] [--base-rows 60000]

Writes bench/results/forecast.json and forecast.png and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks import forecast, history  # noqa: E402

log = logging.getLogger("bench.forecast")
RESULTS = REPO / "bench" / "results"
POLICIES = ("forecast", "adapt", "static")
QUANTILE = 0.98  # with < 50 runs the conformal 0.98 bound is the largest leave-one-out ratio
SPILL_FRACTION, OOM_FRACTION = 0.7, 0.95  # Dask's worker memory spill / terminate thresholds
ADAPT_INTERVAL_S, ADAPT_TARGET_DURATION_S = 1.0, 5.0  # distributed.adaptive defaults


# ---- the workload trace -----------------------------------------------------------------------

def make_trace(n: int, seed: int, start: date = date(2026, 9, 7)) -> list[tuple[str, float]]:
    """(ds, relative volume) for n days: weekly pattern, trend, noise, one 3x spike at 70%."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        d = start + timedelta(days=i)
        v = (1 + 0.015 * i) * (0.55 if d.weekday() >= 5 else 1.0) * float(rng.lognormal(0, 0.05))
        if i == int(n * 0.7):
            v *= 3.0
        out.append((d.isoformat(), v))
    return out


# ---- real runs --------------------------------------------------------------------------------

def write_interval(folder: Path, rows: int, seed: int, files: int = 4) -> tuple[list[str], int]:
    """Raw-like event files: ~3% duplicate keys, 1% null prices, noisy category case."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cats = np.array(["Books", " home", "TOYS", "fashion ", "sports", "beauty"])
    paths = []
    per = rows // files
    for i in range(files):
        ids = rng.integers(0, int(rows * 0.97), per)
        price = rng.gamma(2.0, 30.0, per)
        price[rng.random(per) < 0.01] = np.nan
        table = pa.table({
            "event_id": pa.array([f"e{x:09d}" for x in ids]),
            "user_id": pa.array([f"u{x:07d}" for x in rng.integers(0, rows // 20 + 1, per)]),
            "price": pa.array(price),
            "category": pa.array(cats[rng.integers(0, len(cats), per)]),
            "quantity": pa.array(rng.integers(1, 5, per)),
        })
        p = folder / f"part-{i}.parquet"
        pq.write_table(table, p, compression="zstd")
        paths.append(str(p))
    return paths, sum(os.path.getsize(p) for p in paths)


def clean_like(client: Any, files: list[str], out_dir: str) -> int:
    import dask
    import dask.dataframe as dd

    df = dd.read_parquet(files)
    df = df[df.price.notnull() & (df.price >= 0)]
    df = df.assign(category=df.category.str.strip().str.lower())
    kept = df.drop_duplicates(subset=["event_id"], split_out=max(2, df.npartitions))
    _, rows = dask.compute(kept.to_parquet(out_dir, write_index=False, compute=False), kept.shape[0])
    return int(rows)


class Sampler(threading.Thread):
    """Polls the scheduler: worker count over time, peak memory per worker, spilled bytes."""

    def __init__(self, client: Any, period: float = 0.2):
        super().__init__(daemon=True)
        self.client, self.period = client, period
        self.samples: list[tuple[float, int]] = []
        self.peak_memory = 0.0
        self.spilled = 0.0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
            except Exception:  # scheduler busy or closing: skip this sample
                workers = None
            if workers is not None:
                self.samples.append((time.perf_counter(), len(workers)))
                for w in workers.values():
                    m = w.get("metrics", {})
                    self.peak_memory = max(self.peak_memory, float(m.get("memory", 0) or 0))
                    sp = m.get("spilled_bytes") or {}
                    self.spilled = max(self.spilled, float(sp.get("disk", 0) if isinstance(sp, dict) else 0))
            self.stop_flag.wait(self.period)

    def worker_seconds(self, t0: float, t1: float) -> float:
        pts = [(t0, self.samples[0][1] if self.samples else 1)] + [s for s in self.samples if t0 < s[0] < t1]
        pts.append((t1, pts[-1][1]))
        return float(sum((b[0] - a[0]) * a[1] for a, b in zip(pts, pts[1:], strict=False)))


class RealClusters:
    """One standing LocalCluster per policy (as a shared gateway cluster would be), reused across intervals.

    static: max workers always; adapt: ``adapt(1, max)``, back at one worker before each interval;
    forecast: scaled to the plan before each run, the wait for new workers is its start-up.
    """

    def __init__(self, max_workers: int, memory_limit: int, tmp: Path):
        from distributed import Client, LocalCluster

        self.max_workers = max_workers
        self.clusters: dict[str, Any] = {}
        self.clients: dict[str, Any] = {}
        for policy, n in (("static", max_workers), ("adapt", 1), ("forecast", 1)):
            c = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                             host="127.0.0.1", dashboard_address=":0", silence_logs=logging.ERROR,
                             local_directory=str(tmp / policy))
            if policy == "adapt":
                c.adapt(minimum=1, maximum=max_workers)
            self.clusters[policy] = c
            self.clients[policy] = Client(c)
            self.clients[policy].wait_for_workers(n)

    def n_workers(self, policy: str) -> int:
        return len(self.clients[policy].scheduler_info(n_workers=-1).get("workers", {}))

    def run(self, policy: str, workers: int, files: list[str], tmp: Path) -> dict[str, Any]:
        client, cluster = self.clients[policy], self.clusters[policy]
        startup = 0.0
        if policy == "forecast":
            t = time.perf_counter()
            have = self.n_workers(policy)
            cluster.scale(workers)
            if workers > have:
                client.wait_for_workers(workers, timeout=300)
            else:  # wait for the scale-down so the size matches the plan
                for _ in range(200):
                    if self.n_workers(policy) <= workers:
                        break
                    time.sleep(0.1)
            startup = time.perf_counter() - t if workers > have else 0.0
            new_workers = max(0, workers - have)
        elif policy == "adapt":
            for _ in range(300):  # a daily job starts from the adaptive minimum
                if self.n_workers(policy) <= 1:
                    break
                time.sleep(0.1)
        sampler = Sampler(client)
        sampler.start()
        out = tmp / f"out-{policy}-{time.monotonic_ns()}"
        t1 = time.perf_counter()
        rows = clean_like(client, files, str(out))
        t2 = time.perf_counter()
        sampler.stop_flag.set()
        sampler.join()
        shutil.rmtree(out, ignore_errors=True)
        wall = t2 - t1
        if policy == "adapt":
            cost, used = sampler.worker_seconds(t1, t2), max([n for _, n in sampler.samples] or [1])
        elif policy == "forecast":
            cost, used = workers * wall + new_workers * startup, workers
        else:
            cost, used = self.max_workers * wall, self.max_workers
        return {"wall_s": wall, "startup_s": startup, "cost": cost, "makespan": wall + startup, "workers": used,
                "rows_out": rows, "peak_memory": sampler.peak_memory, "spilled": sampler.spilled}

    def close(self) -> None:
        for policy in self.clusters:
            self.clients[policy].close()
            self.clusters[policy].close()


def real_part(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    trace = make_trace(args.real_intervals, args.seed)
    url = f"sqlite:///{tmp / 'history.sqlite'}"
    mem = 1 << 30
    for policy in POLICIES:
        (tmp / policy).mkdir()
    clusters = RealClusters(args.real_max_workers, mem, tmp)
    try:
        # calibration run (not scored): one worker on a median-size interval gives the heuristic's
        # throughput and the deadline, as a deployment would measure once
        cal_files, cal_bytes = write_interval(tmp / "cal", args.base_rows, args.seed + 999)
        cal = clusters.run("forecast", 1, cal_files, tmp)
        rate = cal_bytes / cal["wall_s"]
        deadline = args.real_deadline_factor * cal["wall_s"]
        log.info("real calibration: %.2f MB in %.2fs on 1 worker (%.2f MB/s); deadline %.1fs",
                 cal_bytes / 1e6, cal["wall_s"], rate / 1e6, deadline)
        rows_out: list[dict[str, Any]] = []
        startups: list[float] = []
        for i, (ds, vol) in enumerate(trace):
            files, nbytes = write_interval(tmp / f"raw-{ds}", int(args.base_rows * vol), args.seed + i)
            past = history.runs(url, "clean", "bench", success_only=True)
            plan = forecast.make_plan(past, nbytes, deadline_s=deadline, max_workers=args.real_max_workers,
                                      memory_per_worker=mem, quantile=QUANTILE, heuristic_bytes_per_s=rate)
            order = list(POLICIES) if i % 2 == 0 else list(reversed(POLICIES))  # alternate order: fair noise
            for policy in order:
                r = clusters.run(policy, plan.workers if policy == "forecast" else args.real_max_workers, files, tmp)
                r.update(policy=policy, ds=ds, input_bytes=nbytes, interval=i, deadline=deadline,
                         missed=r["makespan"] > deadline, spill=r["spilled"] > 0, oom=False)
                if policy == "forecast":
                    if r["startup_s"] > 0:
                        startups.append(r["startup_s"])
                    r.update(predicted=plan.predicted["wall_s"], predicted_upper=plan.predicted["wall_s_upper"],
                             source=plan.source, history=len(past))
                    history.record_run(url, stage="clean", dataset="bench", ds=ds, wall_s=r["wall_s"],
                                       success=True, input_bytes=nbytes, workers=r["workers"], threads=1,
                                       memory_limit=mem, peak_memory_per_worker=r["peak_memory"],
                                       spilled_bytes=r["spilled"], plan_source=plan.source,
                                       predicted_wall_s=plan.predicted["wall_s"],
                                       predicted_wall_s_upper=plan.predicted["wall_s_upper"])
                rows_out.append(r)
                log.info("real %s %-8s %d workers: wall %.2fs makespan %.2fs cost %.1f ws%s", ds, policy,
                         r["workers"], r["wall_s"], r["makespan"], r["cost"], " MISSED" if r["missed"] else "")
            shutil.rmtree(tmp / f"raw-{ds}", ignore_errors=True)
    finally:
        clusters.close()
    # the simulator's calibration: all fixed-size real runs (forecast sizes vary, static is the max)
    fit_rows = [{"success": True, "input_bytes": r["input_bytes"], "workers": r["workers"], "threads": 1,
                 "wall_s": r["wall_s"], "peak_memory_per_worker": r["peak_memory"]}
                for r in rows_out if r["policy"] != "adapt"] + [
                {"success": True, "input_bytes": cal_bytes, "workers": 1, "threads": 1, "wall_s": cal["wall_s"],
                 "peak_memory_per_worker": cal["peak_memory"]}]
    history.dispose(url)
    return {"runs": rows_out, "fit_rows": fit_rows, "deadline": deadline, "rate": rate,
            "startup_s": float(np.median(startups)) if startups else 5.0, "cal": cal, "cal_bytes": cal_bytes}


# ---- simulator --------------------------------------------------------------------------------

def calibrate(real: dict[str, Any], max_workers: int) -> dict[str, Any]:
    rows = real["fit_rows"]
    nb = np.array([r["input_bytes"] for r in rows], float)
    nw = np.array([r["workers"] for r in rows], float)
    nt = np.ones_like(nw)
    # the full model (overhead, parallel, serial, per-worker) on runs designed to span sizes 1..max
    wall_model = forecast._RatioModel(QUANTILE).fit(forecast._wall_features(nb, nw, nt, True),
                                                    np.array([r["wall_s"] for r in rows], float))
    mem_model = forecast._RatioModel(QUANTILE).fit(forecast._mem_features(nb, nw, nt, True),
                                                   np.array([max(r["peak_memory_per_worker"], 1.0) for r in rows]))
    # overhead s, s per GB per worker-thread, s per GB (serial), s per worker
    a, b, c, d = (float(x) for x in wall_model.model.coef_)
    ratios = np.array(wall_model.loo_ratios)  # held-out actual/predicted: the run-to-run noise
    sigma = float(np.std(np.log(ratios))) if len(ratios) > 2 else 0.1
    if b <= 0:
        raise RuntimeError("calibration found no parallel work (b=0): the real runs did not scale with bytes")
    notes = []
    # scale so the median interval needs ~30% of the maximum at the deadline, serial part kept feasible
    share = 0.3 * max_workers
    if c * share / b >= 0.5:
        c_new = 0.25 * b / share
        notes.append(f"serial per-GB cost capped {c:.3g} -> {c_new:.3g} s/GB (not identifiable at MB scale)")
        c = c_new
    deadline = 1800.0
    fixed = a + d * share
    if fixed >= deadline / 2:
        d_new = (deadline / 4 - a) / share
        notes.append(f"per-worker cost capped {d:.3g} -> {d_new:.3g} s/worker")
        d = max(d_new, 0.0)
        fixed = a + d * share
    median_gb = (deadline / 2 - fixed) * share / (b + c * share) if b + c * share > 0 else 1.0
    mem_m0 = float(mem_model.model.coef_[0])
    mem_m1 = float(mem_model.model.coef_[1] + mem_model.model.coef_[2])  # bytes of memory per GB per worker
    mem_m0 = max(mem_m0, 1e8)
    # workers sized like a deployment would: the median interval at 30% of the maximum uses ~35% of a worker
    need = (mem_m0 + mem_m1 * median_gb / share) / 0.35
    worker_memory = int(2 ** math.ceil(math.log2(max(need, 4 << 30))))
    return {"a": a, "b": b, "c": c, "d": d, "sigma": sigma, "median_gb": median_gb, "deadline": deadline,
            "startup_s": real["startup_s"], "mem_m0": mem_m0, "mem_m1": mem_m1,
            "worker_memory": worker_memory, "notes": notes}


def sim_true(cal: dict[str, Any], gb: float, w: np.ndarray | float) -> np.ndarray | float:
    return cal["a"] + cal["b"] * gb / w + cal["c"] * gb + cal["d"] * w


def sim_memory(cal: dict[str, Any], gb: float, w: float) -> float:
    return cal["mem_m0"] + cal["mem_m1"] * gb / w


def sim_part(args: argparse.Namespace, cal: dict[str, Any], sigma: float) -> dict[str, Any]:
    trace = make_trace(args.sim_intervals, args.seed + 1)
    rng = np.random.default_rng(args.seed + 2)
    W, D, s_w = args.sim_max_workers, cal["deadline"], cal["startup_s"]
    limit = cal["worker_memory"]
    past: list[dict[str, Any]] = []
    volumes: list[tuple[str, float]] = []
    runs: list[dict[str, Any]] = []
    for i, (ds, vol) in enumerate(trace):
        gb = cal["median_gb"] * vol
        noise = float(rng.lognormal(0, sigma))  # common to all policies: same data, same luck
        mem_noise = float(rng.lognormal(0, 0.05))
        vol_pred = forecast.forecast_volume(volumes, ds)[0] if volumes else None
        volumes.append((ds, gb * 1e9))
        for policy in POLICIES:
            if policy == "static":
                w = W
                wall = sim_true(cal, gb, w) * noise
                cost, makespan, peak_w = w * wall, wall, w
            elif policy == "forecast":
                plan = forecast.make_plan(past, gb * 1e9, deadline_s=D - s_w, max_workers=W,
                                          memory_per_worker=limit, partition_bytes=256 << 20,
                                          quantile=QUANTILE, heuristic_bytes_per_s=1e9 / cal["b"])
                w = plan.workers
                wall = sim_true(cal, gb, w) * noise
                cost, makespan, peak_w = w * (s_w + wall), s_w + wall, w
            else:  # adapt: one worker, then work / target-duration workers after one tick + start-up
                work = cal["b"] * gb  # worker-seconds of parallel work
                target = int(np.clip(math.ceil(work / ADAPT_TARGET_DURATION_S), 1, W))
                t1 = ADAPT_INTERVAL_S + s_w
                if work <= t1 or target == 1:
                    w, wall = 1, sim_true(cal, gb, 1) * noise
                    cost = wall
                else:
                    w = target
                    wall = (cal["a"] + cal["c"] * gb + cal["d"] * w + t1 + (work - t1) / w) * noise
                    cost = wall + (w - 1) * max(wall - ADAPT_INTERVAL_S, 0.0)
                makespan, peak_w = wall, w
            mem = sim_memory(cal, gb, peak_w) * mem_noise
            r = {"policy": policy, "ds": ds, "interval": i, "input_gb": gb, "workers": w, "wall_s": wall,
                 "makespan": makespan, "cost": cost, "missed": makespan > D, "peak_memory": mem,
                 "spill": mem > SPILL_FRACTION * limit, "oom": mem > OOM_FRACTION * limit}
            if policy == "forecast":
                r.update(predicted=plan.predicted["wall_s"], predicted_upper=plan.predicted["wall_s_upper"],
                         source=plan.source, history=len(past), volume_forecast_gb=vol_pred / 1e9 if vol_pred else None)
                past.append({"success": True, "input_bytes": gb * 1e9, "workers": w, "threads": 1, "wall_s": wall,
                             "peak_memory_per_worker": mem})
            runs.append(r)
    return {"runs": runs, "deadline": D, "sigma": sigma}


# ---- scoring and output -----------------------------------------------------------------------

def summarize(runs: list[dict[str, Any]], policy: str) -> dict[str, Any]:
    mine = [r for r in runs if r["policy"] == policy]
    out = {
        "intervals": len(mine),
        "worker_seconds": round(sum(r["cost"] for r in mine), 2),
        "makespan_total_s": round(sum(r["makespan"] for r in mine), 2),
        "makespan_max_s": round(max(r["makespan"] for r in mine), 2),
        "deadline_misses": sum(bool(r["missed"]) for r in mine),
        "spill_events": sum(bool(r["spill"]) for r in mine),
        "oom_events": sum(bool(r["oom"]) for r in mine),
        "mean_workers": round(float(np.mean([r["workers"] for r in mine])), 2),
    }
    if policy == "forecast":
        scored = [r for r in mine if r["history"] >= 10]
        if scored:
            out["wall_mape_after_10"] = round(float(np.mean(
                [abs(r["predicted"] - r["wall_s"]) / r["wall_s"] for r in scored])), 4)
            out["upper_coverage_after_10"] = round(float(np.mean(
                [r["wall_s"] <= r["predicted_upper"] for r in scored])), 3)
            out["mape_intervals"] = len(scored)
    return out


def plot(real: dict[str, Any], sim: dict[str, Any], table: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    for ax, part, unit in ((axes[0][0], sim, "sim"), (axes[0][1], real, "real")):
        fr = [r for r in part["runs"] if r["policy"] == "forecast"]
        x = [r["interval"] for r in fr]
        ax.plot(x, [r["wall_s"] for r in fr], "o-", label="actual wall")
        ax.plot(x, [r["predicted"] for r in fr], "s--", label="forecast")
        ax.plot(x, [r["predicted_upper"] for r in fr], ":", label=f"upper (q{QUANTILE:g})")
        ax.axhline(part["deadline"], color="red", lw=0.8, label="deadline")
        ax.axvline(9.5, color="grey", lw=0.5)
        ax2 = ax.twinx()
        ax2.bar(x, [r["workers"] for r in fr], alpha=0.15, color="green")
        ax2.set_ylabel("forecast workers")
        ax.set_title(f"{unit}: forecast vs actual wall time (clean step)")
        ax.set_xlabel("interval")
        ax.set_ylabel("seconds")
        ax.legend(fontsize=7, loc="upper left")
    fr = [r for r in sim["runs"] if r["policy"] == "forecast"]
    ax = axes[1][0]
    ax.plot([r["interval"] for r in fr], [r["input_gb"] for r in fr], "o-", label="actual input (GB)")
    vf = [(r["interval"], r["volume_forecast_gb"]) for r in fr if r["volume_forecast_gb"]]
    ax.plot([a for a, _ in vf], [b for _, b in vf], "s--", label="volume forecast (trend + weekday)")
    ax.set_title("sim: next-interval input volume forecast")
    ax.legend(fontsize=7)
    ax = axes[1][1]
    xs = np.arange(len(POLICIES))
    ax.bar(xs - 0.2, [table["sim"][p]["worker_seconds"] / table["sim"]["adapt"]["worker_seconds"] for p in POLICIES],
           0.4, label="sim (<= 1000 workers)")
    ax.bar(xs + 0.2, [table["real"][p]["worker_seconds"] / table["real"]["adapt"]["worker_seconds"]
                      for p in POLICIES], 0.4, label="real (LocalCluster)")
    ax.set_xticks(xs, POLICIES)
    ax.axhline(0.8, color="red", lw=0.8, label="target 0.8 x adapt")
    ax.set_title("cost (worker-seconds) relative to adapt()")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--real-intervals", type=int, default=14)
    p.add_argument("--base-rows", type=int, default=400_000, help="rows of a weekday interval in the real part")
    p.add_argument("--real-max-workers", type=int, default=3)
    p.add_argument("--real-deadline-factor", type=float, default=1.3,
                   help="real deadline = factor x the calibration run's wall on one worker")
    p.add_argument("--sim-intervals", type=int, default=35)
    p.add_argument("--sim-max-workers", type=int, default=1000)
    p.add_argument("--sim-noise", type=float, default=0.10,
                   help="run-to-run noise (lognormal sigma) of the main simulation; a second simulation uses the "
                        "sigma measured on the real runs")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--real-cache", help="JSON file: reuse the real runs stored there (written when missing)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cache = Path(args.real_cache) if args.real_cache else None
    if cache is not None and cache.exists():  # re-simulate from earlier real runs (same trace arguments)
        real = json.loads(cache.read_text())
    else:
        tmp = Path(tempfile.mkdtemp(prefix="lf-bench-forecast-"))
        try:
            real = real_part(args, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if cache is not None:
            cache.write_text(json.dumps(real, default=float))
    real_s = time.perf_counter() - t0
    cal = calibrate(real, args.sim_max_workers)
    sim = sim_part(args, cal, args.sim_noise)
    sim_noisy = sim_part(args, cal, cal["sigma"])
    parts = {"real": real, "sim": sim, "sim_measured_noise": sim_noisy}
    table = {part: {p_: summarize(data["runs"], p_) for p_ in POLICIES} for part, data in parts.items()}
    checks = {}
    for part in parts:
        t = table[part]
        checks[part] = {
            "cost_ratio_vs_adapt": round(t["forecast"]["worker_seconds"] / t["adapt"]["worker_seconds"], 3),
            "cost_target_met": t["forecast"]["worker_seconds"] <= 0.8 * t["adapt"]["worker_seconds"]
            and t["forecast"]["deadline_misses"] <= t["adapt"]["deadline_misses"],
            "mape_target_met": (t["forecast"].get("wall_mape_after_10") is not None
                                and t["forecast"]["wall_mape_after_10"] <= 0.15),
        }
    doc = {
        "benchmark": "forecast",
        "command": "PYTHONPATH=. .venv/bin/python bench/forecast.py " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared": True},
        "policies": [{"policy": p_, **{part: table[part][p_] for part in parts}} for p_ in POLICIES],
        "targets": {"cost_vs_adapt_max": 0.8, "wall_mape_max": 0.15, "checks": checks},
        "config": {"quantile": QUANTILE, "real_intervals": args.real_intervals,
                   "real_max_workers": args.real_max_workers, "real_deadline_s": round(real["deadline"], 2),
                   "sim_intervals": args.sim_intervals,
                   "sim_max_workers": args.sim_max_workers, "sim_deadline_s": cal["deadline"],
                   "sim_noise_sigma": args.sim_noise, "measured_noise_sigma": round(cal["sigma"], 4),
                   "adapt": {"interval_s": ADAPT_INTERVAL_S, "target_duration_s": ADAPT_TARGET_DURATION_S}},
        "calibration": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in cal.items()},
        "real_seconds": round(real_s, 1),
        "runs": {part: data["runs"] for part, data in parts.items()},
    }
    (out_dir / "forecast.json").write_text(json.dumps(doc, indent=1, default=float))
    plot(real, sim, table, out_dir / "forecast.png")
    print(f"\nforecast sizing vs adapt() vs static max (real part {real_s:.0f}s on {os.cpu_count()} shared cores)\n")
    print("| part | policy | worker-s | cost/adapt | makespan total s | max makespan s | deadline misses | "
          "spill | OOM | mean workers | wall MAPE (>=10 hist) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for part in parts:
        for p_ in POLICIES:
            t = table[part][p_]
            mape = t.get("wall_mape_after_10")
            print(f"| {part} | {p_} | {t['worker_seconds']:.1f} | "
                  f"{t['worker_seconds'] / table[part]['adapt']['worker_seconds']:.2f} | {t['makespan_total_s']:.1f} | "
                  f"{t['makespan_max_s']:.1f} | {t['deadline_misses']} | {t['spill_events']} | {t['oom_events']} | "
                  f"{t['mean_workers']} | {'' if mape is None else f'{mape:.1%}'} |")
    print(f"\nchecks: {json.dumps(checks)}")
    if cal["notes"]:
        print("calibration notes: " + "; ".join(cal["notes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
