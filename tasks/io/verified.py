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
"""

from __future__ import annotations

import hashlib
import hmac

from tasks.errors import IntegrityError
from tasks.io.lake import FileEntry, Lake, Manifest

CHUNK = 8 << 20  # bytes hashed per read when streaming


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
