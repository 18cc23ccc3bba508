"""The one verified reader of lake files: a file is used only once its size and sha256 match its manifest.

The manifest itself is checked by :meth:`tasks.io.lake.Lake.manifest` / ``require`` (its
signature); this module checks the files it lists, so a reader never uses bytes other than
the ones that were committed and signed for. Every failure is an
:class:`tasks.errors.IntegrityError` whose message starts with the file's URL and says what
mismatched (``problem``: ``missing``, ``size`` or ``sha256``).

- :func:`read_bytes`: a small file's bytes (model weights, JSON, reports), checked in memory;
  the returned bytes are the checked ones, so a concurrent overwrite cannot slip in between.
- :func:`check_file`: a file of any size checked by streaming it (Parquet data files).
- :func:`verified_paths`: the (URL, entry) pairs of a manifest's files, each checked.
- :class:`VerifyingFile` / :class:`VerifiedParquet`: a file checked while it is being read
  (hash what is read, no extra pass): the size is checked when it is opened, the sha256 of
  everything read so far is extended as pyarrow reads forward, and :meth:`VerifyingFile.finish`
  hashes whatever was not read (skipped row groups, a footer read first) and compares. A reader
  uses nothing it computed from a file until ``finish`` passed (train, evaluate and compress
  read their inputs this way).
- :func:`layouts` / :func:`row_group_rows`: rows per row group (and size + tail digest, so a later
  reader can tell the verified file from a replacement with one small read) of manifest-listed
  Parquet files, from a verified read.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import IntegrityError, KeyringError, ParquetReadError
from tasks.io import parquet as parquet_io
from tasks.io.lake import FileEntry, Lake, Manifest

CHUNK = 8 << 20  # bytes hashed per read when streaming
TAIL = 4096  # bytes at the end of a file (Parquet footer) whose sha256 identifies the verified file cheaply


def file_url(lake: Lake, manifest: Manifest, entry: FileEntry) -> str:
    """The URL of a manifest-listed file, as other processes open it and as errors name it."""
    return lake.full_url(lake.abspath(manifest, entry))


def _missing(url: str) -> IntegrityError:
    return IntegrityError(f"{url}: missing (listed in the manifest)", path=url, problem="missing")


def _check_size(url: str, entry: FileEntry, size: int) -> None:
    if size != entry.bytes:
        raise IntegrityError(f"{url}: size {size} bytes does not match the manifest's {entry.bytes} "
                             "(truncated or replaced)", path=url, problem="size")


def _check_digest(url: str, entry: FileEntry, digest: str) -> None:
    if not hmac.compare_digest(digest, entry.sha256.lower()):
        raise IntegrityError(f"{url}: sha256 {digest[:16]}... does not match the manifest's {entry.sha256[:16]}... "
                             "(tampered or corrupted)", path=url, problem="sha256")


def check_bytes(url: str, entry: FileEntry, data: bytes) -> bytes:
    """`data` (the content of `url`) after checking its size and sha256 against `entry`."""
    _check_size(url, entry, len(data))
    _check_digest(url, entry, hashlib.sha256(data).hexdigest())
    return data


def read_bytes(lake: Lake, manifest: Manifest, entry: FileEntry) -> bytes:
    """The bytes of a manifest-listed file, fetched once and returned only if size and sha256 match."""
    url = file_url(lake, manifest, entry)
    try:
        data = lake.fs.cat_file(lake.abspath(manifest, entry))
    except FileNotFoundError:
        raise _missing(url) from None
    return check_bytes(url, entry, data)


def read_named(lake: Lake, manifest: Manifest, basename: str) -> bytes:
    """:func:`read_bytes` of the listed file named `basename` (``ManifestError`` when none is)."""
    return read_bytes(lake, manifest, manifest.entry(basename))


def check_file(lake: Lake, manifest: Manifest, entry: FileEntry) -> str:
    """Check a listed file of any size by streaming it (size first, then sha256); returns its URL."""
    path = lake.abspath(manifest, entry)
    url = lake.full_url(path)
    try:
        _check_size(url, entry, int(lake.fs.size(path)))
        h = hashlib.sha256()
        with lake.fs.open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    except FileNotFoundError:
        raise _missing(url) from None
    _check_digest(url, entry, h.hexdigest())
    return url


def verified_paths(lake: Lake, manifest: Manifest, group: str | None = None) -> list[tuple[str, FileEntry]]:
    """(URL, entry) of the manifest's files (of `group`, or all), each checked by :func:`check_file`."""
    return [(check_file(lake, manifest, entry), entry) for entry in manifest.group_files(group)]


class VerifyingFile:
    """A read-only file object over `url` that sha256-hashes its bytes as they are read.

    Bytes read at the hashed frontier extend the hash; reads elsewhere (a footer first, a
    skipped row group) are left to :meth:`finish`, which hashes the rest and compares with the
    entry. The size is checked on opening, so a file of another size fails before any byte is used.
    """

    def __init__(self, url: str, entry: FileEntry):
        self.url, self.entry = url, entry
        self._fs, self._path = fsspec.core.url_to_fs(url)
        try:
            _check_size(url, entry, int(self._fs.size(self._path)))
            self._fh = self._fs.open(self._path, "rb")
        except FileNotFoundError:
            raise _missing(url) from None
        self._sha = hashlib.sha256()
        self._tail = b""  # the last TAIL hashed bytes
        self._hashed = 0  # bytes [0, _hashed) are in the hash
        self._pos = 0
        self.closed = False
        self.done = False

    # -- the file protocol pyarrow uses --
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = self._fh.seek(offset, whence)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        pos = self._pos
        data = self._fh.read(n)
        self._pos = pos + len(data)
        if pos <= self._hashed < self._pos:
            self._hash(memoryview(data)[self._hashed - pos:])
        return data

    def _hash(self, chunk: Any) -> None:
        self._sha.update(chunk)
        self._hashed += len(chunk)
        self._tail = (self._tail + bytes(chunk[-TAIL:]))[-TAIL:]

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
            self.closed = True

    # -- the check --
    def finish(self) -> str:
        """Hash what was not read yet, compare with the manifest (IntegrityError naming the file); returns the URL."""
        if not self.done:
            if self.closed:
                raise IntegrityError(f"{self.url}: closed before it was verified", path=self.url, problem="sha256")
            self._fh.seek(self._hashed)
            while chunk := self._fh.read(CHUNK):
                self._hash(chunk)
            self._fh.seek(self._pos)
            _check_size(self.url, self.entry, self._hashed)
            _check_digest(self.url, self.entry, self._sha.hexdigest())
            self.done = True
        return self.url

    @property
    def tail_sha256(self) -> str:
        """sha256 of the file's last TAIL bytes, as verified (after :meth:`finish`)."""
        if not self.done:
            raise IntegrityError(f"{self.url}: not verified yet", path=self.url, problem="sha256")
        return hashlib.sha256(self._tail).hexdigest()


def tail_sha256(url: str, size: int) -> str:
    """sha256 of the last TAIL bytes of `url` (whose size is `size`): one small read."""
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as fh:
        fh.seek(max(0, size - TAIL))
        return hashlib.sha256(fh.read(TAIL)).hexdigest()


@dataclass(frozen=True)
class Layout:
    """What a verified Parquet file looked like: rows per row group, size, sha256 of its last TAIL bytes.

    Processes that read the file later (training ranks) compare its size and tail (one small read)
    against this instead of hashing it again: a file replaced after the check has another footer.
    """

    row_groups: list[int]
    size: int
    tail_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"row_groups": self.row_groups, "size": self.size, "tail_sha256": self.tail_sha256}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Layout:
        return cls(list(d["row_groups"]), int(d["size"]), str(d["tail_sha256"]))

    def check(self, url: str) -> None:
        """IntegrityError naming `url` when its size or tail is no longer the verified one."""
        fs, path = fsspec.core.url_to_fs(url)
        try:
            size = int(fs.size(path))
        except FileNotFoundError:
            raise _missing(url) from None
        if size != self.size or tail_sha256(url, size) != self.tail_sha256:
            raise IntegrityError(f"{url}: not the file verified before training (size {size}, verified "
                                 f"{self.size}; or another footer): replaced after the check", path=url,
                                 problem="replaced")


def _decryption(crypto: Any, url: str) -> Any:
    return None if crypto is None else parquet_io._with_url(crypto.decryption_properties, url=url)


class VerifiedParquet:
    """A manifest-listed Parquet file read through a :class:`VerifyingFile`.

    Opening checks the size and that the footer's row count is the manifest's; ``finish()``
    checks the sha256 of the whole file (call it before using anything read from it).
    """

    def __init__(self, url: str, entry: FileEntry, crypto: Any = None):
        self.url, self.entry = url, entry
        self.file = VerifyingFile(url, entry)
        try:
            self.pf = pq.ParquetFile(self.file, decryption_properties=_decryption(crypto, url))
        except KeyringError as exc:
            self.file.close()
            raise ParquetReadError(f"{url}: cannot decrypt: {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            self.file.close()
            raise ParquetReadError(f"{url}: cannot read Parquet file: {exc}") from exc
        rows = self.pf.metadata.num_rows
        if rows != entry.rows:
            self.file.close()
            raise IntegrityError(f"{url}: {rows} rows in the file, the manifest says {entry.rows} (replaced?)",
                                 path=url, problem="rows")

    @property
    def metadata(self) -> Any:
        return self.pf.metadata

    @property
    def schema_arrow(self) -> pa.Schema:
        return self.pf.schema_arrow

    @property
    def num_row_groups(self) -> int:
        return self.pf.num_row_groups

    def row_group_rows(self) -> list[int]:
        md = self.pf.metadata
        return [md.row_group(i).num_rows for i in range(md.num_row_groups)]

    def read_row_group(self, i: int, columns: list[str] | None = None) -> pa.Table:
        try:
            return self.pf.read_row_group(i, columns=columns)
        except KeyringError as exc:
            raise ParquetReadError(f"{self.url}: row group {i}: cannot decrypt: {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            raise ParquetReadError(f"{self.url}: row group {i}: {exc}") from exc

    def finish(self) -> str:
        try:
            return self.file.finish()
        finally:
            self.file.close()


def layouts(lake: Lake, manifest: Manifest, entries: Sequence[FileEntry], crypto: Any = None) -> list[Layout]:
    """The :class:`Layout` of each listed Parquet file, from a read that verifies size, rows and sha256.

    One read of each file: the footer, then the rest hashed in order (``VerifyingFile.finish``).
    """
    out = []
    for entry in entries:
        vp = VerifiedParquet(file_url(lake, manifest, entry), entry, crypto)
        rows = vp.row_group_rows()
        vp.finish()
        out.append(Layout(rows, entry.bytes, vp.file.tail_sha256))
    return out


def row_group_rows(lake: Lake, manifest: Manifest, entries: Sequence[FileEntry], crypto: Any = None) -> list[list[int]]:
    """Rows per row group of each listed Parquet file, from a verified read (see :func:`layouts`)."""
    return [lay.row_groups for lay in layouts(lake, manifest, entries, crypto)]
