"""The lake: interval paths, versioned outputs, and one commit record per step run (the commit point).

Layout (root is any fsspec URL: a local folder, s3://bucket/prefix, ...)::

    <root>/<stage>/<dataset>/ds=<ds>/v=<version>/...               the files of one writer
    <root>/<stage>/<dataset>/ds=<ds>/v=<version>/_manifest.json    its signed manifest (format 2)
    <root>/_commits/<dataset>/ds=<ds>/<seq>.json                   the interval's commit records

A step takes a fencing token when it starts writing (:meth:`Lake.new_version`), writes all its files
into fresh ``v=<version>/`` folders (the version names the token), writes each stage's signed
manifest into its folder, and then commits every stage it wrote with ONE commit record
(:mod:`tasks.io.commitlog`): created once, never replaced, so it works the same on a local disk
(hard link) and on S3 (``PUT If-None-Match: *``). The latest record is the interval's state;
readers resolve every stage through it, so a step's outputs (clean + quarantine, say) become
visible together or not at all, and a crash or I/O error at any point leaves the previous state
whole.

Fencing: a commit is refused (:class:`tasks.errors.FencedError`) when a stage it writes was
committed since by a writer with a newer token, so a writer that stalled can never commit over the
winner. Garbage collection never deletes a version the current record references, nor one it
superseded less than the grace period ago (readers that resolved the earlier record may still be
reading it); folders of writers that were fenced out are deleted at once (no record ever named
them, so no reader can be using them). Re-running an interval with the same input fingerprint,
code version and params is a cache hit (:func:`Lake.cache_hit`).

Intervals committed before the commit log (a ``_manifest.json`` in the interval folder, format 1)
stay readable; the interval's first record imports them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from tasks.errors import CommitConflict, FencedError, LeptonflowError, ManifestError, storage_error
from tasks.io import commitlog
from tasks.io.commitlog import CommitLog, Record, Retired, StageRef

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
MANIFEST_FORMAT = 2  # 1: interval-level _manifest.json replaced in place; 2: per version, through commit records
GC_GRACE_S = 300.0  # seconds a superseded version is kept for readers that resolved the previous commit
TASKS_DIR = Path(__file__).resolve().parents[1]
_VERSION_RE = re.compile(r"^\d{8}T\d{6}-t(\d+)-[0-9a-f]{8}$")


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
    format: int = 1  # set to MANIFEST_FORMAT by Lake.commit; 1 = read from a format-1 file
    token: int = 0  # fencing token of the writer that committed it (format 2)

    def payload(self) -> bytes:
        """Canonical bytes that the signature covers (everything but the signature)."""
        d = asdict(self)
        d.pop("signature")
        if self.format == 1:  # format-1 manifests were signed without these fields
            d.pop("format")
            d.pop("token")
        return json.dumps(d, sort_keys=True, default=str).encode()

    def digest(self) -> str:
        return hashlib.sha256(self.payload()).hexdigest()

    def to_json(self) -> str:
        d = asdict(self)
        if self.format == 1:
            d.pop("format")
            d.pop("token")
        return json.dumps(d, indent=1, sort_keys=True, default=str)

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

    def versions(self) -> tuple[str, ...]:
        """Every version folder this manifest's files (and the manifest itself) lie in."""
        found = {self.version} | {f.path.split("/", 1)[0][2:] for f in self.files if f.path.startswith("v=")}
        return tuple(sorted(found))


Signer = Callable[[bytes], str]
Verifier = Callable[[bytes, str], bool]


def is_local(fs: Any) -> bool:
    """Whether an fsspec filesystem is the local disk (rename, hard links and memory maps work)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def write_atomic(fs: Any, path: str, data: bytes, local: bool) -> None:
    """Replace `path` with `data` in one step: temp file + os.replace locally, a single PUT on object stores."""
    try:
        if local:
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)  # atomic on POSIX
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            fs.pipe_file(path, data)  # readers see the old or the new object, never a part
    except OSError as exc:
        raise storage_error(path if local else fs.unstrip_protocol(path), exc) from exc


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def params_key(params: dict[str, Any]) -> str:
    return fingerprint(params)


def version_token(version: str) -> int:
    """The fencing token a version id was made under (0 for versions made before tokens)."""
    m = _VERSION_RE.match(version)
    return int(m.group(1)) if m else 0


@dataclass
class _Writer:
    """This Lake's open writer of one interval: its token, the versions it made, manifests it prepared."""

    token: int
    owned: set[tuple[str, str]] = field(default_factory=set)  # (stage, version)
    prepared: list[Manifest] = field(default_factory=list)


class Lake:
    def __init__(
        self, root: str, signer: Signer | None = None, verifier: Verifier | None = None, gc_grace_s: float | None = None
    ):
        self.url = str(root)
        # Superseded versions are deleted only once superseded this long ago, so a concurrent reader that
        # resolved the previous commit can finish. Versions no commit ever referenced need no grace.
        self.gc_grace_s = GC_GRACE_S if gc_grace_s is None else float(gc_grace_s)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/")
        self.signer = signer
        self.verifier = verifier
        self.local = is_local(self.fs)
        self._writers: dict[tuple[str, str], _Writer] = {}

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

    def log(self, dataset: str, ds: str) -> CommitLog:
        """The commit log of one interval (all its stages)."""
        return CommitLog(self.fs, self.root, dataset, ds, self.local, self.signer, self.verifier)

    def manifest_path(self, stage: str, dataset: str, ds: str) -> str | None:
        """The file of the stage's committed manifest (None when nothing is committed)."""
        rec = self.log(dataset, ds).latest(verify=False)
        if rec is None:
            legacy = f"{self.interval_dir(stage, dataset, ds)}/{MANIFEST}"
            return legacy if self.fs.exists(legacy) else None
        ref = rec.stages.get(stage)
        return None if ref is None else f"{self.interval_dir(stage, dataset, ds)}/{ref.manifest}"

    # ---- writing: tokens, versions, one commit ------------------------------------
    def begin(self, dataset: str, ds: str) -> int:
        """This Lake's fencing token for writing the interval (taken from the commit log on first use).

        Every version a step makes of the interval shares it until the step commits; the next
        writer of the interval gets a larger one.
        """
        key = (dataset, ds)
        if key not in self._writers:
            rec = self.log(dataset, ds).append(lambda latest: Record(
                "begin", stages=dict(latest.stages) if latest else self._imported(dataset, ds),
                retired=list(latest.retired) if latest else []))
            self._writers[key] = _Writer(rec.seq)
        return self._writers[key].token

    def new_version(self, stage: str, dataset: str, ds: str) -> tuple[str, str]:
        """A fresh version id and its (empty) folder path for one step's output of `stage`."""
        token = self.begin(dataset, ds)
        version = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-t{token}-{uuid.uuid4().hex[:8]}"
        vdir = f"{self.interval_dir(stage, dataset, ds)}/v={version}"
        try:
            self.fs.makedirs(vdir, exist_ok=True)
        except OSError as exc:
            raise storage_error(self.full_url(vdir), exc) from exc
        self._writers[(dataset, ds)].owned.add((stage, version))
        return version, vdir

    def _write_atomic(self, path: str, data: bytes) -> None:
        write_atomic(self.fs, path, data, self.local)

    def prepare(self, manifest: Manifest) -> Manifest:
        """Hold `manifest` (of a version this Lake made) for the writer's next :meth:`commit`.

        For a step whose outputs are written by different functions: the prepared manifest becomes
        visible together with the commit's, through the same record, or not at all.
        """
        w = self._writers.get((manifest.dataset, manifest.ds))
        if w is None or (manifest.stage, manifest.version) not in w.owned:
            raise ManifestError(f"{manifest.stage} {manifest.dataset} ds={manifest.ds}: version {manifest.version} "
                                "was not made by this lake's writer (Lake.new_version)")
        manifest.rows = manifest.rows or sum(f.rows for f in manifest.files)
        w.prepared.append(manifest)
        return manifest

    def commit(self, manifest: Manifest, *more: Manifest, expect: dict[str, str | None] | None = None) -> Manifest:
        """Publish `manifest` (and `more`, and any prepared ones) as the interval's output: one commit record.

        Every manifest is signed and written into its version folder, then one record makes all of
        them visible at once. `expect` maps a stage to the version the commit was computed from
        (None: nothing committed): a read-modify-write step (Data Docs merge their suites) is refused
        with :class:`CommitConflict` when another commit of that stage came in between. Committing a
        manifest of a version this Lake did not make re-commits that version (key rotation re-signs
        a manifest): it needs that version to be the committed one.

        Raises:
            FencedError: a stage was committed since by a writer with a newer token; nothing of
                this commit is visible.
            CommitConflict: `expect` no longer holds.
            StorageError: writing a manifest or the record failed (the previous state stays).
        """
        dataset, ds = manifest.dataset, manifest.ds
        w = self._writers.pop((dataset, ds), None)  # one commit per writer, whatever its outcome
        manifests = [*(w.prepared if w else []), manifest, *more]
        stages = [m.stage for m in manifests]
        if any((m.dataset, m.ds) != (dataset, ds) for m in manifests) or len(set(stages)) != len(stages):
            raise ManifestError(f"one commit covers distinct stages of one interval, got {stages} "
                                f"of {sorted({(m.dataset, m.ds) for m in manifests})}")
        expect = dict(expect or {})
        recommit = [m for m in manifests if w is None or (m.stage, m.version) not in w.owned]
        fresh = self.begin(dataset, ds) if recommit else 0
        self._writers.pop((dataset, ds), None)
        for m in recommit:
            expect.setdefault(m.stage, m.version)  # re-signing a version needs it still committed
        again = {id(m) for m in recommit}
        refs = {m.stage: self._write_manifest(m, fresh if id(m) in again else w.token) for m in manifests}
        rec = self.log(dataset, ds).append(lambda latest: self._commit_record(latest, refs, expect, dataset, ds))
        for m in manifests:
            log.info("committed %s/%s ds=%s version=%s rows=%d files=%d (record %d, token %d)",
                     m.stage, dataset, ds, m.version, m.rows, len(m.files), rec.seq, refs[m.stage].token)
        self._after_commit(dataset, ds, refs)
        return manifest

    def _write_manifest(self, m: Manifest, token: int) -> StageRef:
        """Sign `m` and write it into its version folder (create-only: an existing file is never replaced)."""
        m.format, m.token = MANIFEST_FORMAT, token
        m.created_at = m.created_at or time.time()
        m.rows = m.rows or sum(f.rows for f in m.files)
        m.signature = self.signer(m.payload()) if self.signer is not None else ""
        data = m.to_json().encode()
        digest = hashlib.sha256(data).hexdigest()
        idir = self.interval_dir(m.stage, m.dataset, m.ds)
        rel = f"v={m.version}/{MANIFEST}"
        if not commitlog.create_only(self.fs, f"{idir}/{rel}", data, self.local) \
                and commitlog.read_bytes(self.fs, f"{idir}/{rel}", self.local) != data:
            rel = f"v={m.version}/_manifest-{digest[:16]}.json"  # a re-commit of the version: a new file
            commitlog.create_only(self.fs, f"{idir}/{rel}", data, self.local)
        return StageRef(version=m.version, token=token, manifest=rel, sha256=digest, versions=m.versions(),
                        committed_at=time.time())

    def _commit_record(self, latest: Record | None, refs: dict[str, StageRef], expect: dict[str, str | None],
                       dataset: str, ds: str) -> Record | None:
        """The record committing `refs` over `latest`, or a refusal (raised) when fencing or `expect` fail."""
        stages = dict(latest.stages) if latest else self._imported(dataset, ds)
        if all(stages.get(s) == ref for s, ref in refs.items()):
            return None  # already the state (our record was pruned under us while we slept): committed
        now = time.time()
        keep_s = max(self.gc_grace_s, 60.0)
        retired = [r for r in (latest.retired if latest else []) if now - r.at < keep_s]
        for stage, ref in refs.items():
            cur = stages.get(stage)
            if cur is not None and cur.token >= ref.token:
                raise FencedError(
                    f"{stage} of {dataset} ds={ds}: this writer (token {ref.token}, version {ref.version}) was "
                    f"superseded by the commit of token {cur.token} (version {cur.version}); nothing of this run "
                    "is committed and the committed output is untouched",
                    stage=stage, token=ref.token, winner=cur.token)
            if stage in expect and (cur.version if cur else None) != expect[stage]:
                raise CommitConflict(
                    f"{stage} of {dataset} ds={ds}: computed from version {expect[stage]}, but version "
                    f"{cur.version if cur else None} was committed since; re-run to build on it")
            if cur is not None:
                retired += [Retired(stage, v, now) for v in cur.versions if v not in ref.versions]
            stages[stage] = ref
        live = {(s, v) for s, r in stages.items() for v in r.versions}
        retired = [r for r in retired if (r.stage, r.version) not in live]
        return Record("commit", token=max(r.token for r in refs.values()), stages=stages, retired=retired,
                      changed=sorted(refs))

    def _imported(self, dataset: str, ds: str) -> dict[str, StageRef]:
        """Format-1 manifests of the interval (``<stage>/<dataset>/ds=<ds>/_manifest.json``), for its first record."""
        out: dict[str, StageRef] = {}
        for stage in commitlog.list_names(self.fs, self.root, self.local):
            if stage in ("raw", commitlog.LOG_ROOT):
                continue
            path = f"{self.interval_dir(stage, dataset, ds)}/{MANIFEST}"
            try:
                data = commitlog.read_bytes(self.fs, path, self.local)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
            m = self._parse(data, path, verify=True)  # a tampered manifest is never imported into a signed record
            out[stage] = StageRef(version=m.version, token=0, manifest=MANIFEST,
                                  sha256=hashlib.sha256(data).hexdigest(), versions=m.versions(),
                                  committed_at=m.created_at)
        return out

    def _after_commit(self, dataset: str, ds: str, refs: dict[str, StageRef]) -> None:
        """Collect what the commit superseded and prune the log; never fails the (done) commit."""
        for stage, ref in refs.items():
            try:
                self.collect_garbage(stage, dataset, ds, token=ref.token)
            except (OSError, LeptonflowError) as exc:
                log.warning("garbage collection of %s %s ds=%s after the commit failed (retried at the next "
                            "commit): %s", stage, dataset, ds, exc)
        try:
            self.log(dataset, ds).prune()
        except (OSError, LeptonflowError) as exc:
            log.warning("pruning the commit log of %s ds=%s failed: %s", dataset, ds, exc)

    def collect_garbage(self, stage: str, dataset: str, ds: str, keep: str | None = None,
                        token: int | None = None) -> list[str]:
        """Delete the stage's version folders that no reader can need; returns their versions.

        Kept: versions the current record references (whatever any clock says), versions of newer
        writers (their token is above the committed one: they may still commit), versions
        superseded less than the grace period ago, and `keep`. Deleted: the rest, i.e. versions
        superseded longer ago and folders of writers that were fenced out or died. `token` is the
        collecting writer's: when the stage was committed since by a newer token, the collection is
        refused (:class:`FencedError`) and deletes nothing.
        """
        rec = self.log(dataset, ds).latest()
        ref = rec.stages.get(stage) if rec is not None else None
        if ref is None:
            return []  # nothing committed through a record: nothing is known to be superseded
        if token is not None and ref.token > token:
            raise FencedError(f"garbage collection of {stage} {dataset} ds={ds} refused: this writer's token {token} "
                              f"is older than the committed token {ref.token}", stage=stage, token=token,
                              winner=ref.token)
        pending = {r.version: r.at for r in rec.retired if r.stage == stage}
        keep_set = set(ref.versions) | ({keep} if keep else set())
        now = time.time()
        idir = self.interval_dir(stage, dataset, ds)
        removed = []
        for name in commitlog.list_names(self.fs, idir, self.local):
            if not name.startswith("v=") or name[2:] in keep_set:
                continue
            version = name[2:]
            if version_token(version) > ref.token:
                continue  # a newer writer's folder: it may still commit
            if version in pending and now - pending[version] < self.gc_grace_s:
                continue  # superseded recently: a reader of the previous commit may still be reading
            self._rm(f"{idir}/{name}")
            removed.append(version)
        if removed:
            log.info("collected %s %s ds=%s versions %s", stage, dataset, ds, removed)
        return removed

    def _rm(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def put_bytes(self, vdir: str, version: str, name: str, data: bytes, group: str = "") -> FileEntry:
        """Write a small non-table file (JSON, PNG, model weights) into a version folder."""
        path = f"{vdir}/{name}"
        try:
            if "/" in name:
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(path, data)
        except OSError as exc:
            raise storage_error(self.full_url(path), exc) from exc
        return FileEntry(
            path=f"v={version}/{name}", rows=0, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), group=group
        )

    def link_file(self, src: str, dst: str) -> None:
        """Make `dst` hold the bytes of `src` without streaming them through this process.

        A hard link on a local lake (zero copy; deleting either name keeps the other), a
        server-side copy on object stores, a plain copy where neither is possible.
        """
        try:
            self.fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
            if self.local:
                try:
                    os.link(src, dst)
                    return
                except FileNotFoundError:
                    raise
                except OSError:  # another device, or a filesystem without hard links
                    pass
            self.fs.copy(src, dst)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise storage_error(self.full_url(dst), exc) from exc

    def discard(self, stage: str, dataset: str, ds: str, version: str) -> bool:
        """Delete an uncommitted version folder (a failed writer's); a committed one is never deleted.

        Returns whether it was deleted: a version the current record references, or superseded
        within the grace period, or one whose state cannot be read right now, is kept (GC decides later).
        """
        try:
            rec = self.log(dataset, ds).latest()
            if rec is None:
                legacy = self._legacy_manifest(stage, dataset, ds, verify=False)
                committed = legacy is not None and version in legacy.versions()
            else:
                ref = rec.stages.get(stage)
                now = time.time()
                committed = (ref is not None and version in ref.versions) or any(
                    r.stage == stage and r.version == version and now - r.at < self.gc_grace_s for r in rec.retired)
        except (OSError, LeptonflowError) as exc:
            log.warning("not discarding %s %s ds=%s version %s: cannot read the commit state (%s)",
                        stage, dataset, ds, version, exc)
            return False
        if committed:
            log.info("not discarding %s %s ds=%s version %s: it is committed", stage, dataset, ds, version)
            return False
        self._rm(f"{self.interval_dir(stage, dataset, ds)}/v={version}")
        w = self._writers.get((dataset, ds))
        if w is not None:  # the writer gave up this version; with nothing left it is closed
            w.owned.discard((stage, version))
            w.prepared = [m for m in w.prepared if (m.stage, m.version) != (stage, version)]
            if not w.owned:
                del self._writers[(dataset, ds)]
        return True

    # ---- reading ----------------------------------------------------------------
    def _parse(self, data: bytes, path: str, verify: bool) -> Manifest:
        where = self.full_url(path)
        try:
            m = Manifest.from_json(data.decode())
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ManifestError(f"{where}: unreadable manifest: {exc}") from exc
        if verify and self.verifier is not None and not self.verifier(m.payload(), m.signature):
            why = getattr(self.verifier, "problem", lambda *_: None)(m.payload(), m.signature)
            raise ManifestError(f"{where}: manifest signature check failed{f' ({why})' if why else ''} "
                                "(edited or signed with another key)")
        return m

    def _legacy_manifest(self, stage: str, dataset: str, ds: str, verify: bool) -> Manifest | None:
        path = f"{self.interval_dir(stage, dataset, ds)}/{MANIFEST}"
        try:
            data = commitlog.read_bytes(self.fs, path, self.local)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return self._parse(data, path, verify)

    def _resolve(self, stage: str, dataset: str, ds: str, rec: Record, verify: bool) -> Manifest | None:
        """The manifest `rec` names for `stage`, checked against the record (FileNotFoundError when gone)."""
        ref = rec.stages.get(stage)
        if ref is None:
            return None
        path = f"{self.interval_dir(stage, dataset, ds)}/{ref.manifest}"
        data = commitlog.read_bytes(self.fs, path, self.local)
        m = self._parse(data, path, verify)
        if hashlib.sha256(data).hexdigest() != ref.sha256 or (m.stage, m.dataset, m.ds, m.version) != (
                stage, dataset, ds, ref.version):
            raise ManifestError(f"{self.full_url(path)}: is not the manifest commit record {rec.seq} of "
                                f"{dataset} ds={ds} names for {stage} (replaced after the commit)")
        return m

    def manifests(
        self, dataset: str, ds: str, stages: Iterable[str], verify: bool = True
    ) -> dict[str, Manifest | None]:
        """The committed manifests of several stages, all from one commit record (one consistent state)."""
        stages = list(stages)
        problem: Exception | None = None
        for _ in range(commitlog.READ_RETRIES):
            rec = self.log(dataset, ds).latest(verify)
            if rec is None:
                return {s: self._legacy_manifest(s, dataset, ds, verify) for s in stages}
            try:
                return {s: self._resolve(s, dataset, ds, rec, verify) for s in stages}
            except FileNotFoundError as exc:  # superseded and collected between the two reads: read the new state
                problem = exc
        raise ManifestError(f"committed manifest of {dataset} ds={ds} under {self.url} is missing: {problem}")

    def manifest(self, stage: str, dataset: str, ds: str, verify: bool = True) -> Manifest | None:
        return self.manifests(dataset, ds, [stage], verify)[stage]

    def require(self, stage: str, dataset: str, ds: str) -> Manifest:
        m = self.manifest(stage, dataset, ds)
        if m is None:
            raise ManifestError(f"no committed {stage} output for {dataset} ds={ds} under {self.url}")
        return m

    def committed(self, stage: str, dataset: str, ds: str) -> bool:
        """Whether the interval has a committed output of `stage` (the manifest itself is not read)."""
        rec = self.log(dataset, ds).latest()
        if rec is None:
            return self.fs.exists(f"{self.interval_dir(stage, dataset, ds)}/{MANIFEST}")
        return stage in rec.stages

    def intervals(self, stage: str, dataset: str) -> list[str]:
        """Committed intervals of a stage, oldest first."""
        names = commitlog.list_names(self.fs, self.dataset_dir(stage, dataset), self.local)
        return sorted(n[3:] for n in names if n.startswith("ds=") and self.committed(stage, dataset, n[3:]))

    def previous_manifest(self, stage: str, dataset: str, before_ds: str) -> Manifest | None:
        earlier = [d for d in self.intervals(stage, dataset) if d < before_ds]
        return self.manifest(stage, dataset, earlier[-1]) if earlier else None

    def cache_hit(
        self, stage: str, dataset: str, ds: str, input_fingerprint: str, code: str, params: dict[str, Any]
    ) -> Manifest | None:
        """The committed manifest if it was made from the same input, code and params."""
        m = self.manifest(stage, dataset, ds)
        return m if m is not None and self.same_output(m, input_fingerprint, code, params) else None

    def same_output(self, m: Manifest, input_fingerprint: str, code: str, params: dict[str, Any]) -> bool:
        """Whether committed `m` was made from this input, code and params and its files are all there."""
        return (
            m.input_fingerprint == input_fingerprint
            and m.code_version == code
            and params_key(m.params) == params_key(params)
            and all(self.fs.exists(self.abspath(m, f)) for f in m.files)
        )

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
