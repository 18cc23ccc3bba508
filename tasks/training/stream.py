"""Streaming training data: the split files' row groups turned into tensor batches.

`StreamDataset` is a torch ``IterableDataset`` that never holds more than one
shuffle buffer (``shuffle_rows`` rows, plus the row group being decoded) of a
split in memory, whatever the split's size:

* **Sharding.** Every epoch the row groups of all files are put in one order
  (a permutation seeded by ``seed`` and ``epoch``) and that row space is cut into
  ``world_size * num_workers`` contiguous, equal (+-1 row) shards; shard
  ``rank * num_workers + worker_id`` belongs to one DataLoader worker of one
  rank. Every row is read exactly once per epoch across ranks x workers, and a
  row group is decoded by at most the two shards that share its boundary.
* **Shuffle.** A shard's pieces are grouped into buffers of about
  ``shuffle_rows`` rows; each buffer is permuted with its own RNG seeded by
  (seed, epoch, shard, buffer). Deterministic for a given seed and epoch.
* **Resume.** The stream of a shard is the concatenation of its permuted
  buffers, cut into batches of ``batch_size`` rows, so skipping the first k
  batches is arithmetic: whole buffers before the position are not even read.
  :func:`resume_point` maps a rank's "batches consumed" to each worker's share,
  following the DataLoader's round-robin order over its workers; the consumer
  drops ``leading_discard()`` batches (fewer than the number of workers).

* **Integrity.** The step verifies every file before ranks read it (size, rows, sha256:
  :func:`tasks.io.verified.layouts`) and hands each file's layout to the ranks, which refuse a
  file whose size, footer bytes or row groups are not the verified ones (replaced after the
  check: one small read per file, no second hash of the data). A reader that
  reads whole files in order (evaluation: ``entries`` given) hashes the bytes as it reads them
  (:class:`tasks.io.verified.VerifyingFile`) and fails, naming the file, at the end of each file.

Batches are yielded ready-made (``x_num float32 [b, n_num], x_cat int64
[b, n_cat], y float32 [b]``), so the DataLoader runs with ``batch_size=None``
and no per-row Python work happens.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tasks.errors import FeatureError, IntegrityError, ParquetReadError
from tasks.io.lake import FileEntry
from tasks.io.parquet import ParquetCrypto, open_parquet
from tasks.io.verified import Layout, VerifiedParquet
from tasks.prep import features

log = logging.getLogger(__name__)
_OPEN_FILES = 8  # open Parquet files kept per shard iterator

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# ---- the feature transform ---------------------------------------------------------------------
def feature_columns(stats: dict[str, Any], available: Sequence[str] | None = None) -> list[str]:
    """Columns the transform reads: features, label and the sources of derived features not yet in the file."""
    wanted = [*stats["numeric_features"], *stats["categorical_features"], stats["label"]]
    have = set(available) if available is not None else set(wanted)
    for name, rule in (stats.get("derived") or {}).items():
        if name not in have and isinstance(rule, dict) and rule.get("from"):
            wanted.append(rule["from"])
    # a column absent from the file is left for the transform to report by name
    return list(dict.fromkeys(c for c in wanted if available is None or c in have))


def transform(table: pa.Table, stats: dict[str, Any], source: str = "<table>") -> tuple[np.ndarray, ...]:
    """The shared feature transform (``tasks.prep.features.transform``), errors naming `source`, a label check."""
    try:
        x_num, x_cat, y = features.transform(table, stats)
    except FeatureError as exc:
        raise FeatureError(f"{source}: {exc}") from exc
    if np.isnan(y).any():
        raise FeatureError(f"{source}: label column {stats['label']!r} is missing or has null values")
    return np.asarray(x_num, np.float32), np.asarray(x_cat, np.int64), np.asarray(y, np.float32)


# ---- shard planning -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of row group `row_group` of file number `file`."""

    file: int
    row_group: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def row_group_rows(urls: Sequence[str], crypto: ParquetCrypto | None = None) -> list[list[int]]:
    """Rows per row group of each file, from the (decrypted) footers only."""
    out = []
    for url in urls:
        pf = open_parquet(url, crypto)
        md = pf.metadata
        out.append([md.row_group(i).num_rows for i in range(md.num_row_groups)])
    return out


def plan_shards(
    rg_rows: Sequence[Sequence[int]], n_shards: int, seed: int, epoch: int, shuffle: bool
) -> list[list[Piece]]:
    """Cut the epoch's row-group order into `n_shards` contiguous shards of equal size (+-1 row)."""
    units = [(f, g, n) for f, groups in enumerate(rg_rows) for g, n in enumerate(groups) if n > 0]
    if shuffle and units:
        order = np.random.default_rng([seed, epoch]).permutation(len(units))
        units = [units[i] for i in order]
    total = sum(n for _, _, n in units)
    bounds = [s * total // n_shards for s in range(n_shards + 1)]
    shards: list[list[Piece]] = [[] for _ in range(n_shards)]
    offset = 0  # global row offset of the current unit's first row
    s = 0
    for f, g, n in units:
        lo = 0
        while lo < n:
            while s < n_shards - 1 and offset + lo >= bounds[s + 1]:
                s += 1
            hi = min(n, bounds[s + 1] - offset)
            shards[s].append(Piece(f, g, lo, hi))
            lo = hi
        offset += n
    return shards


def resume_point(worker_batches: Sequence[int], consumed: int) -> tuple[int, int]:
    """Where a DataLoader over these workers restarts after `consumed` batches: (round, discard).

    The DataLoader (``in_order=True``) takes one batch from each worker in turn and drops
    exhausted workers, so round r holds batch r of every worker that has one. A fresh
    DataLoader always starts a round at the lowest worker, so the stream restarts at the
    beginning of the round that holds batch `consumed` (each worker skips `round` batches)
    and the consumer discards the `discard` batches of that round it had already seen.
    """
    start = 0
    for r in range(max(worker_batches, default=0)):
        size = sum(1 for n in worker_batches if n > r)
        if consumed < start + size:
            return r, consumed - start
        start += size
    return max(worker_batches, default=0), 0


def worker_skips(worker_batches: Sequence[int], consumed: int) -> list[int]:
    """Batches each worker skips when a rank resumes after `consumed` batches (see `resume_point`)."""
    r, _ = resume_point(worker_batches, consumed)
    return [min(r, n) for n in worker_batches]


# ---- the dataset --------------------------------------------------------------------------------
class StreamDataset(IterableDataset):
    """Batches of one split streamed from its (encrypted) Parquet files; see the module docstring."""

    def __init__(
        self,
        urls: Sequence[str],
        stats: dict[str, Any],
        batch_size: int,
        *,
        crypto: ParquetCrypto | None = None,
        rg_rows: Sequence[Sequence[int]] | None = None,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        shuffle_rows: int = 65536,
        skip_batches: int = 0,
        entries: Sequence[FileEntry] | None = None,
        layouts: Sequence[Layout] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.urls = list(urls)
        self.stats = stats
        self.batch_size = int(batch_size)
        self.crypto = crypto
        self.rg_rows = [list(r) for r in (rg_rows if rg_rows is not None else row_group_rows(self.urls, crypto))]
        self.rank, self.world_size = rank, world_size
        self.num_workers = num_workers  # the DataLoader's; must match for the shard plan
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.shuffle_rows = max(1, int(shuffle_rows))
        self.skip_batches = int(skip_batches)
        self.entries = list(entries) if entries is not None else None  # verify each file's sha256 as it is read
        self.layouts = list(layouts) if layouts is not None else None  # or: compare with the verified layout
        if self.entries is not None and len(self.entries) != len(self.urls):
            raise ValueError(f"{len(self.entries)} manifest entries for {len(self.urls)} files")
        self._columns: dict[int, list[str]] = {}

    # -- sizes (identical on every rank: they only depend on metadata, seed and epoch) --
    @property
    def rows(self) -> int:
        return sum(sum(r) for r in self.rg_rows)

    def shards(self) -> list[list[Piece]]:
        w = max(1, self.num_workers)
        return plan_shards(self.rg_rows, self.world_size * w, self.seed, self.epoch, self.shuffle)

    def worker_batches(self, rank: int | None = None) -> list[int]:
        rank = self.rank if rank is None else rank
        w = max(1, self.num_workers)
        shards = self.shards()
        return [math.ceil(sum(p.rows for p in shards[rank * w + i]) / self.batch_size) for i in range(w)]

    def leading_discard(self) -> int:
        """Batches the consumer drops from the start of this resumed stream (see `resume_point`)."""
        return resume_point(self.worker_batches(), self.skip_batches)[1]

    def steps_per_epoch(self) -> int:
        """Batches every rank runs this epoch: the smallest rank's count, so DDP ranks stay in step."""
        return min(sum(self.worker_batches(r)) for r in range(self.world_size))

    # -- iteration --
    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        n_workers = info.num_workers if info is not None else 1
        worker = info.id if info is not None else 0
        if max(1, self.num_workers) != n_workers:
            raise RuntimeError(
                f"StreamDataset was planned for {self.num_workers} DataLoader workers but runs in {n_workers}"
            )
        shard_id = self.rank * n_workers + worker
        skip = worker_skips(self.worker_batches(), self.skip_batches)[worker]
        yield from self._shard_batches(self.shards()[shard_id], shard_id, skip)

    def _buffers(self, pieces: list[Piece]) -> list[list[Piece]]:
        buffers: list[list[Piece]] = []
        cur: list[Piece] = []
        rows = 0
        for p in pieces:
            cur.append(p)
            rows += p.rows
            if rows >= self.shuffle_rows:
                buffers.append(cur)
                cur, rows = [], 0
        if cur:
            buffers.append(cur)
        return buffers

    def _open(self, i: int) -> Any:
        """File `i` opened (verifying as it is read when entries were given), its layout checked."""
        url = self.urls[i]
        if self.layouts is not None:
            self.layouts[i].check(url)
        if self.entries is not None:
            f = VerifiedParquet(url, self.entries[i], self.crypto)
        else:
            f = open_parquet(url, self.crypto)
        md = f.metadata
        layout = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        if layout != self.rg_rows[i]:
            raise IntegrityError(f"{url}: row groups {layout[:8]}... are not the ones verified before training "
                                 f"({self.rg_rows[i][:8]}...): the file was replaced", path=url, problem="rows")
        return f

    @staticmethod
    def _close(f: Any) -> None:
        if isinstance(f, VerifiedParquet):
            f.finish()  # raises IntegrityError naming the file when its bytes are not the manifest's

    def _read_piece(self, files: OrderedDict[int, Any], p: Piece) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        url = self.urls[p.file]
        if p.file in files:
            files.move_to_end(p.file)
        else:
            if len(files) >= _OPEN_FILES:
                self._close(files.popitem(last=False)[1])  # least recently used: bounded handles and footers
            files[p.file] = self._open(p.file)
        if p.file not in self._columns:
            self._columns[p.file] = feature_columns(self.stats, files[p.file].schema_arrow.names)
        try:
            table = files[p.file].read_row_group(p.row_group, columns=self._columns[p.file])
        except (OSError, pa.ArrowException) as exc:
            raise ParquetReadError(f"{url}: row group {p.row_group}: {exc}") from exc
        if p.start or p.stop < table.num_rows:
            table = table.slice(p.start, p.rows)
        return transform(table, self.stats, source=f"{url} row group {p.row_group}")

    def _shard_batches(self, pieces: list[Piece], shard_id: int, skip: int) -> Iterator[Batch]:
        b = self.batch_size
        skip_rows = skip * b
        pos = 0  # stream rows before the current buffer
        carry: list[np.ndarray] | None = None
        files: OrderedDict[int, Any] = OrderedDict()
        for bi, buf in enumerate(self._buffers(pieces)):
            n = sum(p.rows for p in buf)
            if pos + n <= skip_rows:  # consumed before the saved position: not read at all
                pos += n
                continue
            parts = [self._read_piece(files, p) for p in buf]
            arrays = list(parts[0]) if len(parts) == 1 else [np.concatenate([p[k] for p in parts]) for k in range(3)]
            if self.shuffle:
                perm = np.random.default_rng([self.seed, self.epoch, shard_id, bi]).permutation(n)
                arrays = [a[perm] for a in arrays]
            start = max(0, skip_rows - pos)
            pos += n
            if start:
                arrays = [a[start:] for a in arrays]
            if carry is not None:
                arrays = [np.concatenate([c, a]) for c, a in zip(carry, arrays, strict=True)]
            m = len(arrays[2])
            full = m - m % b
            for i in range(0, full, b):
                yield tuple(torch.from_numpy(np.ascontiguousarray(a[i : i + b])) for a in arrays)  # type: ignore[misc]
            carry = [a[full:] for a in arrays] if full < m else None
        for f in files.values():  # before the last batch: nothing read from a bad file is handed on
            self._close(f)
        if carry is not None:
            yield tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in carry)  # type: ignore[misc]
