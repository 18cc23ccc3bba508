"""Parquet files of the lake: one writer and one reader that every step uses.

The writer hashes the bytes as it writes them (sha256 for the manifest without a
second read) and applies Parquet Modular Encryption when a ``crypto`` object is
given; the reader decrypts with the same object. ``crypto`` is anything with
``encryption_properties(columns) -> pyarrow FileEncryptionProperties``,
``decryption_properties() -> FileDecryptionProperties`` and ``key_id`` (see
``tasks.security.crypto``). It is built inside each writing task because PME properties
cannot be pickled. Both methods may take a ``url`` keyword: the file's URL, which
PME needs to find the file's external key material (a sidecar JSON next to it).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import KeyringError, ParquetReadError, StorageError
from tasks.io.lake import FileEntry

ROW_GROUP_ROWS = 128 * 1024  # ~ a few MB per row group: streamable by the training reader
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 1  # zstd's fast level: most write time is encoding, level 3 buys ~3% size for ~15% time
DICT_SAMPLE_ROWS = 16_384
DICT_MAX_DISTINCT = 0.3  # dictionary-encode a column when a sample has at most this share of distinct values


def dictionary_columns(table: pa.Table) -> list[str]:
    """Columns worth dictionary encoding, judged on a leading sample.

    Parquet's writer tries a dictionary for every column and falls back to plain only after
    the dictionary page is full, so near-unique columns (ids, emails) cost a wasted hash
    table; low-cardinality ones get smaller and faster with it.
    """
    head = table.slice(0, DICT_SAMPLE_ROWS)
    n = max(head.num_rows, 1)
    out = []
    for name, col in zip(head.column_names, head.columns, strict=True):
        t = col.type
        if pa.types.is_dictionary(t) or pa.types.is_boolean(t):
            out.append(name)
        elif (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
              or pa.types.is_floating(t) or pa.types.is_timestamp(t)):
            if pc.count_distinct(col).as_py() <= DICT_MAX_DISTINCT * n:
                out.append(name)
    return out


class ParquetCrypto(Protocol):
    key_id: str

    def encryption_properties(self, columns: list[str]) -> Any: ...  # may also take url=

    def decryption_properties(self) -> Any: ...  # may also take url=


def _with_url(method: Any, *args: Any, url: str) -> Any:
    """Call a crypto method, passing the file URL when it accepts one (external key material)."""
    try:
        takes_url = "url" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        takes_url = False
    return method(*args, url=url) if takes_url else method(*args)


class _HashingWriter:
    """A file-like sink that sha256-hashes and counts what passes through it."""

    def __init__(self, fh: Any):
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        b = bytes(data)
        self.sha.update(b)
        self.size += len(b)
        return self.fh.write(b)

    def flush(self) -> None:
        self.fh.flush()

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        self.closed = True


def write_table(
    url: str,
    table: pa.Table,
    rel_path: str,
    group: str = "",
    crypto: ParquetCrypto | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> FileEntry:
    """Write `table` to `url` (any fsspec URL) and return its manifest entry."""
    return write_tables(url, table.schema, [table], rel_path, group, crypto, row_group_rows)


def write_tables(
    url: str,
    schema: pa.Schema,
    tables: Iterable[pa.Table],
    rel_path: str,
    group: str = "",
    crypto: ParquetCrypto | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> FileEntry:
    """Write the concatenation of `tables` (consumed one at a time) as one file of full row groups.

    Pieces are buffered only until a row group is full, so a caller can stream a file larger than it
    wants to hold. The bytes equal ``write_table`` of the concatenated table when the first piece holds
    at least ``DICT_SAMPLE_ROWS`` rows (the dictionary-encoding choice samples the first piece).
    """
    try:
        return _write_tables(url, schema, tables, rel_path, group, crypto, row_group_rows)
    except StorageError:
        raise
    except OSError as exc:  # e.g. ENOSPC, which pyarrow reports as "Error writing bytes to file" without the path
        raise StorageError(url, exc) from exc


def _write_tables(url: str, schema: pa.Schema, tables: Iterable[pa.Table], rel_path: str, group: str,
                  crypto: ParquetCrypto | None, row_group_rows: int) -> FileEntry:
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    pieces = iter(tables)
    first = next(pieces, None)
    if first is None:
        first = schema.empty_table()
    kwargs: dict[str, Any] = {"compression": COMPRESSION, "compression_level": COMPRESSION_LEVEL,
                              "use_dictionary": dictionary_columns(first), "data_page_version": "2.0"}
    if crypto is not None:
        kwargs["encryption_properties"] = _with_url(crypto.encryption_properties, schema.names, url=url)
    rows = 0
    with fs.open(path, "wb") as fh:
        sink = _HashingWriter(fh)
        with pq.ParquetWriter(sink, schema, **kwargs) as writer:
            pending = first
            for piece in pieces:
                pending = pa.concat_tables([pending, piece])  # zero-copy: chunks are appended
                full = pending.num_rows // row_group_rows * row_group_rows
                if full:
                    writer.write_table(pending.slice(0, full), row_group_size=row_group_rows)
                    rows += full
                    pending = pending.slice(full)
            if pending.num_rows or not rows:
                writer.write_table(pending, row_group_size=row_group_rows)
                rows += pending.num_rows
    return FileEntry(
        path=rel_path,
        rows=rows,
        bytes=sink.size,
        sha256=sink.sha.hexdigest(),
        group=group,
        key_id=crypto.key_id if crypto is not None else "",
    )


def open_parquet(url: str, crypto: ParquetCrypto | None = None) -> pq.ParquetFile:
    """Open a lake file for reading (decrypting when `crypto` is given)."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        fh = fs.open(path, "rb")
        props = _with_url(crypto.decryption_properties, url=url) if crypto is not None else None
        return pq.ParquetFile(fh, decryption_properties=props)
    except FileNotFoundError as exc:
        raise ParquetReadError(f"{url}: file not found") from exc
    except KeyringError as exc:  # missing / revoked / wrong master key: name the file and the key id
        raise ParquetReadError(f"{url}: cannot decrypt: {exc}") from exc
    except (OSError, pa.ArrowException) as exc:
        raise ParquetReadError(f"{url}: cannot read Parquet file: {exc}") from exc


def read_table(url: str, crypto: ParquetCrypto | None = None, columns: list[str] | None = None) -> pa.Table:
    pf = open_parquet(url, crypto)
    try:
        return pf.read(columns=columns)
    except KeyringError as exc:
        raise ParquetReadError(f"{url}: cannot decrypt: {exc}") from exc
    except (OSError, pa.ArrowException) as exc:
        raise ParquetReadError(f"{url}: cannot read Parquet file: {exc}") from exc


def iter_row_groups(
    url: str, crypto: ParquetCrypto | None = None, columns: list[str] | None = None
) -> Iterator[pa.Table]:
    pf = open_parquet(url, crypto)
    for i in range(pf.num_row_groups):
        try:
            yield pf.read_row_group(i, columns=columns)
        except KeyringError as exc:
            raise ParquetReadError(f"{url}: row group {i}: cannot decrypt: {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            raise ParquetReadError(f"{url}: row group {i}: {exc}") from exc


def sha256_of(url: str, chunk: int = 8 << 20) -> str:
    fs, path = fsspec.core.url_to_fs(url)
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)
