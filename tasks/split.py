"""The split step: publish the interval's train/val/test files and their train-only feature statistics.

The split is decided inside the clean step's reduce (see :mod:`tasks.split_assign`:
md5 of ``spec.group_column``, no shuffle): each dedupe bucket is written once, straight
into ``train/``, ``val/`` and ``test/`` files, and the train rows' partial feature
statistics are merged on the cluster (:mod:`tasks.features`). This step therefore moves
no row data: it checks the clean manifest's split accounting, links every clean file
into its own version folder (a hard link on a local lake, a server-side copy on object
stores; an encrypted file's key-material sidecar is copied with it), and commits the
split manifest with ``extra["feature_stats"]``. Derived feature columns (e.g. ``hour``)
are not stored: :func:`tasks.features.transform` derives them when it reads.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tasks import features
from tasks.context import StepContext
from tasks.crypto import key_material_url
from tasks.lake import FileEntry, Lake, Manifest, code_version, fingerprint
from tasks.split_assign import GROUPS

log = logging.getLogger(__name__)

CACHE_PARAMS = ("encrypt", "rerun")  # params that change the output; ``rerun`` is a free tag forcing a recompute


class SplitError(RuntimeError):
    """The interval cannot be split; the message says why."""


def run(ctx: StepContext) -> dict[str, Any]:
    spec, lake = ctx.spec, ctx.lake
    clean = lake.require("clean", ctx.dataset, ctx.ds)
    if not clean.files or clean.rows == 0:
        raise SplitError(f"clean output of {ctx.dataset} ds={ctx.ds} has no rows: nothing to split")
    info = clean.extra.get("split")
    if not info or any(f.group not in GROUPS for f in clean.files):
        raise SplitError(f"clean output of {ctx.dataset} ds={ctx.ds} (version {clean.version}) has no split "
                         "assignment (written by an older leptonflow): re-run clean")
    rows = {g: clean.rows_in(g) for g in GROUPS}
    if rows != {g: int(info["rows"].get(g, 0)) for g in GROUPS} or sum(rows.values()) != clean.rows:
        raise SplitError(f"split row accounting failed: clean {clean.rows} rows, files by split {rows}, "
                         f"clean manifest says {info['rows']}")
    stats = info.get("feature_stats")
    if not stats or rows["train"] == 0:
        raise SplitError(f"{ctx.dataset} ds={ctx.ds}: no rows fell into train (ratios {spec.split}); "
                         "cannot fit feature statistics")
    params = {k: ctx.params[k] for k in CACHE_PARAMS if k in ctx.params}
    fp = fingerprint(Lake.manifests_fingerprint(clean), spec.fingerprint())
    code = code_version("split", "split_assign", "features")
    hit = lake.cache_hit("split", ctx.dataset, ctx.ds, fp, code, params)
    if hit is not None:
        log.info("split %s ds=%s: cache hit (version %s)", ctx.dataset, ctx.ds, hit.version)
        return {"cache_hit": True, "version": hit.version, **hit.extra.get("result", {})}
    version, vdir = lake.new_version("split", ctx.dataset, ctx.ds)
    t0 = time.monotonic()
    try:
        entries: list[FileEntry] = []
        for i, f in enumerate(clean.files):
            rel = f.path.split("/", 1)[1]  # drop the clean version: "train/part-00000.parquet"
            src, dst = lake.abspath(clean, f), f"{vdir}/{rel}"
            lake.link_file(src, dst)
            if f.key_id:  # PME external key material lives in a sidecar next to the file
                lake.fs.pipe_file(key_material_url(dst), lake.fs.cat_file(key_material_url(src)))
            if lake.fs.size(dst) != f.bytes:
                raise SplitError(f"{dst}: has {lake.fs.size(dst)} bytes after linking, clean manifest says {f.bytes}")
            entries.append(FileEntry(path=f"v={version}/{rel}", rows=f.rows, bytes=f.bytes, sha256=f.sha256,
                                     group=f.group, key_id=f.key_id))
            if (i + 1) % 200 == 0:
                log.info("split progress: %d/%d files linked (%.0fs)", i + 1, len(clean.files), time.monotonic() - t0)
        entries.sort(key=lambda e: e.path)
        result = {
            "version": version, "rows": rows, "files": len(entries),
            "feature_stats_path": f"{lake.interval_dir('split', ctx.dataset, ctx.ds)}/_manifest.json"
                                  "#extra.feature_stats",
            "feature_stats_digest": features.stats_digest(stats),
            "input_rows": clean.rows, "input_bytes": sum(f.bytes for f in clean.files),
            "partitions": len(clean.files), "workers": 0, "threads": 0,
        }
        lake.commit(Manifest("split", ctx.dataset, ctx.ds, version, files=entries, input_fingerprint=fp,
                             code_version=code, params=params,
                             extra={"feature_stats": stats, "rows": rows, "salt": info["salt"],
                                    "ratios": info["ratios"], "clean_version": clean.version, "result": result}))
    except BaseException:
        lake.discard("split", ctx.dataset, ctx.ds, version)
        raise
    log.info("split %s ds=%s: %s (%d files linked from clean version %s)", ctx.dataset, ctx.ds, rows, len(entries),
             clean.version)
    return {"cache_hit": False, **result}
