"""The train/val/test split: which split a row belongs to, and the step that publishes it.

Assignment: which split (train/val/test) a row belongs to: a pure function of its group value.

The first 8 hex digits of ``md5(salt + ":" + value)`` as a fraction of 2**32, compared
with the cumulative ratios (train, then val, then test). A group never lands in two
splits, reruns and other machines give the same assignment, and any engine with md5 can
reproduce it (the benchmark checks DuckDB and Polars against it). md5 runs once per
distinct group value (dictionary encoding), not per row.

The step: The split is decided inside the clean step's reduce (:func:`assign`:
md5 of ``spec.group_column``, no shuffle): each dedupe bucket is written once, straight
into ``train/``, ``val/`` and ``test/`` files, and the train rows' partial feature
statistics are merged on the cluster (:mod:`tasks.prep.features`). This step therefore moves
no row data: it checks the clean manifest's split accounting, links every clean file
into its own version folder (a hard link on a local lake, a server-side copy on object
stores; an encrypted file's key-material sidecar is copied with it), and commits the
split manifest with ``extra["feature_stats"]``. Derived feature columns (e.g. ``hour``)
are not stored: :func:`tasks.prep.features.transform` derives them when it reads.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.context import StepContext
from tasks.errors import LeptonflowError
from tasks.io.code_version import code_version
from tasks.io.hashing import string_buffers
from tasks.io.lake import MANIFEST, FileEntry, Lake, Manifest, fingerprint
from tasks.prep import features
from tasks.resources.step_metrics import StepMetrics
from tasks.security.crypto import key_material_url
from tasks.spec import DatasetSpec

log = logging.getLogger(__name__)

GROUPS = ("train", "val", "test")


_S = (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4 + (6, 10, 15, 21) * 4
_K = tuple(np.uint32(int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF) for i in range(64))
_G = tuple(i if i < 16 else (5 * i + 1) % 16 if i < 32 else (3 * i + 5) % 16 if i < 48 else (7 * i) % 16
           for i in range(64))
_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_ONE_BLOCK = 55  # bytes of message that still fit one 64-byte md5 block with its padding


def _md5_head32(prefix: bytes, arr: pa.Array) -> np.ndarray:
    """First 4 digest bytes (as a big-endian uint32) of md5(prefix + value) for every value of `arr`.

    RFC 1321 over numpy columns, one lane per value: about 3x faster than hashlib called per value from
    Python. Values whose message exceeds one block are few (long group ids) and go through hashlib.
    """
    n = len(arr)
    offsets, data = string_buffers(arr)
    lens = offsets[1:] - offsets[:-1]
    total = lens + len(prefix)
    over = total > _ONE_BLOCK
    long = np.flatnonzero(over)
    lens = np.where(over, 0, lens)
    block = np.zeros((n, 64), dtype=np.uint8)
    block[:, :len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    rows = np.arange(n)
    starts = offsets[:-1]
    for j in range(int(lens.max()) if n else 0):  # byte j of every value that long (values are short)
        idx = rows[lens > j]
        block[idx, len(prefix) + j] = data[starts[idx] + j]
    block[rows, np.minimum(total, _ONE_BLOCK)] = 0x80
    block[:, 56:64] = (total.astype("<u8") * 8).view(np.uint8).reshape(n, 8)
    m = np.ascontiguousarray(block.view("<u4").T)  # 16 message words, each a contiguous column
    a, b, c, d = (np.full(n, v, dtype=np.uint32) for v in _INIT)
    f, t = np.empty(n, dtype=np.uint32), np.empty(n, dtype=np.uint32)
    for i in range(64):  # in-place numpy ops: no temporaries per round
        if i < 16:
            np.bitwise_and(b, c, out=f), np.invert(b, out=t), np.bitwise_and(t, d, out=t), np.bitwise_or(f, t, out=f)
        elif i < 32:
            np.bitwise_and(d, b, out=f), np.invert(d, out=t), np.bitwise_and(t, c, out=t), np.bitwise_or(f, t, out=f)
        elif i < 48:
            np.bitwise_xor(b, c, out=f), np.bitwise_xor(f, d, out=f)
        else:
            np.invert(d, out=t), np.bitwise_or(t, b, out=t), np.bitwise_xor(c, t, out=f)
        f += a
        f += _K[i]
        f += m[_G[i]]
        np.left_shift(f, np.uint32(_S[i]), out=t)
        f >>= np.uint32(32 - _S[i])
        f |= t
        f += b
        a, d, c, b, f = d, c, b, f, a  # the old a's buffer becomes the next round's f
    a += np.uint32(_INIT[0])
    head = a.byteswap()  # digest bytes are little-endian words; the first 4 read as big-endian
    if len(long):
        md5 = hashlib.md5
        values = arr.take(pa.array(long)).to_pylist()
        head[long] = np.frombuffer(
            b"".join(md5(prefix + v.encode(), usedforsecurity=False).digest()[:4] for v in values), dtype=">u4")
    return head


def unit_interval(values: list[str] | pa.Array, salt: str) -> np.ndarray:
    """md5-based position in [0, 1) of each group value (the split's only source of randomness)."""
    arr = values if isinstance(values, pa.Array) else pa.array(values, type=pa.string())
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    return _md5_head32(f"{salt}:".encode(), arr.fill_null("")).astype(np.float64) / 2**32


def assign(values: pa.Array | pa.ChunkedArray, spec: DatasetSpec) -> np.ndarray:
    """Split code per row: 0 train, 1 val, 2 test (nulls are the group "").

    A dictionary-encoded column is hashed once per dictionary entry as it stands; other columns are
    dictionary-encoded first. md5 is the costly part, so it runs once per distinct value.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_dictionary(values.type):
        if not pa.types.is_string(values.type):
            values = values.cast(pa.string())
        values = pc.dictionary_encode(values.fill_null(""))
    dictionary = values.dictionary
    if not pa.types.is_string(dictionary.type):
        dictionary = dictionary.cast(pa.string())
    # one more entry, the group "", for null indices
    u = unit_interval(pa.concat_arrays([dictionary.fill_null(""), pa.array([""], dictionary.type)]), spec.split.salt)
    codes = np.where(u < spec.split.train, 0, np.where(u < spec.split.train + spec.split.val, 1, 2)).astype(np.int8)
    return codes[values.indices.fill_null(len(dictionary)).to_numpy(zero_copy_only=False)]



class SplitError(LeptonflowError, RuntimeError):
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
        raise SplitError(f"{ctx.dataset} ds={ctx.ds}: split row accounting failed: clean {clean.rows} rows, "
                         f"files by split {rows}, "
                         f"clean manifest says {info['rows']}")
    stats = info.get("feature_stats")
    if not stats or rows["train"] == 0:
        raise SplitError(f"{ctx.dataset} ds={ctx.ds}: no rows fell into train (ratios {spec.split}); "
                         "cannot fit feature statistics")
    params = ctx.cache_params(__name__)
    fp = fingerprint(Lake.manifests_fingerprint(clean), spec.fingerprint())
    code = code_version(__name__)
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
            "feature_stats_path": f"{vdir}/{MANIFEST}#extra.feature_stats",  # the manifest commit() writes there
            "feature_stats_digest": features.stats_digest(stats),
            # files are hard-linked, not read or rewritten: no bytes read, written or shuffled, no cluster
            **StepMetrics(input_bytes=sum(f.bytes for f in clean.files), input_rows=clean.rows,
                          output_rows=sum(e.rows for e in entries), partitions=len(clean.files)).to_json(),
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
