"""Benchmark: the same clean + dedupe + split (+ train feature stats) in leptonflow, DuckDB, Polars,
and a plain pyarrow read-then-write copy as the floor.

    PYTHONPATH=. .venv/bin/python bench/clean_split.py              # ~2 GB and ~8 GB
    PYTHONPATH=. .venv/bin/python bench/clean_split.py --sizes 1,4  # other sizes (GB)
    PYTHONPATH=. .venv/bin/python bench/clean_split.py --quick      # ~0.05 GB smoke run

Sizes are the in-memory (Arrow) size of the generated raw rows of one day (``tasks.prep.datagen``);
the raw Parquet on disk is ~3.3x smaller. Every engine runs in its own process, with the same
2 cores; wall, CPU (process + children) and peak RSS (sum over the process tree, sampled
every 0.1 s) are measured from outside. Every engine writes zstd Parquet: clean rows by split
(train/val/test), rejected rows with their reason, and the
train feature statistics. Row counts per split and per reject reason must be identical across
engines (asserted). Derived feature columns (``hour``) are not stored by any engine (leptonflow
derives them when it reads); they are computed for the train statistics.
Results: bench/results/clean_split.json and .md.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil

from tasks.spec import DatasetSpec, spec_for

log = logging.getLogger("bench.clean_split")
DS = "2026-11-01"
START = "2026-11-01 00:00:00+00"
END = "2026-11-02 00:00:00+00"
ENGINES = ("leptonflow", "duckdb", "polars", "pyarrow_copy")
# leptonflow and the copy floor, the two sides of the <= 2x target, run REPEATS times each, interleaved
# (leptonflow, floor, leptonflow, ...): the machine is shared and its speed drifts by tens of percent within
# minutes, so each leptonflow run has a floor run right next to it. Reported: each side's best wall, and the
# median of the per-round ratios. DuckDB and Polars, 4-5x away, run once (their 8 GB runs take minutes).
PAIRED = ("leptonflow", "pyarrow_copy")
REPEATS = 3
WS = " \t\n\r\x0b\x0c"
# leptonflow cluster for the bench: 2 single-thread workers (the machine has 2 cores). Rows reach the reduces
# through shuffle files, so Dask holds only small metas; the early-spill settings only bound what little it holds.
LF_PLAN = {"workers": 2, "threads_per_worker": 1, "memory_limit": 3 << 30}
LF_MEMORY = {"distributed.worker.memory.target": 0.25, "distributed.worker.memory.spill": 0.5,
             "distributed.worker.memory.pause": 0.85}


# ---- engines (each runs in its own process: `--engine NAME`) -------------------------------------
def _warm_input(data: Path) -> None:
    """Read every raw file once so each engine starts with the input in the page cache: without it the
    first engine of a size may pay disk reads that the copy floor's repeats (best of 3) never do."""
    for path in _raw_files(data):
        with open(path, "rb") as fh:
            while fh.read(8 << 20):
                pass


def _raw_files(data: Path) -> list[str]:
    return sorted(glob.glob(str(data / "raw" / "events" / f"ds={DS}" / "*.parquet")))


def run_leptonflow(data: Path, out: Path, spec: DatasetSpec) -> dict[str, Any]:
    import dask

    from tasks.context import StepContext
    from tasks.prep import clean, split

    dask.config.set(LF_MEMORY)
    from tasks.security import keyring

    keys = out / "keys.json"
    if not keys.exists():
        keyring.generate(keys)  # explicitly: tasks never create a keyring
    ctx = StepContext("events", DS, lake_url=str(data), keyring_path=str(keys),
                      params={"encrypt": False, "rerun": uuid.uuid4().hex},
                      cluster={"backend": "local", "local_directory": str(out / "dask")},
                      upstream={"plan_clean": LF_PLAN})
    c = clean.run(ctx)
    s = split.run(ctx)
    return {"rows_in": c["input_rows"], "splits": s["rows"], "rejected": c["rejected_by_reason"],
            "spilled_bytes": c["spilled_bytes"], "peak_memory_per_worker": c["peak_memory_per_worker"],
            "arrow_peak_per_worker": c["arrow_peak_per_worker"], "bytes_shuffled": c["bytes_shuffled"]}


def _duck_str(c, name: str) -> str:
    e = f"NULLIF(trim(CAST({name} AS VARCHAR), '{WS}'), '')"
    return {"lower": f"lower({e})", "upper": f"upper({e})"}.get(c.normalize, e)


def run_duckdb(data: Path, out: Path, spec: DatasetSpec) -> dict[str, Any]:
    import duckdb

    from tasks.prep.clean import reason_codes

    con = duckdb.connect(str(out / "duck.db"))
    con.execute("SET threads=2; SET TimeZone='UTC'; SET preserve_insertion_order=false")
    con.execute(f"SET temp_directory='{out / 'duck_tmp'}'; SET memory_limit='6GB'")
    files = _raw_files(data)
    norm, checks = [], {}
    for c in spec.columns:
        if c.type in ("string", "category"):
            expr = _duck_str(c, c.name)
        elif c.type == "float":
            expr = f"CASE WHEN isnan({c.name}) THEN NULL ELSE CAST({c.name} AS DOUBLE) END"
        elif c.type == "int":
            expr = f"CAST({c.name} AS BIGINT)"
        elif c.type == "bool":
            expr = f"CAST({c.name} AS BOOLEAN)"
        else:
            expr = f"CAST({c.name} AS TIMESTAMPTZ)"
        norm.append(f"{expr} AS {c.name}")
        if c.required:
            checks[f"missing_required:{c.name}"] = f"{c.name} IS NULL"
        if (c.min is not None or c.max is not None) and c.on_out_of_range == "reject":
            checks[f"out_of_range:{c.name}"] = f"({c.name} < {c.min} OR {c.name} > {c.max})"
        if c.allowed and c.on_unknown == "reject":
            allowed = ", ".join(f"'{a}'" for a in c.allowed)
            checks[f"unknown_category:{c.name}"] = f"({c.name} IS NOT NULL AND {c.name} NOT IN ({allowed}))"
    t = spec.time_column
    checks["out_of_interval"] = f"NOT coalesce({t} >= TIMESTAMPTZ '{START}' AND {t} < TIMESTAMPTZ '{END}', false)"
    case = " ".join(f"WHEN {checks[r]} THEN '{r}'" for r in reason_codes(spec) if r in checks)
    repaired = []
    for c in spec.columns:
        e = c.name
        if (c.min is not None or c.max is not None) and c.on_out_of_range == "clip":
            lo, hi = (int(c.min), int(c.max)) if c.type == "int" else (c.min, c.max)
            e = f"greatest(least({e}, {hi}), {lo})"
        if c.allowed and c.on_unknown == "map":
            allowed = ", ".join(f"'{a}'" for a in c.allowed)
            e = f"CASE WHEN {e} IS NOT NULL AND {e} NOT IN ({allowed}) THEN '{c.unknown_value}' ELSE {e} END"
        repaired.append(f"{e} AS {c.name}")
    file_list = ", ".join(f"'{f}'" for f in files)
    raw_cols = ", ".join(f"CAST({c.name} AS VARCHAR) AS {c.name}" for c in spec.columns)
    key = ", ".join(spec.key)
    order = ", ".join([*spec.dedupe_order, "_file", "_row"])
    con.execute(f"""
        CREATE TEMP TABLE checked AS
        SELECT *, CASE {case} ELSE NULL END AS _reason FROM (
          SELECT {", ".join(norm)}, filename AS _file, file_row_number AS _row,
                 {", ".join(f"{c.name} AS _raw_{c.name}" for c in spec.columns)}
          FROM read_parquet([{file_list}], filename=true, file_row_number=true))""")
    con.execute(f"""
        CREATE TEMP TABLE ranked AS
        SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY {order}) AS _rn
        FROM checked WHERE _reason IS NULL""")
    salt = spec.split.salt.replace("'", "''")
    u = f"CAST(('0x' || substr(md5('{salt}:' || {spec.group_column}), 1, 8)) AS BIGINT) / 4294967296.0"
    tr, va = spec.split.train, spec.split.train + spec.split.val
    (out / "duck_split").mkdir()
    con.execute(f"""
        COPY (SELECT {", ".join(repaired)},
                     CASE WHEN {u} < {tr} THEN 'train' WHEN {u} < {va} THEN 'val' ELSE 'test' END AS split
              FROM ranked WHERE _rn = 1)
        TO '{out / "duck_split"}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (split))""")
    rejects = f"""
        SELECT {", ".join(f"CAST(_raw_{c.name} AS VARCHAR) AS {c.name}" for c in spec.columns)},
               _reason, _file AS _source_file, _row AS _source_row FROM checked WHERE _reason IS NOT NULL
        UNION ALL
        SELECT {raw_cols}, 'duplicate_key', _file, _row FROM ranked WHERE _rn > 1"""
    con.execute(f"COPY ({rejects}) TO '{out / 'duck_quarantine.parquet'}' (FORMAT parquet, COMPRESSION zstd)")
    split_glob = f"read_parquet('{out / 'duck_split'}/*/*.parquet', hive_partitioning=true)"
    splits = dict(con.execute(f"SELECT split, count(*) FROM {split_glob} GROUP BY split").fetchall())
    rejected = dict(con.execute(f"SELECT _reason, count(*) FROM read_parquet('{out / 'duck_quarantine.parquet'}') "
                                "GROUP BY _reason").fetchall())
    # train feature statistics (the same work leptonflow does)
    derived = {n: f"CAST({r['op']}({r['from']}) AS BIGINT)" for n, r in spec.features.derived.items()}
    num = ", ".join(f"avg({f}), stddev_pop({f}), min({f}), max({f}), quantile_cont({f}, [0.01, 0.25, 0.5, 0.75, 0.99])"
                    for f in spec.features.numeric)
    cols = ", ".join(["*", *(f"{e} AS {n}" for n, e in derived.items())])
    con.execute(f"SELECT {num} FROM (SELECT {cols} FROM {split_glob} WHERE split = 'train')").fetchall()
    for f in spec.features.categorical:
        con.execute(f"SELECT {f}, count(*) FROM {split_glob} WHERE split = 'train' GROUP BY {f}").fetchall()
    rows_in = con.execute(f"SELECT count(*) FROM read_parquet([{file_list}])").fetchone()[0]
    return {"rows_in": rows_in, "splits": {k: int(v) for k, v in splits.items()},
            "rejected": {k: int(v) for k, v in rejected.items()}}


def run_polars(data: Path, out: Path, spec: DatasetSpec) -> dict[str, Any]:
    import polars as pl

    from tasks.prep.clean import reason_codes
    from tasks.prep.split import unit_interval

    files = _raw_files(data)
    start = pl.lit(START[:19]).str.to_datetime(time_zone="UTC").dt.cast_time_unit("us")
    end = pl.lit(END[:19]).str.to_datetime(time_zone="UTC").dt.cast_time_unit("us")
    scans = [pl.scan_parquet(f).with_row_index("_row").with_columns(pl.lit(i, pl.Int32).alias("_file"))
             for i, f in enumerate(files)]
    lf = pl.concat(scans)
    norm, checks = [], {}
    for c in spec.columns:
        col = pl.col(c.name)
        if c.type in ("string", "category"):
            e = col.cast(pl.String).str.strip_chars(WS)
            e = pl.when(e.str.len_bytes() == 0).then(None).otherwise(e)
            if c.normalize == "lower":
                e = e.str.to_lowercase()
            elif c.normalize == "upper":
                e = e.str.to_uppercase()
        elif c.type == "float":
            e = pl.when(col.is_nan()).then(None).otherwise(col.cast(pl.Float64))
        elif c.type == "int":
            e = col.cast(pl.Int64)
        else:
            e = col
        norm.append(e.alias(c.name))
        if c.required:
            checks[f"missing_required:{c.name}"] = pl.col(c.name).is_null()
        if (c.min is not None or c.max is not None) and c.on_out_of_range == "reject":
            checks[f"out_of_range:{c.name}"] = (pl.col(c.name) < c.min) | (pl.col(c.name) > c.max)
        if c.allowed and c.on_unknown == "reject":
            checks[f"unknown_category:{c.name}"] = pl.col(c.name).is_not_null() & ~pl.col(c.name).is_in(
                list(c.allowed))
    t = pl.col(spec.time_column)
    checks["out_of_interval"] = ~((t >= start) & (t < end)).fill_null(False)
    reason = pl.lit(None, pl.String)
    for r in reversed([r for r in reason_codes(spec) if r in checks]):
        reason = pl.when(checks[r].fill_null(False)).then(pl.lit(r)).otherwise(reason)
    raw = [pl.col(f"_raw_{c.name}").alias(c.name) for c in spec.columns]
    checked = lf.with_columns([pl.col(c.name).cast(pl.String).alias(f"_raw_{c.name}") for c in spec.columns]).select(
        [*norm, pl.col("_file"), pl.col("_row"), *[pl.col(f"_raw_{c.name}") for c in spec.columns]]).with_columns(
        reason.alias("_reason"))
    # rejects straight from the raw scan (streaming, raw values as strings); valid rows without raw copies
    checked.filter(pl.col("_reason").is_not_null()).select([*raw, "_reason", "_file", "_row"]).sink_parquet(
        out / "polars_rejects.parquet", compression="zstd", engine="streaming")
    valid = checked.filter(pl.col("_reason").is_null()).select(
        [*[c.name for c in spec.columns], "_file", "_row"]).collect(engine="streaming")
    rows_in = pl.concat([pl.scan_parquet(f).select(pl.len()) for f in files]).sum().collect().item()
    valid = valid.sort([*spec.dedupe_order, "_file", "_row"])
    valid = valid.with_columns(pl.struct(list(spec.key)).is_first_distinct().alias("_first"))
    dups = valid.filter(~pl.col("_first"))
    dups.select([*[pl.col(c.name).cast(pl.String) for c in spec.columns], pl.lit("duplicate_key").alias("_reason"),
                 "_file", "_row"]).write_parquet(out / "polars_duplicates.parquet", compression="zstd")
    survivors = valid.filter(pl.col("_first"))
    del valid, dups
    repaired = []
    for c in spec.columns:
        e = pl.col(c.name)
        if (c.min is not None or c.max is not None) and c.on_out_of_range == "clip":
            e = e.clip(*((int(c.min), int(c.max)) if c.type == "int" else (c.min, c.max)))
        if c.allowed and c.on_unknown == "map":
            e = pl.when(e.is_not_null() & ~e.is_in(list(c.allowed))).then(pl.lit(c.unknown_value)).otherwise(e)
        repaired.append(e.alias(c.name))
    groups = survivors.select(pl.col(spec.group_column).unique())
    u = unit_interval(groups.get_column(spec.group_column).to_list(), spec.split.salt)
    tr, va = spec.split.train, spec.split.train + spec.split.val
    gmap = groups.with_columns(pl.Series("split", ["train" if x < tr else "val" if x < va else "test" for x in u]))
    final = survivors.select([*repaired, pl.col(spec.group_column).alias("_g")]).join(
        gmap.rename({spec.group_column: "_g"}), on="_g", how="left").drop("_g")
    splits = {}
    for name in ("train", "val", "test"):
        part = final.filter(pl.col("split") == name).drop("split")
        part.write_parquet(out / f"polars_{name}.parquet", compression="zstd")
        splits[name] = part.height
        if name == "train":  # derived features (hour) are computed for the statistics, not stored
            part = part.with_columns(pl.col(spec.time_column).dt.hour().cast(pl.Int64).alias("hour"))
            part.select([pl.col(f).mean() for f in spec.features.numeric] + [pl.col(f).std(ddof=0).alias(f"{f}_s")
                        for f in spec.features.numeric] + [pl.col(f).quantile(q).alias(f"{f}_{q}")
                        for f in spec.features.numeric for q in (0.01, 0.25, 0.5, 0.75, 0.99)])
            for f in spec.features.categorical:
                part.group_by(f).len()
    counts = pl.concat([pl.scan_parquet(out / "polars_rejects.parquet").select("_reason"),
                        pl.scan_parquet(out / "polars_duplicates.parquet").select("_reason")]).group_by(
        "_reason").len().collect()
    return {"rows_in": rows_in, "splits": splits,
            "rejected": dict(zip(counts["_reason"].to_list(), counts["len"].to_list(), strict=True))}


def run_pyarrow_copy(data: Path, out: Path, spec: DatasetSpec) -> dict[str, Any]:
    import pyarrow.parquet as pq

    rows = 0
    for i, f in enumerate(_raw_files(data)):
        pf = pq.ParquetFile(f)
        with pq.ParquetWriter(out / f"copy-{i:05d}.parquet", pf.schema_arrow, compression="zstd") as w:
            for rg in range(pf.num_row_groups):
                t = pf.read_row_group(rg)
                w.write_table(t, row_group_size=128 * 1024)
                rows += t.num_rows
    return {"rows_in": rows}


# ---- driver ---------------------------------------------------------------------------------
def _measure(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `cmd`; wall, CPU of the process tree, peak RSS summed over the tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [ps, *ps.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_bytes": peak, **result}


def _run_once(engine: str, data: Path, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """One measured run of `engine` on a clean scratch folder, input warm in the page cache."""
    scratch = workdir / f"scratch-{engine}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for stage in ("clean", "quarantine", "split"):
        shutil.rmtree(data / stage, ignore_errors=True)
    _warm_input(data)
    try:
        return _measure([sys.executable, __file__, "--engine", engine, "--data", str(data), "--scratch", str(scratch)],
                        env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _data(workdir: Path, gb: float) -> tuple[Path, dict[str, Any]]:
    from tasks.prep import datagen
    data = workdir / f"data-{gb:g}gb"
    summary_path = data / "summary.json"
    if summary_path.exists():
        return data, json.loads(summary_path.read_text())
    shutil.rmtree(data, ignore_errors=True)
    files = max(4, int(gb * 8))
    log.info("generating %.2f GB (%d files) under %s", gb, files, data)
    summary = datagen.generate(str(data), spec_for("events"), DS, 1, gb=gb, seed=7, files_per_day=files)
    summary_path.write_text(json.dumps(summary))
    return data, summary


def _table(results: list[dict[str, Any]]) -> str:
    lines = ["| size | engine | wall s | CPU s | peak RSS GB | rows in | train | val | test | rejected |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        s = r.get("splits", {})
        if "error" in r:
            lines.append(f"| {r['gb']:g} GB | {r['engine']} | failed: {r['error'].splitlines()[0][-60:]} |"
                         " | | | | | | |")
            continue
        rejected = sum(r["rejected"].values()) if "rejected" in r else "-"
        lines.append(f"| {r['gb']:g} GB | {r['engine']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{r['peak_rss_bytes'] / 1e9:.2f} | {r['rows_in']:,} | {s.get('train', '-')} | "
                     f"{s.get('val', '-')} | {s.get('test', '-')} | {rejected} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="2,8", help="comma-separated sizes in GB (in-memory raw rows)")
    p.add_argument("--quick", action="store_true", help="one small size (0.05 GB)")
    p.add_argument("--workdir", default="/tmp/leptonflow-bench")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "clean_split"))
    p.add_argument("--resume", action="store_true",
                   help="reuse per-engine results saved in --workdir by an earlier invocation")
    p.add_argument("--skip", default="", help="comma-separated ENGINE@GB runs not to attempt (e.g. polars@8: "
                   "Polars holds the interval in memory and would exceed this machine's RAM)")
    p.add_argument("--engine", help=argparse.SUPPRESS)  # internal: run one engine in this process
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    spec = spec_for("events")
    if args.engine:
        fn = globals()[f"run_{args.engine}"]
        print(json.dumps(fn(Path(args.data), Path(args.scratch), spec), default=int))
        return 0
    sizes = [0.05] if args.quick else [float(s) for s in args.sizes.split(",")]
    engines = args.engines.split(",")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "POLARS_MAX_THREADS": "2", "OMP_NUM_THREADS": "2"}
    results = []
    for gb in sizes:
        data, summary = _data(workdir, gb)
        todo = []
        for engine in engines:
            saved = workdir / f"result-{engine}-{gb:g}gb.json"
            if args.resume and saved.exists():  # a measurement of an earlier, interrupted invocation
                results.append(json.loads(saved.read_text()))
                log.info("size %.2f GB: %s measured earlier (%s)", gb, engine, saved)
            elif f"{engine}@{gb:g}" in args.skip.split(","):
                results.append({"engine": engine, "gb": gb, "error": "not run (--skip)", "wall_s": float("nan"),
                                "cpu_s": float("nan"), "peak_rss_bytes": 0, "rows_in": 0})
            else:
                todo.append(engine)
        paired = [e for e in todo if e in PAIRED]
        rounds = [paired] * REPEATS + [[e] for e in todo if e not in PAIRED]
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in todo}
        failed: dict[str, str] = {}
        for group in rounds:
            for engine in group:
                if engine in failed:
                    continue
                log.info("size %.2f GB: running %s (run %d)", gb, engine, len(runs[engine]) + 1)
                try:
                    runs[engine].append(_run_once(engine, data, workdir, env))
                except RuntimeError as exc:  # e.g. killed for memory: record it, go on with the other engines
                    log.error("%s at %.2f GB failed: %s", engine, gb, str(exc)[:500])
                    failed[engine] = str(exc)[:2000]
        for engine in todo:
            if engine in failed or not runs[engine]:
                r = {"error": failed.get(engine, "no run"), "wall_s": float("nan"), "cpu_s": float("nan"),
                     "peak_rss_bytes": 0, "rows_in": 0}
            else:
                r = dict(min(runs[engine], key=lambda x: x["wall_s"]))
                if len(runs[engine]) > 1:
                    r["wall_s_runs"] = [x["wall_s"] for x in runs[engine]]
                    # the peak of every run, not only of the fastest: RSS is judged on its worst case
                    r["peak_rss_bytes_runs"] = [x["peak_rss_bytes"] for x in runs[engine]]
                    r["peak_rss_bytes"] = max(r["peak_rss_bytes_runs"])
            r.update({"engine": engine, "gb": gb, "raw_parquet_bytes": summary["bytes"], "rows": summary["rows"],
                      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "load_avg_after": os.getloadavg()[0]})
            (workdir / f"result-{engine}-{gb:g}gb.json").write_text(json.dumps(r, default=int))
            log.info("%s", {k: v for k, v in r.items()})
            results.append(r)
        for stage in ("clean", "quarantine", "split"):
            shutil.rmtree(data / stage, ignore_errors=True)
    checks = _check(results, sizes)
    doc = {"sizes_gb": sizes, "results": results, "checks": checks, "host": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "load_avg_at_end": os.getloadavg()}, "leptonflow_cluster": LF_PLAN, "leptonflow_memory": LF_MEMORY,
        "command": " ".join([Path(sys.executable).name, *sys.argv])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
    table = _table(results) + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in checks.items())
    out.with_suffix(".md").write_text(f"# clean + dedupe + split benchmark\n\n`{doc['command']}`\n\n{table}\n")
    print(table)
    if not checks["counts_identical"]:
        raise SystemExit("row counts differ between engines")
    return 0


def _check(results: list[dict[str, Any]], sizes: list[float]) -> dict[str, Any]:
    by = {(r["gb"], r["engine"]): r for r in results if "error" not in r}
    checks: dict[str, Any] = {f"{r['gb']:g}GB {r['engine']} failed": r["error"].splitlines()[0][-200:]
                              for r in results if "error" in r}
    same = True
    for gb in sizes:
        ref = by.get((gb, "leptonflow"))
        for other in ("duckdb", "polars"):
            o = by.get((gb, other))
            if ref and o:
                ok = all(ref[k] == o[k] for k in ("splits", "rejected", "rows_in"))
                checks[f"{gb:g}GB leptonflow == {other} counts"] = ok
                same &= ok
        if ref and by.get((gb, "duckdb")):
            ratio = ref["wall_s"] / by[(gb, "duckdb")]["wall_s"]
            checks[f"{gb:g}GB wall leptonflow/duckdb (target <= 1.2)"] = round(ratio, 2)
        floor = by.get((gb, "pyarrow_copy"))
        if ref and floor:
            ratio = ref["wall_s"] / floor["wall_s"]
            checks[f"{gb:g}GB wall leptonflow/copy floor (target <= 2)"] = round(ratio, 2)
            pairs = list(zip(ref.get("wall_s_runs", []), floor.get("wall_s_runs", []), strict=False))
            if pairs:  # run i of each was measured back to back: the ratio least moved by the machine's drift
                checks[f"{gb:g}GB wall leptonflow/copy floor, median of {len(pairs)} back-to-back rounds"] = round(
                    statistics.median(a / b for a, b in pairs), 2)
    lf = [by[(gb, "leptonflow")] for gb in sizes if (gb, "leptonflow") in by]
    if len(lf) >= 2:
        checks[f"peak RSS leptonflow {sizes[-1]:g}GB/{sizes[0]:g}GB (target <= 1.2)"] = round(
            lf[-1]["peak_rss_bytes"] / lf[0]["peak_rss_bytes"], 2)
    checks["counts_identical"] = same
    return checks


if __name__ == "__main__":
    sys.exit(main())

