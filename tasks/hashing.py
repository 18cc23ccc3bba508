"""Stable 64-bit hashes of Arrow strings and compound keys, vectorized over the Arrow buffers.

Stable across processes and machines (no seeds), so every Dask task of a step puts a key in the
same bucket. Used by the clean step's dedupe shuffle and the validation uniqueness checks.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

LONG_KEY = 64  # bytes
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * _M1
        h = (h ^ (h >> np.uint64(27))) * _M2
        return h ^ (h >> np.uint64(31))


def hash_strings(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit FNV-style hash of each UTF-8 value (nulls hash to a constant), fully vectorized.

    One numpy pass per byte position over the rows still that long: cost ~ total bytes, no
    per-byte index arrays (keys are short ids); values longer than LONG_KEY use a reduceat path.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32)[arr.offset: arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    lens = offsets[1:] - offsets[:-1]
    starts = offsets[:-1]
    h = np.zeros(n, dtype=np.uint64)
    prime = np.uint64(1099511628211)
    long_rows = np.flatnonzero(lens > LONG_KEY)
    idx = np.flatnonzero((lens > 0) & (lens <= LONG_KEY))
    j = 0
    with np.errstate(over="ignore"):
        while len(idx):
            h[idx] = h[idx] * prime + data[starts[idx] + j].astype(np.uint64) + np.uint64(1)
            j += 1
            idx = idx[lens[idx] > j]
        for i in long_rows:  # rare: one vectorized polynomial per long value
            v = data[starts[i]: starts[i] + lens[i]].astype(np.uint64) + np.uint64(1)
            powers = np.full(len(v), prime, dtype=np.uint64)
            powers[0] = 1
            h[i] = np.add.reduce(v * np.cumprod(powers, dtype=np.uint64)[::-1], dtype=np.uint64)
        h = mix(h ^ (lens.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
    if arr.null_count:
        h[arr.is_null().to_numpy(zero_copy_only=False)] = np.uint64(0x5EED)
    return h


def key_hash(table: pa.Table, key: tuple[str, ...] | list[str]) -> np.ndarray:
    """64-bit hash of each row's key (equal keys, equal hashes; the reverse needs checking)."""
    h = np.zeros(table.num_rows, dtype=np.uint64)
    for k in key:
        with np.errstate(over="ignore"):
            h = mix(h * np.uint64(31) + hash_strings(table.column(k)))
    return h
