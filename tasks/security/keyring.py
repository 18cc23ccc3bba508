"""Key material: PME master keys, the Ed25519 signing keys, and where a process finds them.

Keys never appear in code, logs, XCom, manifests or the environment; only their ids do.

The keyring is a JSON file, mode 0600, in a 0700 folder (the embedded default is
``<LEPTONFLOW_HOME>/keys/keyring.json``). It is created only by an explicit command,
``python -m tasks keys init`` (:func:`generate`): loading a path that does not exist is an
error, and so is a keyring readable by group or others (:func:`load`). An Airflow task that
gets the document from the ``leptonflow_keys`` Connection writes it to a private 0600 file
(:func:`private_copy`) and hands that path, never the document, to the processes it starts.

Document format (``"format": "leptonflow-keyring/2"``)::

    {"active": "<master key id>", "master_keys": {"<id>": "<b64>"}, "revoked": ["<id>"],
     "signing": {"active": "<ed25519 key id>",
                 "keys": {"<id>": {"public": "<b64>", "private": "<b64>", "created": <unix s>}}},
     "legacy_hmac_key": "<b64>",          # optional: verifies manifests signed before Ed25519
     "kms": {"backend": "aws-kms", ...}}  # optional: a real KMS wraps new files (tasks.security.kms)

Master keys: rotation (``python -m tasks rotate-keys``, :mod:`tasks.security.crypto`) adds one
with :func:`add_master_key` and makes it active; old ones stay for reading until :func:`revoke`.

Signing keys: Ed25519 (:mod:`tasks.security.signing`). The key id is derived from the public key
(``ed-`` + 16 hex of its sha256), so it names the key without revealing anything. Rotation
(:func:`rotate_signing_key`) makes a new key active and drops the old private key, keeping its
public half: everything the old key signed stays verifiable, nothing new can be signed with it.
``python -m tasks keys export-public`` writes the public keys, all a verifier needs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import secrets
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tasks.errors import KeyringError

log = logging.getLogger(__name__)

FORMAT = "leptonflow-keyring/2"
PUBLIC_FORMAT = "leptonflow-public-keys/1"
INIT_HINT = "create one with `python -m tasks keys init --keyring {path}`"


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def public_key_id(public: bytes) -> str:
    """The id of an Ed25519 public key: ``ed-`` + the first 16 hex digits of its sha256."""
    return "ed-" + hashlib.sha256(public).hexdigest()[:16]


def public_key_fingerprint(public: bytes) -> str:
    """The full fingerprint of an Ed25519 public key, as the model card prints it."""
    return "sha256:" + hashlib.sha256(public).hexdigest()


@dataclass
class SigningKey:
    """One Ed25519 key: the public half always, the private half only while it may still sign."""

    public: bytes  # raw 32 bytes
    private: bytes | None = field(default=None, repr=False)  # raw 32-byte seed; None once retired
    created: float = 0.0

    @property
    def key_id(self) -> str:
        return public_key_id(self.public)

    @property
    def fingerprint(self) -> str:
        return public_key_fingerprint(self.public)

    @classmethod
    def new(cls) -> SigningKey:
        priv = Ed25519PrivateKey.generate()
        raw = priv.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(public=pub, private=raw, created=time.time())


@dataclass
class Keyring:
    active: str  # master key id that wraps new files ("" when a KMS does, see `kms`)
    master_keys: dict[str, bytes]
    signing_keys: dict[str, SigningKey] = field(default_factory=dict)
    signing_active: str = ""
    revoked: set[str] = field(default_factory=set)
    legacy_hmac_key: bytes | None = field(default=None, repr=False)
    kms: dict[str, Any] | None = None  # non-secret KMS config (tasks.security.kms.KmsConfig fields)
    path: str = ""

    def __repr__(self) -> str:  # never print key bytes
        return (f"Keyring(active={self.active!r}, key_ids={sorted(self.master_keys)}, "
                f"signing={self.signing_active!r}, kms={bool(self.kms)}, path={self.path!r})")

    def __reduce__(self):  # a keyring never travels to another process (Dask, torch, multiprocessing)
        raise KeyringError("a Keyring is never pickled: workers get a keyring path or KMS config (LakeCrypto)")

    def master_key(self, key_id: str) -> bytes:
        if key_id in self.revoked:
            raise KeyringError(f"master key {key_id!r} is revoked")
        if key_id not in self.master_keys:
            raise KeyringError(f"master key {key_id!r} is not in the keyring {self.path or '(document)'}")
        return self.master_keys[key_id]

    @property
    def wrap_key_id(self) -> str:
        """The id of the key that wraps new files: the KMS key when one is configured, else `active`."""
        if self.kms:
            return str(self.kms.get("key_id") or "")
        return self.active

    def signing_key(self) -> SigningKey:
        """The active Ed25519 key (with its private half)."""
        key = self.signing_keys.get(self.signing_active)
        if key is None or key.private is None:
            raise KeyringError(
                f"keyring {self.path or '(document)'} has no active Ed25519 signing key; add one with "
                f"`python -m tasks keys rotate-signing --keyring {self.path or 'PATH'}`")
        return key

    def public_doc(self) -> dict[str, Any]:
        """Every signing key's public half (no secret): what ``keys export-public`` writes."""
        return {
            "format": PUBLIC_FORMAT,
            "active": self.signing_active,
            "keys": {k.key_id: {"algorithm": "ed25519", "public_key": _b64(k.public), "fingerprint": k.fingerprint,
                                "created": k.created, "retired": k.private is None}
                     for k in self.signing_keys.values()},
        }

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "active": self.active,
            "master_keys": {k: _b64(v) for k, v in self.master_keys.items()},
            "revoked": sorted(self.revoked),
            "signing": {"active": self.signing_active, "keys": {
                k.key_id: {"public": _b64(k.public), "created": k.created,
                           **({"private": _b64(k.private)} if k.private is not None else {})}
                for k in self.signing_keys.values()}},
        }
        if self.legacy_hmac_key:
            doc["legacy_hmac_key"] = _b64(self.legacy_hmac_key)
        if self.kms:
            doc["kms"] = dict(self.kms)
        return doc

    @classmethod
    def from_doc(cls, doc: dict, path: str = "") -> Keyring:
        where = path or "(document)"
        if not isinstance(doc, dict):
            raise KeyringError(f"keyring {where} is malformed: not a JSON object")
        dec = base64.b64decode
        try:
            signing = doc.get("signing") or {}
            keys = {}
            for kid, k in (signing.get("keys") or {}).items():
                key = SigningKey(public=dec(k["public"]), private=dec(k["private"]) if k.get("private") else None,
                                 created=float(k.get("created", 0.0)))
                if key.key_id != kid or len(key.public) != 32:
                    raise ValueError(f"signing key {kid!r} does not match its public key")
                keys[kid] = key
            legacy = doc.get("legacy_hmac_key") or doc.get("signing_key")  # the v1 name of the HMAC key
            ring = cls(
                active=str(doc.get("active", "")),
                master_keys={k: dec(v) for k, v in doc["master_keys"].items()},
                signing_keys=keys,
                signing_active=str(signing.get("active", "")),
                revoked=set(doc.get("revoked", [])),
                legacy_hmac_key=dec(legacy) if legacy else None,
                kms=dict(doc["kms"]) if doc.get("kms") else None,
                path=path,
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise KeyringError(f"keyring {where} is malformed: missing or bad field {exc}") from None
        if ring.active and ring.active not in ring.master_keys:
            raise KeyringError(f"keyring {where} is malformed: active master key {ring.active!r} is not in it")
        if not ring.active and not ring.kms:
            raise KeyringError(f"keyring {where} is malformed: no active master key and no kms section")
        if ring.signing_active and ring.signing_active not in ring.signing_keys:
            raise KeyringError(f"keyring {where} is malformed: active signing key {ring.signing_active!r} is not in it")
        return ring

    def save(self, path: str | Path | None = None) -> None:
        """Write the keyring atomically to `path` (default: where it was loaded from), mode 0600."""
        if not (path or self.path):
            raise KeyringError("this keyring came from a document (a Connection): save it through its secrets backend")
        write_private(Path(path or self.path), json.dumps(self.to_doc()).encode())


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a fresh 0600 temp file renamed over it, in a 0700 folder if new."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never one left by someone else
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    os.chmod(path, 0o600)


def new_key() -> bytes:
    return secrets.token_bytes(32)  # AES-256


def new_key_id(ring: Keyring | None = None) -> str:
    while True:
        kid = "mk-" + secrets.token_hex(4)
        if ring is None or kid not in ring.master_keys:
            return kid


def new_keyring(kms: dict[str, Any] | None = None) -> Keyring:
    """A fresh keyring in memory: one master key (none when a KMS wraps), one Ed25519 signing key."""
    sk = SigningKey.new()
    if kms:
        return Keyring(active="", master_keys={}, signing_keys={sk.key_id: sk}, signing_active=sk.key_id,
                       kms=dict(kms))
    kid = new_key_id()
    return Keyring(active=kid, master_keys={kid: new_key()}, signing_keys={sk.key_id: sk}, signing_active=sk.key_id)


def generate(path: str | Path, kms: dict[str, Any] | None = None) -> Keyring:
    """Create a keyring file (0600, folder 0700); an error if one exists there already.

    The file appears atomically (hard link of a complete temp file), so two processes racing
    to create it cannot both succeed, and nobody ever reads a half-written keyring.
    """
    path = Path(path)
    ring = new_keyring(kms)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.new")
    write_private(tmp, json.dumps(ring.to_doc()).encode())
    try:
        os.link(tmp, path)  # atomic create-if-absent
    except FileExistsError:
        raise KeyringError(f"a keyring already exists at {path}; not overwriting it") from None
    finally:
        tmp.unlink(missing_ok=True)
    ring.path = str(path)
    log.info("created keyring %s (master key %s, signing key %s)", path, ring.active or "(kms)", ring.signing_active)
    return ring


def check_private_file(path: Path, what: str = "keyring") -> None:
    """Refuse a key file that group or others can read or write (naming the file and the fix)."""
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyringError(f"{what} {path} is accessible by group/others (mode {mode:04o}): refusing to use it; "
                           f"fix with `chmod 600 {path}` (and rotate the keys if others may have read it)")


def load(path: str | Path | None = None, document: str | dict | None = None) -> Keyring:
    """The keyring: `document` (a keyring JSON text or dict) if given, else the file at `path`.

    Nothing is created and nothing is read from the environment: callers pass what
    :class:`tasks.context.Settings` (or a Connection) says.

    Raises:
        KeyringError: no document and no path; the file does not exist (with the command that
            creates one); the file is readable by group/others; it is not a keyring.
    """
    if document is not None:
        try:
            parsed = json.loads(document) if isinstance(document, str) else document
        except json.JSONDecodeError as exc:
            raise KeyringError(f"keyring document is not valid JSON (line {exc.lineno})") from None
        return Keyring.from_doc(parsed)
    if not path:
        raise KeyringError("no keyring given (set LEPTONFLOW_KEYRING or pass --keyring)")
    path = Path(path)
    if not path.exists():
        raise KeyringError(f"no keyring at {path}; " + INIT_HINT.format(path=path))
    check_private_file(path)
    try:
        parsed = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KeyringError(f"keyring {path} is not valid JSON (line {exc.lineno})") from None
    return Keyring.from_doc(parsed, path=str(path))


# ---- a private file instead of the environment ------------------------------------------------
def private_dir() -> Path:
    """This user's folder for private keyring copies: ``/dev/shm/lf-keys-<uid>`` (memory, never written
    to disk) where there is one, else the temp folder; 0700 and owned by this user, or an error."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    folder = Path(base) / f"lf-keys-{os.getuid() if hasattr(os, 'getuid') else 0}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()) \
            or stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyringError(f"{folder} is not a private folder of this user (mode {stat.S_IMODE(st.st_mode):04o}, "
                           f"uid {st.st_uid}): refusing to put a keyring copy there")
    return folder


def private_copy(doc: dict[str, Any] | str) -> Path:
    """Write a keyring document to a 0600 file in this user's private folder; returns its path.

    This is how a keyring that arrives as a document (an Airflow Connection) reaches the
    processes a task starts (Dask workers, training ranks): they get the path, the document
    stays out of every environment. The file is named by a digest of the document, so every
    task of one keyring shares one copy (rewritten atomically, never accumulating).
    """
    text = doc if isinstance(doc, str) else json.dumps(doc, sort_keys=True)
    Keyring.from_doc(json.loads(text))  # refuse a malformed document before writing it anywhere
    path = private_dir() / f"keyring-{hashlib.sha256(text.encode()).hexdigest()[:24]}.json"
    if not path.exists() or path.read_bytes() != text.encode():
        write_private(path, text.encode())
    check_private_file(path)
    return path


# ---- rotation helpers -------------------------------------------------------------------------
def add_master_key(ring: Keyring, make_active: bool = True) -> str:
    """Add a fresh master key (returns its id); new writes use it when `make_active`."""
    kid = new_key_id(ring)
    ring.master_keys[kid] = new_key()
    if make_active:
        ring.active = kid
    log.info("added master key %s to keyring %s (active=%s)", kid, ring.path or "(document)", ring.active)
    return kid


def revoke(ring: Keyring, key_id: str) -> None:
    """Mark a master key revoked: files still wrapped by it can no longer be read."""
    if key_id not in ring.master_keys:
        raise KeyringError(f"master key {key_id!r} is not in the keyring {ring.path or '(document)'}")
    if key_id == ring.active and not ring.kms:  # with a KMS, the KMS key wraps new files, not `active`
        raise KeyringError(f"master key {key_id!r} is the active key; rotate to a new key before revoking it")
    ring.revoked.add(key_id)
    log.info("revoked master key %s in keyring %s", key_id, ring.path or "(document)")


def rotate_signing_key(ring: Keyring, keep_old_private: bool = False) -> str:
    """Make a new Ed25519 key active (returns its id); the old one keeps only its public half.

    Everything signed before stays verifiable with the public keys; export them again
    (``keys export-public``) so verifiers learn the new key.
    """
    old = ring.signing_keys.get(ring.signing_active)
    key = SigningKey.new()
    ring.signing_keys[key.key_id] = key
    ring.signing_active = key.key_id
    if old is not None and not keep_old_private:
        old.private = None
    log.info("signing key rotated in %s: %s active (was %s)", ring.path or "(document)", key.key_id,
             old.key_id if old else None)
    return key.key_id


# ---- leak scans -------------------------------------------------------------------------------
def _secrets(ring: Keyring) -> list[bytes]:
    out = list(ring.master_keys.values())
    out += [k.private for k in ring.signing_keys.values() if k.private is not None]
    if ring.legacy_hmac_key:
        out.append(ring.legacy_hmac_key)
    return out


def _b64_inner(key: bytes, urlsafe: bool) -> list[str]:
    """The base64 text of `key` at each of the 3 byte alignments inside a longer blob (only the
    characters that depend on `key` alone), so a key base64'd as part of a larger document is found."""
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    out = []
    for o in range(3):
        text = enc(b"\0" * o + key + b"\0\0\0").decode()
        out.append(text[-(-8 * o // 6):(8 * (o + len(key))) // 6])
    return out


def key_material_fingerprints(ring: Keyring) -> list[str]:
    """The text forms under which key material could leak: base64 (standard and URL-safe, at every
    alignment), hex (lower and upper case) of every master key, signing private key and legacy MAC key.

    For leak scans of logs, XCom, manifests and artifacts: none of these may appear anywhere.
    """
    out: list[str] = []
    for key in _secrets(ring):
        out += [base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode().rstrip("="),
                key.hex(), key.hex().upper(), *_b64_inner(key, False), *_b64_inner(key, True)]
    return sorted(set(out))


def secret_forms(ring: Keyring) -> list[bytes]:
    """Every form of every secret to scan bytes for: the raw key bytes and each text form."""
    return sorted({*_secrets(ring), *(s.encode() for s in key_material_fingerprints(ring))})


# ---- python -m tasks keys ---------------------------------------------------------------------
def cli(argv: list[str], default_path: str = "", kms: dict[str, Any] | None = None) -> int:
    """``python -m tasks keys init|show|export-public|rotate-signing|revoke [--keyring PATH]``.

    init: create the keyring (0600; an error if one exists); with ``--kms JSON`` or
    ``LEPTONFLOW_KMS`` it holds no master key: the KMS wraps. show: ids, never keys.
    export-public: the public signing keys (what ``verify-artifact --public-key`` takes).
    rotate-signing: a new Ed25519 key (old artifacts stay verifiable). revoke MK_ID: a master key.
    """
    p = argparse.ArgumentParser(prog="python -m tasks keys", description=cli.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["init", "show", "export-public", "rotate-signing", "revoke"])
    p.add_argument("key_id", nargs="?", help="revoke: the master key id")
    p.add_argument("--keyring", default=default_path or None, help="keyring file (default $LEPTONFLOW_KEYRING)")
    p.add_argument("--kms", help="init: a JSON KMS config, e.g. "
                                 '{"backend": "aws-kms", "key_id": "alias/leptonflow", "region": "eu-west-1"}')
    p.add_argument("--out", help="export-public: write here instead of stdout")
    args = p.parse_args(argv)
    if not args.keyring:
        p.error("--keyring is required (or set LEPTONFLOW_KEYRING)")
    path = Path(args.keyring)
    if args.action == "init":
        from tasks.security.kms import KmsConfig

        try:
            config = json.loads(args.kms) if args.kms else kms
        except json.JSONDecodeError as exc:
            p.error(f"--kms is not JSON: {exc}")
        if config:
            config = KmsConfig.from_dict(config, "--kms" if args.kms else "LEPTONFLOW_KMS").to_dict()
        ring = generate(path, kms=config)
        print(json.dumps({"keyring": str(path), "active": ring.wrap_key_id, "signing_key": ring.signing_active,
                          "fingerprint": ring.signing_key().fingerprint}, indent=1))
        return 0
    ring = load(path)
    if args.action == "show":
        print(json.dumps({"keyring": str(path), "active": ring.active, "master_keys": sorted(ring.master_keys),
                          "revoked": sorted(ring.revoked), "kms": ring.kms, **ring.public_doc()}, indent=1))
    elif args.action == "export-public":
        text = json.dumps(ring.public_doc(), indent=1) + "\n"
        if args.out:
            Path(args.out).write_text(text)
        else:
            sys.stdout.write(text)
    elif args.action == "rotate-signing":
        kid = rotate_signing_key(ring)
        ring.save()
        print(json.dumps({"keyring": str(path), "signing_key": kid,
                          "fingerprint": ring.signing_keys[kid].fingerprint}, indent=1))
    else:
        if not args.key_id:
            p.error("revoke needs the master key id")
        revoke(ring, args.key_id)
        ring.save()
        print(json.dumps({"keyring": str(path), "revoked": sorted(ring.revoked)}, indent=1))
    return 0
