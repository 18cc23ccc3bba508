"""Stable 64-bit hashes of Arrow strings and compound keys, vectorized over the Arrow buffers.

Stable across processes and machines (no seeds), so every Dask task of a step puts a key in the
same bucket. Used by the clean step's dedupe shuffle and the validation uniqueness checks.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

LONG_KEY = 64  # bytes; longer values are hashed one at a time
_G = np.uint64(0x9E3779B97F4A7C15)
_WORD_C = tuple(np.uint64((0x9E3779B97F4A7C15 * (k + 1)) & 0xFFFFFFFFFFFFFFFF) for k in range(LONG_KEY // 8))
_BYTE_MASKS = np.array([(1 << (8 * b)) - 1 for b in range(8)] + [0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer (a new array)."""
    h = np.array(h, dtype=np.uint64)
    return _mix_inplace(h, np.empty_like(h))


def _mix_inplace(h: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """mix(h) computed in h's own buffer (tmp: scratch of h's size): no temporaries per step."""
    with np.errstate(over="ignore"):
        np.right_shift(h, np.uint64(30), out=tmp)
        h ^= tmp
        h *= _M1
        np.right_shift(h, np.uint64(27), out=tmp)
        h ^= tmp
        h *= _M2
        np.right_shift(h, np.uint64(31), out=tmp)
        h ^= tmp
    return h


_WORD_C0 = tuple(mix(np.array([c]))[0] for c in _WORD_C)  # f_k(0) == 0: zero padding adds nothing


def _u64_at(buf: np.ndarray, count: int) -> np.ndarray:
    """Element i = the little-endian uint64 in bytes i..i+7 of `buf` (a stride-1 view, no copy)."""
    return np.ndarray(shape=(max(count, 0),), dtype="<u8", buffer=buf, strides=(1,)) if count > 0 else \
        np.zeros(0, dtype=np.uint64)


def _word_sum(words: np.ndarray) -> np.ndarray:
    """Sum over 8-byte words k of mix(w_k + C_k) - mix(C_k): an all-zero (padding) word adds exactly 0."""
    total = np.zeros(words.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(words.shape[1]):
            total += mix(words[:, k] + _WORD_C[k % len(_WORD_C)]) - _WORD_C0[k % len(_WORD_C)]
    return total


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets as int64, value bytes) of a string or large_string array, zero-copy except the offsets:
    value i is ``data[offsets[i]:offsets[i + 1]]`` (the array's own slice offset applied)."""
    bufs = arr.buffers()
    off_t = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=off_t)[arr.offset: arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def hash_strings(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit hash of each UTF-8 value (nulls hash to a constant), vectorized over the Arrow buffers.

    Definition (stable across processes and machines): the value's bytes as little-endian 8-byte
    words w_k (the last one zero-padded), ``h = mix(sum_k (mix(w_k + C_k) - mix(C_k)) ^ (len + 1) * G)``.
    Values up to LONG_KEY bytes are hashed a word position at a time over all rows (one unaligned
    8-byte load per row, masked to its length), so a 15-byte id costs two vectorized passes.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    offsets, data = string_buffers(arr)
    lens = offsets[1:] - offsets[:-1]
    starts = offsets[:-1]
    long = lens > LONG_KEY
    any_long = bool(long.any())
    ln = np.where(long, 0, lens) if any_long else lens
    # The values' bytes plus zero padding: word k of every row is one unaligned 8-byte load at start + 8k
    # (a stride-1 uint64 view), masked to the row's length, and no load runs past the copy.
    lo, hi = int(offsets[0]), int(offsets[-1])
    padded = np.zeros(hi - lo + LONG_KEY + 8, dtype=np.uint8)
    padded[: hi - lo] = data[lo:hi]
    body = _u64_at(padded, len(padded) - 7)
    st = starts - lo
    s = np.zeros(n, dtype=np.uint64)
    tmp = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(-(-int(ln.max()) // 8)):
            w = body[st + 8 * k]
            w &= _BYTE_MASKS[np.clip(ln - 8 * k, 0, 8)]
            w += _WORD_C[k]
            s += _mix_inplace(w, tmp)
            s -= _WORD_C0[k]
    for i in np.flatnonzero(long) if any_long else ():  # rare: one value at a time
        v = np.zeros(-(-int(lens[i]) // 8) * 8, dtype=np.uint8)
        v[: lens[i]] = data[starts[i]: starts[i] + lens[i]]
        s[i] = _word_sum(v.view("<u8")[None, :])[0]
    with np.errstate(over="ignore"):
        s ^= (lens.astype(np.uint64) + np.uint64(1)) * _G
        h = _mix_inplace(s, tmp)
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
