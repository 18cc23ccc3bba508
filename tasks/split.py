"""The split step: clean rows -> train/val/test files, group-aware, deterministic, no shuffle.

A row's split depends only on its group value (``spec.group_column``): the first 8
hex digits of ``md5(salt + ":" + value)`` as a fraction of 2**32, compared with the
cumulative ratios (train, then val, then test). So a group never lands in two
splits, reruns and other machines give the same assignment, and any engine with md5
can reproduce it (the benchmark checks DuckDB and Polars against it). md5 runs once
per distinct group value of a partition (dictionary encoding), not per row.

Each clean file is one Dask task: read, add derived feature columns, assign splits,
write up to three files (``train/``, ``val/``, ``test/``), and compute partial
feature statistics of its TRAIN rows only; the partial statistics are merged in a
tree on the cluster and finalized into ``extra["feature_stats"]``
(see :mod:`tasks.features` for which statistics are exact and which approximate).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from distributed import Client, wait

from tasks import features
from tasks.cluster import client_for, describe
from tasks.context import StepContext
from tasks.lake import FileEntry, Lake, Manifest, code_version, fingerprint
from tasks.parquet_io import read_table, write_table
from tasks.spec import DatasetSpec

log = logging.getLogger(__name__)

GROUPS = ("train", "val", "test")
MERGE_FANIN = 8
CACHE_PARAMS = ("encrypt", "rerun")  # params that change the output; ``rerun`` is a free tag forcing a recompute


class SplitError(RuntimeError):
    """The interval cannot be split; the message says why."""


def unit_interval(values: list[str], salt: str) -> np.ndarray:
    """md5-based position in [0, 1) of each group value (the split's only source of randomness)."""
    out = np.empty(len(values), dtype=np.float64)
    prefix = f"{salt}:".encode()
    for i, v in enumerate(values):
        digest = hashlib.md5(prefix + v.encode(), usedforsecurity=False).hexdigest()
        out[i] = int(digest[:8], 16) / 2**32
    return out


def assign(values: pa.Array | pa.ChunkedArray, spec: DatasetSpec) -> np.ndarray:
    """Split code per row: 0 train, 1 val, 2 test (nulls are the group "")."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    enc = pc.dictionary_encode(values.fill_null(""))
    u = unit_interval(enc.dictionary.to_pylist(), spec.split.salt)
    codes = np.where(u < spec.split.train, 0, np.where(u < spec.split.train + spec.split.val, 1, 2)).astype(np.int8)
    return codes[enc.indices.to_numpy(zero_copy_only=False)]


@dataclass(frozen=True)
class SplitJob:
    spec: DatasetSpec
    out_dir: str  # full URL of the version folder
    version: str
    crypto: Any = None


def split_file(index: int, url: str, job: SplitJob) -> dict[str, Any]:
    """One clean file -> its train/val/test files + partial feature statistics of its train rows."""
    spec = job.spec
    table = read_table(url, job.crypto)
    table = features.add_derived(table, spec.features.derived)
    code = assign(table.column(spec.group_column), spec)
    out: dict[str, Any] = {"index": index, "entries": [], "rows": {}, "groups": {}, "state": None}
    for g, name in enumerate(GROUPS):
        part = table.filter(pa.array(code == g))
        out["rows"][name] = part.num_rows
        if part.num_rows == 0:
            continue
        rel = f"{name}/part-{index:05d}.parquet"
        out["entries"].append(write_table(f"{job.out_dir}/{rel}", part, f"v={job.version}/{rel}", group=name,
                                          crypto=job.crypto))
        if name == "train":
            out["state"] = features.partial_fit(part, spec, seed=index)
    return out


def _merge_tree(client: Client, states: list[Any], version: str) -> Any:
    """Merge partial statistics on the cluster, MERGE_FANIN at a time."""
    level = 0
    while len(states) > 1:
        states = [client.submit(features.merge, *states[i:i + MERGE_FANIN], key=f"split-merge-{version}-{level}-{i}")
                  for i in range(0, len(states), MERGE_FANIN)]
        level += 1
    return states[0]


def _state(out: dict[str, Any]) -> Any:
    return out["state"]


def _meta(out: dict[str, Any]) -> dict[str, Any]:
    """A task result without its (larger) statistics, for the client."""
    return {k: v for k, v in out.items() if k != "state"} | {"has_train": out["state"] is not None}


def run(ctx: StepContext) -> dict[str, Any]:
    spec, lake = ctx.spec, ctx.lake
    clean = lake.require("clean", ctx.dataset, ctx.ds)
    if not clean.files or clean.rows == 0:
        raise SplitError(f"clean output of {ctx.dataset} ds={ctx.ds} has no rows: nothing to split")
    params = {k: ctx.params[k] for k in CACHE_PARAMS if k in ctx.params}
    fp = fingerprint(Lake.manifests_fingerprint(clean), spec.fingerprint())
    code = code_version("split", "features", "parquet_io")
    hit = lake.cache_hit("split", ctx.dataset, ctx.ds, fp, code, params)
    if hit is not None:
        log.info("split %s ds=%s: cache hit (version %s)", ctx.dataset, ctx.ds, hit.version)
        return {"cache_hit": True, "version": hit.version, **hit.extra.get("result", {})}
    crypto = ctx.crypto()
    version, vdir = lake.new_version("split", ctx.dataset, ctx.ds)
    job = SplitJob(spec, lake.full_url(vdir), version, crypto)
    t0 = time.monotonic()
    try:
        with client_for(ctx.cluster, ctx.plan("split") or ctx.plan("clean")) as client:
            size = describe(client)
            futs = [client.submit(split_file, i, lake.full_url(lake.abspath(clean, f)), job,
                                  key=f"split-{version}-{i}", pure=False) for i, f in enumerate(clean.files)]
            done = 0
            while done < len(futs):
                try:
                    wait(futs, timeout=5.0)
                except TimeoutError:
                    pass
                done = sum(f.done() for f in futs)
                log.info("split progress: %d/%d files (%.0fs)", done, len(futs), time.monotonic() - t0)
                if any(f.status in ("error", "cancelled") for f in futs):
                    break
            outs = client.gather([client.submit(_meta, f, key=f"split-meta-{version}-{i}") for i, f in enumerate(futs)])
            with_train = [client.submit(_state, f, key=f"split-state-{version}-{i}")
                          for i, (f, o) in enumerate(zip(futs, outs, strict=True)) if o["has_train"]]
            if not with_train:
                raise SplitError(f"{ctx.dataset} ds={ctx.ds}: no rows fell into train (ratios {spec.split}); "
                                 "cannot fit feature statistics")
            stats = features.finalize(client.gather(_merge_tree(client, with_train, version)), spec)
        entries: list[FileEntry] = sorted((e for o in outs for e in o["entries"]), key=lambda e: e.path)
        rows = {g: sum(o["rows"][g] for o in outs) for g in GROUPS}
        if sum(rows.values()) != clean.rows:
            raise SplitError(f"split row accounting failed: clean {clean.rows} != {rows}")
        result = {
            "version": version, "rows": rows, "files": len(entries),
            "feature_stats_path": f"{lake.interval_dir('split', ctx.dataset, ctx.ds)}/_manifest.json"
                                  "#extra.feature_stats",
            "feature_stats_digest": features.stats_digest(stats),
            "input_rows": clean.rows, "input_bytes": sum(f.bytes for f in clean.files),
            "partitions": len(clean.files), "workers": size["workers"], "threads": size["threads"],
        }
        lake.commit(Manifest("split", ctx.dataset, ctx.ds, version, files=entries, input_fingerprint=fp,
                             code_version=code, params=params,
                             extra={"feature_stats": stats, "rows": rows, "salt": spec.split.salt,
                                    "ratios": {"train": spec.split.train, "val": spec.split.val,
                                               "test": spec.split.test},
                                    "clean_version": clean.version, "result": result}))
    except BaseException:
        lake.discard("split", ctx.dataset, ctx.ds, version)
        raise
    log.info("split %s ds=%s: %s", ctx.dataset, ctx.ds, rows)
    return {"cache_hit": False, **result}
