"""The lake: interval paths, versioned outputs, manifests written last (the commit point).

Layout (root is any fsspec URL: a local folder, s3://bucket/prefix, ...)::

    <root>/<stage>/<dataset>/ds=<ds>/_manifest.json   commit point, written last
    <root>/<stage>/<dataset>/ds=<ds>/v=<version>/...  the files of one commit

A step writes all its files into a fresh ``v=<version>/`` folder and then
replaces ``_manifest.json`` in one atomic operation (``os.replace`` locally, a
single PUT on object stores). Readers only follow the manifest, so they see
either the old or the new output, never a mix. After a commit the superseded
version folder is deleted. Re-running an interval with the same input
fingerprint, code version and params is a cache hit (:func:`Lake.cache_hit`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from tasks.errors import ManifestError

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
GC_GRACE_S = 300.0  # seconds an unreferenced version folder is kept (a writer may still be filling it)
TASKS_DIR = Path(__file__).resolve().parents[1]


@dataclass
class FileEntry:
    path: str  # relative to the interval folder, e.g. "v=abc/train/part-00000.parquet"
    rows: int
    bytes: int
    sha256: str
    group: str = ""  # e.g. "train"/"val"/"test" for split, "" otherwise
    key_id: str = ""  # id of the master key that wraps this file's data keys (never the key)


@dataclass
class Manifest:
    stage: str
    dataset: str
    ds: str
    version: str
    files: list[FileEntry] = field(default_factory=list)
    rows: int = 0
    input_fingerprint: str = ""
    code_version: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    signature: str = ""

    def payload(self) -> bytes:
        """Canonical bytes that the signature covers (everything but the signature)."""
        d = asdict(self)
        d.pop("signature")
        return json.dumps(d, sort_keys=True, default=str).encode()

    def digest(self) -> str:
        return hashlib.sha256(self.payload()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        d = json.loads(text)
        d["files"] = [FileEntry(**f) for f in d.get("files", [])]
        return cls(**d)

    def group_files(self, group: str | None = None) -> list[FileEntry]:
        return [f for f in self.files if group is None or f.group == group]

    def entry(self, basename: str) -> FileEntry:
        """The listed file whose name (last path part) is `basename`."""
        for f in self.files:
            if f.path.rsplit("/", 1)[-1] == basename:
                return f
        raise ManifestError(f"{self.stage} manifest of {self.dataset} ds={self.ds} lists no {basename}")

    def rows_in(self, group: str) -> int:
        return sum(f.rows for f in self.files if f.group == group)


Signer = Callable[[bytes], str]
Verifier = Callable[[bytes, str], bool]


def is_local(fs: Any) -> bool:
    """Whether an fsspec filesystem is the local disk (rename, hard links and memory maps work)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def write_atomic(fs: Any, path: str, data: bytes, local: bool) -> None:
    """Replace `path` with `data` in one step: temp file + os.replace locally, a single PUT on object stores."""
    if local:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic on POSIX
    else:
        fs.pipe_file(path, data)  # readers see the old or the new object, never a part


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def params_key(params: dict[str, Any]) -> str:
    return fingerprint(params)


class Lake:
    def __init__(
        self, root: str, signer: Signer | None = None, verifier: Verifier | None = None, gc_grace_s: float | None = None
    ):
        self.url = str(root)
        # Superseded versions are deleted only once older than this, so a concurrent run of the
        # same interval that is still reading the version it started with is not pulled from under.
        self.gc_grace_s = GC_GRACE_S if gc_grace_s is None else float(gc_grace_s)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/")
        self.signer = signer
        self.verifier = verifier
        self.local = is_local(self.fs)

    # ---- paths -----------------------------------------------------------------
    def interval_dir(self, stage: str, dataset: str, ds: str) -> str:
        return f"{self.root}/{stage}/{dataset}/ds={ds}"

    def dataset_dir(self, stage: str, dataset: str) -> str:
        return f"{self.root}/{stage}/{dataset}"

    def abspath(self, manifest: Manifest, entry: FileEntry) -> str:
        return f"{self.interval_dir(manifest.stage, manifest.dataset, manifest.ds)}/{entry.path}"

    def full_url(self, path: str) -> str:
        """A path of this lake's filesystem as a URL other processes can open."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def raw_files(self, dataset: str, ds: str) -> list[str]:
        """Landing-zone files of one interval (raw/ has no manifest: it is never modified)."""
        d = self.interval_dir("raw", dataset, ds)
        if not self.fs.exists(d):
            return []
        return sorted(p for p in self.fs.find(d) if p.endswith(".parquet"))

    # ---- versions and commits -------------------------------------------------
    def new_version(self, stage: str, dataset: str, ds: str) -> tuple[str, str]:
        """A fresh version id and its (empty) folder path for one step's output."""
        version = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        vdir = f"{self.interval_dir(stage, dataset, ds)}/v={version}"
        self.fs.makedirs(vdir, exist_ok=True)
        return version, vdir

    def _write_atomic(self, path: str, data: bytes) -> None:
        write_atomic(self.fs, path, data, self.local)

    def commit(self, manifest: Manifest) -> Manifest:
        """Publish `manifest` as the interval's output and delete the superseded version."""
        manifest.created_at = manifest.created_at or time.time()
        manifest.rows = manifest.rows or sum(f.rows for f in manifest.files)
        if self.signer is not None:
            manifest.signature = self.signer(manifest.payload())
        idir = self.interval_dir(manifest.stage, manifest.dataset, manifest.ds)
        self.fs.makedirs(idir, exist_ok=True)
        self._write_atomic(f"{idir}/{MANIFEST}", manifest.to_json().encode())
        log.info(
            "committed %s/%s ds=%s version=%s rows=%d files=%d",
            manifest.stage, manifest.dataset, manifest.ds, manifest.version, manifest.rows, len(manifest.files),
        )
        self.collect_garbage(manifest.stage, manifest.dataset, manifest.ds, keep=manifest.version)
        return manifest

    def collect_garbage(self, stage: str, dataset: str, ds: str, keep: str) -> list[str]:
        """Delete version folders other than `keep` that are older than the grace period."""
        idir = self.interval_dir(stage, dataset, ds)
        removed = []
        now = time.time()
        for p in self.fs.ls(idir, detail=True):
            name = p["name"].rstrip("/").rsplit("/", 1)[-1]
            if p["type"] != "directory" or not name.startswith("v=") or name == f"v={keep}":
                continue
            version = name[2:]
            try:  # version ids start with their creation time (local clock of the writer)
                born = time.mktime(time.strptime(version.split("-", 1)[0], "%Y%m%dT%H%M%S"))
            except ValueError:
                born = 0.0
            if now - born >= self.gc_grace_s:
                self.discard(stage, dataset, ds, version)
                removed.append(version)
        return removed

    def put_bytes(self, vdir: str, version: str, name: str, data: bytes, group: str = "") -> FileEntry:
        """Write a small non-table file (JSON, PNG, model weights) into a version folder."""
        self.fs.pipe_file(f"{vdir}/{name}", data)
        return FileEntry(
            path=f"v={version}/{name}", rows=0, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), group=group
        )

    def link_file(self, src: str, dst: str) -> None:
        """Make `dst` hold the bytes of `src` without streaming them through this process.

        A hard link on a local lake (zero copy; deleting either name keeps the other), a
        server-side copy on object stores, a plain copy where neither is possible.
        """
        self.fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
        if self.local:
            try:
                os.link(src, dst)
                return
            except OSError:  # another device, or a filesystem without hard links
                pass
        self.fs.copy(src, dst)

    def discard(self, stage: str, dataset: str, ds: str, version: str) -> None:
        vdir = f"{self.interval_dir(stage, dataset, ds)}/v={version}"
        if self.fs.exists(vdir):
            self.fs.rm(vdir, recursive=True)

    def manifest(self, stage: str, dataset: str, ds: str, verify: bool = True) -> Manifest | None:
        path = f"{self.interval_dir(stage, dataset, ds)}/{MANIFEST}"
        if not self.fs.exists(path):
            return None
        try:
            m = Manifest.from_json(self.fs.cat_file(path).decode())
        except (ValueError, TypeError, KeyError) as exc:
            raise ManifestError(f"{path}: unreadable manifest: {exc}") from exc
        if verify and self.verifier is not None and not self.verifier(m.payload(), m.signature):
            raise ManifestError(f"{path}: manifest signature check failed (edited or signed with another key)")
        return m

    def require(self, stage: str, dataset: str, ds: str) -> Manifest:
        m = self.manifest(stage, dataset, ds)
        if m is None:
            raise ManifestError(f"no committed {stage} output for {dataset} ds={ds} under {self.url}")
        return m

    def intervals(self, stage: str, dataset: str) -> list[str]:
        """Committed intervals of a stage, oldest first."""
        d = self.dataset_dir(stage, dataset)
        if not self.fs.exists(d):
            return []
        out = []
        for p in self.fs.ls(d, detail=False):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("ds=") and self.fs.exists(f"{p}/{MANIFEST}"):
                out.append(name[3:])
        return sorted(out)

    def previous_manifest(self, stage: str, dataset: str, before_ds: str) -> Manifest | None:
        earlier = [d for d in self.intervals(stage, dataset) if d < before_ds]
        return self.manifest(stage, dataset, earlier[-1]) if earlier else None

    def cache_hit(
        self, stage: str, dataset: str, ds: str, input_fingerprint: str, code: str, params: dict[str, Any]
    ) -> Manifest | None:
        """The committed manifest if it was made from the same input, code and params."""
        m = self.manifest(stage, dataset, ds)
        if m is None:
            return None
        same = (
            m.input_fingerprint == input_fingerprint
            and m.code_version == code
            and params_key(m.params) == params_key(params)
            and all(self.fs.exists(self.abspath(m, f)) for f in m.files)
        )
        return m if same else None

    # ---- fingerprints ----------------------------------------------------------
    def files_fingerprint(self, paths: Iterable[str]) -> str:
        """Cheap identity of input files: path, size and modification stamp (no full read)."""
        items = []
        for p in paths:
            info = self.fs.info(p)
            stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created")
            items.append((p, info.get("size"), str(stamp)))
        return fingerprint(items)

    @staticmethod
    def manifests_fingerprint(*manifests: Manifest | None) -> str:
        return fingerprint([m.digest() if m else None for m in manifests])
