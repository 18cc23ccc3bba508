"""The commit log of one lake interval: fencing tokens and commit records, each object written once.

Layout, relative to the lake root::

    _commits/<dataset>/ds=<ds>/<seq>.json       records (12-digit seq), created once, never replaced
    _commits/<dataset>/ds=<ds>/floor-<seq>      records below <seq> may have been deleted (log pruning)

Every record is a signed snapshot of the whole interval: for each stage, the committed manifest
(its file, sha256, version, the fencing token of the writer that committed it, and every version
folder its files are in), plus the versions superseded within the grace period. The record with the
highest seq IS the interval's state; there is no other pointer to keep in step.

A record is appended by creating slot ``latest + 1`` with a create-only write: ``os.link`` of a
complete, fsynced temp file on a local disk (fails with EEXIST when the slot is taken), a single
``PUT`` with ``If-None-Match: *`` on S3 (fails with 412). Of two writers racing for one slot exactly
one wins; the other reads the new state and validates again (optimistic concurrency, so there is no
lock a stopped process could hold). Kinds of records:

- ``begin``: a writer takes its fencing token, which is the record's seq: unique and increasing,
  whatever the clocks say.
- ``commit``: one step run's outputs, one or several stages, become visible together.

Pruning keeps the log short: a ``floor-<f>`` marker is created first, then records below ``f`` are
deleted. A writer that slept between reading the state and creating its slot might create a slot
that was pruned; it then finds its seq below the floor, knows its record is not on the chain,
deletes it and tries again, so such a stray record is never the latest one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.errors import CommitConflict, ManifestError, storage_error

log = logging.getLogger(__name__)

LOG_ROOT = "_commits"
RECORD_FORMAT = "leptonflow-commit/1"
SLOT_DIGITS = 12
FLOOR_PREFIX = "floor-"
MAX_RACES = 64  # lost slot races before giving up (each one is another writer's commit of this interval)
READ_RETRIES = 6
KEEP_RECORDS = 16  # records kept as history when the log is pruned (only the latest is state)

Signer = Callable[[bytes], str]
Verifier = Callable[[bytes, str], bool]


@dataclass(frozen=True)
class StageRef:
    """One stage's committed output, as a commit record names it."""

    version: str  # the manifest's version
    token: int  # fencing token of the writer that committed it (0: imported from a format-1 manifest)
    manifest: str  # the manifest file, relative to the stage's interval folder
    sha256: str  # of the manifest file's bytes
    versions: tuple[str, ...] = ()  # every version folder the manifest's files lie in: what GC keeps
    committed_at: float = 0.0


@dataclass(frozen=True)
class Retired:
    """A version a commit stopped referencing, and when (the committing writer's clock)."""

    stage: str
    version: str
    at: float


@dataclass
class Record:
    kind: str  # "begin" | "commit"
    token: int = 0  # begin: its own seq (the token it hands out); commit: the writer's token
    stages: dict[str, StageRef] = field(default_factory=dict)
    retired: list[Retired] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # the stages this record committed
    seq: int = 0
    id: str = ""
    base: str = ""  # id of the record this one was built on ("" for the first)
    created_at: float = 0.0
    writer: dict[str, Any] = field(default_factory=dict)  # host and pid, for people reading the log
    format: str = RECORD_FORMAT
    signature: str = ""

    def payload(self) -> bytes:
        """Canonical bytes the signature covers (everything but the signature)."""
        d = asdict(self)
        d.pop("signature")
        return json.dumps(d, sort_keys=True, default=str).encode()

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Record:
        try:
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("format") != RECORD_FORMAT:
                raise ValueError(f"not a {RECORD_FORMAT} record")
            d["stages"] = {s: StageRef(**{**r, "versions": tuple(r.get("versions", ()))})
                           for s, r in d.get("stages", {}).items()}
            d["retired"] = [Retired(**r) for r in d.get("retired", [])]
            return cls(**d)
        except (ValueError, TypeError, KeyError) as exc:
            raise _Unreadable(f"{where}: unreadable commit record: {exc}") from exc


class _Unreadable(ManifestError):
    """A record that does not parse (possibly still being written where the store has no atomic create)."""


# ---- store primitives -------------------------------------------------------------------------
def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_local(path: str, data: bytes) -> bool:
    folder = os.path.dirname(path)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(folder, exist_ok=True)
        try:
            with open(tmp, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # atomic, and fails when the name exists: the create-only commit point
                created = True
            except FileExistsError:
                created = False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV):
                    raise
                created = _create_excl(path, data)  # a filesystem without hard links
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if created:
            _fsync_dir(folder)
        return created
    except OSError as exc:
        raise storage_error(path, exc) from exc


def _create_excl(path: str, data: bytes) -> bool:
    """O_EXCL create: still create-only, but a reader may see the object before it is complete."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


_WARNED: set[str] = set()


def create_only(fs: Any, path: str, data: bytes, local: bool) -> bool:
    """Write `path` only if no object is there: True when this call created it, False when it existed.

    Readers never see a partial object (local: link of a complete temp file; S3: one PUT with
    ``If-None-Match: *``). A store whose fsspec filesystem has no create mode falls back to
    check-then-put, which two concurrent writers can both pass: a warning says so, once.
    """
    if local:
        return _create_local(path, data)
    try:
        fs.pipe_file(path, data, mode="create")
        return True
    except FileExistsError:
        return False
    except TypeError:  # an fsspec filesystem without the `mode` argument
        protocol = str(fs.protocol)
        if protocol not in _WARNED:
            _WARNED.add(protocol)
            log.warning("%s has no conditional create: concurrent commits of one interval are not fenced there",
                        protocol)
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
        return True
    except OSError as exc:
        if "ConditionalRequestConflict" in str(exc) or "PreconditionFailed" in str(exc):
            return False  # S3: a concurrent conditional write of the same key is in flight; it wins
        raise storage_error(fs.unstrip_protocol(path), exc) from exc


def list_names(fs: Any, folder: str, local: bool) -> list[str]:
    """Names in `folder` (fresh: no listing cache), [] when it does not exist."""
    if local:
        try:
            return os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
    fs.invalidate_cache(folder)
    try:
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return []


def read_bytes(fs: Any, path: str, local: bool) -> bytes:
    """The object's bytes; FileNotFoundError when it is gone."""
    if local:
        with open(path, "rb") as fh:
            return fh.read()
    return fs.cat_file(path)


def delete(fs: Any, path: str, local: bool) -> None:
    with contextlib.suppress(FileNotFoundError):
        if local:
            os.unlink(path)
        else:
            fs.rm_file(path)


# ---- the log ----------------------------------------------------------------------------------
class CommitLog:
    """The records of one interval (dataset, ds) under a lake root."""

    def __init__(self, fs: Any, root: str, dataset: str, ds: str, local: bool,
                 signer: Signer | None = None, verifier: Verifier | None = None):
        self.fs, self.local = fs, local
        self.dir = f"{root}/{LOG_ROOT}/{dataset}/ds={ds}"
        self.dataset, self.ds = dataset, ds
        self.signer, self.verifier = signer, verifier

    def path(self, seq: int) -> str:
        return f"{self.dir}/{seq:0{SLOT_DIGITS}d}.json"

    def url(self, path: str) -> str:
        return path if self.local else self.fs.unstrip_protocol(path)

    def slots(self) -> tuple[list[int], int]:
        """(record seqs in order, floor) as listed now."""
        seqs, floor = [], 0
        for name in list_names(self.fs, self.dir, self.local):
            stem = name[:-5] if name.endswith(".json") else ""
            if len(stem) == SLOT_DIGITS and stem.isdigit():
                seqs.append(int(stem))
            elif name.startswith(FLOOR_PREFIX) and name[len(FLOOR_PREFIX):].isdigit():
                floor = max(floor, int(name[len(FLOOR_PREFIX):]))
        return sorted(seqs), floor

    def read(self, seq: int, verify: bool = True) -> Record:
        """Record `seq`, signature checked; FileNotFoundError when it is gone."""
        path = self.path(seq)
        rec = Record.from_json(read_bytes(self.fs, path, self.local), self.url(path))
        if rec.seq != seq:
            raise ManifestError(f"{self.url(path)}: commit record of slot {rec.seq} found in slot {seq} (copied)")
        if verify and self.verifier is not None and not self.verifier(rec.payload(), rec.signature):
            why = getattr(self.verifier, "problem", lambda *_: None)(rec.payload(), rec.signature)
            raise ManifestError(f"{self.url(path)}: commit record signature check failed"
                                f"{f' ({why})' if why else ''}: edited, or signed with another key")
        return rec

    def latest(self, verify: bool = True) -> Record | None:
        """The interval's state: the record with the highest seq (None when nothing was ever committed)."""
        problem: Exception | None = None
        for attempt in range(READ_RETRIES):
            seqs, _ = self.slots()
            if not seqs:
                return None
            try:
                return self.read(seqs[-1], verify)
            except FileNotFoundError as exc:  # pruned between the listing and the read: list again
                problem = exc
            except _Unreadable as exc:  # a store without atomic create: the writer may not have finished
                problem = exc
                time.sleep(0.05 * (attempt + 1))
        raise ManifestError(f"{self.url(self.dir)}: the latest commit record cannot be read: {problem}")

    def records(self, verify: bool = True) -> list[Record]:
        """Every record still in the log, oldest first (for people and tests; state is :meth:`latest`)."""
        out = []
        for seq in self.slots()[0]:
            with contextlib.suppress(FileNotFoundError):
                out.append(self.read(seq, verify))
        return out

    def append(self, build: Callable[[Record | None], Record | None]) -> Record:
        """Append ``build(latest)`` as the next record; a lost race re-reads the state and builds again.

        `build` validates against the state it is given (it raises to refuse); it is called again after
        every lost race, so a refusal always reflects the state the record would have followed. It
        returns None when the state already holds what it would append (then that state is returned).
        """
        for _ in range(MAX_RACES):
            latest = self.latest()
            rec = build(latest)
            if rec is None:
                return latest
            rec.seq = latest.seq + 1 if latest else 1
            rec.base = latest.id if latest else ""
            rec.id = uuid.uuid4().hex
            rec.created_at = time.time()
            rec.writer = {"host": socket.gethostname(), "pid": os.getpid()}
            if rec.kind == "begin":
                rec.token = rec.seq
            rec.signature = self.signer(rec.payload()) if self.signer is not None else ""
            if not create_only(self.fs, self.path(rec.seq), rec.to_json(), self.local):
                continue  # another writer took the slot: read its state, validate again
            if rec.seq >= self.slots()[1]:
                return rec
            # The slot had been pruned (we slept between reading the state and creating it): this
            # record is below the floor, so it is not on the chain and nobody reads it as the state.
            log.warning("%s: slot %d was below the log's floor (a stale writer): retrying", self.dir, rec.seq)
            delete(self.fs, self.path(rec.seq), self.local)
        raise CommitConflict(f"{self.url(self.dir)}: {MAX_RACES} concurrent commits won the race for the next "
                             "slot; try again")

    def prune(self, keep: int = KEEP_RECORDS) -> int:
        """Delete all but the newest `keep` records (history; only the latest is state). Returns how many."""
        seqs, floor = self.slots()
        if len(seqs) <= 2 * keep:
            return 0
        new_floor = seqs[-keep]
        if new_floor > floor:  # the floor first: a stale writer re-creating a deleted slot then knows
            create_only(self.fs, f"{self.dir}/{FLOOR_PREFIX}{new_floor:0{SLOT_DIGITS}d}", b"", self.local)
        gone = 0
        for seq in seqs:
            if seq < new_floor:
                delete(self.fs, self.path(seq), self.local)
                gone += 1
        for name in list_names(self.fs, self.dir, self.local):
            if name.startswith(FLOOR_PREFIX) and name[len(FLOOR_PREFIX):].isdigit() \
                    and int(name[len(FLOOR_PREFIX):]) < new_floor:
                delete(self.fs, f"{self.dir}/{name}", self.local)
        return gone
