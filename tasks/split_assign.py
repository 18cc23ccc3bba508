"""Which split (train/val/test) a row belongs to: a pure function of its group value.

The first 8 hex digits of ``md5(salt + ":" + value)`` as a fraction of 2**32, compared
with the cumulative ratios (train, then val, then test). A group never lands in two
splits, reruns and other machines give the same assignment, and any engine with md5 can
reproduce it (the benchmark checks DuckDB and Polars against it). md5 runs once per
distinct group value (dictionary encoding), not per row.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.spec import DatasetSpec

GROUPS = ("train", "val", "test")


def unit_interval(values: list[str], salt: str) -> np.ndarray:
    """md5-based position in [0, 1) of each group value (the split's only source of randomness)."""
    prefix = f"{salt}:".encode()
    md5 = hashlib.md5
    # first 4 digest bytes, big-endian == the first 8 hex digits
    head = b"".join([md5(prefix + v.encode(), usedforsecurity=False).digest()[:4] for v in values])
    return np.frombuffer(head, dtype=">u4").astype(np.float64) / 2**32


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
    u = unit_interval([*dictionary.fill_null("").to_pylist(), ""], spec.split.salt)
    codes = np.where(u < spec.split.train, 0, np.where(u < spec.split.train + spec.split.val, 1, 2)).astype(np.int8)
    return codes[values.indices.fill_null(len(dictionary)).to_numpy(zero_copy_only=False)]
