"""Key material: master keys for Parquet encryption and the manifest signing key.

Keys never appear in code, logs, XCom or manifests; only their ids do. Sources,
first match wins:

1. ``LEPTONFLOW_KEYRING_JSON``: the keyring document itself (what an Airflow
   Connection or secrets backend hands to the task as an env var / extra).
2. a keyring file (``LEPTONFLOW_KEYRING`` or the path given), generated on
   first use with mode 0600: the embedded default.

Document format: ``{"active": "<id>", "master_keys": {"<id>": "<b64>"},
"revoked": ["<id>"], "signing_key": "<b64>"}`` (optional ``"signing_key_id"``;
when absent it is derived from the key, see :meth:`Keyring.signing_key_id`).

Rotation (``python -m tasks rotate-keys``, :mod:`tasks.security.crypto`) adds a master key
with :func:`add_master_key` and makes it active; old keys stay for reading until
:func:`revoke` marks them revoked, after which any use names the key id in a
:class:`tasks.errors.KeyringError`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from tasks.errors import KeyringError

log = logging.getLogger(__name__)


@dataclass
class Keyring:
    active: str
    master_keys: dict[str, bytes]
    signing_key: bytes
    revoked: set[str] = field(default_factory=set)
    path: str = ""
    signing_id: str = ""

    def __repr__(self) -> str:  # never print key bytes
        return f"Keyring(active={self.active!r}, key_ids={sorted(self.master_keys)}, path={self.path!r})"

    def master_key(self, key_id: str) -> bytes:
        if key_id in self.revoked:
            raise KeyringError(f"master key {key_id!r} is revoked")
        if key_id not in self.master_keys:
            raise KeyringError(f"master key {key_id!r} is not in the keyring {self.path or '(env)'}")
        return self.master_keys[key_id]

    @property
    def signing_key_id(self) -> str:
        """A public id for the signing key (names it in signatures); derived one-way when not set."""
        if self.signing_id:
            return self.signing_id
        return "sk-" + hashlib.sha256(b"leptonflow-signing-key-id\0" + self.signing_key).hexdigest()[:12]

    def to_doc(self) -> dict:
        enc = lambda b: base64.b64encode(b).decode()  # noqa: E731
        doc = {
            "active": self.active,
            "master_keys": {k: enc(v) for k, v in self.master_keys.items()},
            "revoked": sorted(self.revoked),
            "signing_key": enc(self.signing_key),
        }
        if self.signing_id:
            doc["signing_key_id"] = self.signing_id
        return doc

    @classmethod
    def from_doc(cls, doc: dict, path: str = "") -> Keyring:
        dec = base64.b64decode
        try:
            return cls(
                active=doc["active"],
                master_keys={k: dec(v) for k, v in doc["master_keys"].items()},
                signing_key=dec(doc["signing_key"]),
                revoked=set(doc.get("revoked", [])),
                path=path,
                signing_id=str(doc.get("signing_key_id", "")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise KeyringError(f"keyring {path or '(env)'} is malformed: missing or bad field {exc}") from None

    def save(self, path: str | Path | None = None) -> None:
        if not (path or self.path):
            raise KeyringError("this keyring came from LEPTONFLOW_KEYRING_JSON: save it through its secrets backend")
        path = Path(path or self.path)
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        # a fresh, exclusive temp file: created 0600 from the start, never one left by someone else
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.to_doc(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        os.chmod(path, 0o600)


def new_key() -> bytes:
    return secrets.token_bytes(32)  # AES-256


def generate(path: str | Path) -> Keyring:
    """Create a keyring file (0600). If another process wins the race, its keyring is used:
    two tasks starting at once must never encrypt under two different keyrings."""
    path = Path(path)
    kid = new_key_id()
    ring = Keyring(active=kid, master_keys={kid: new_key()}, signing_key=new_key(), path=str(path))
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.new")
    ring.save(tmp)
    try:
        os.link(tmp, path)  # atomic create-if-absent
    except FileExistsError:
        log.info("keyring %s was created concurrently; using it", path)
        return load(path, create=False, use_env=False)
    finally:
        tmp.unlink(missing_ok=True)
    ring.path = str(path)
    log.info("generated a new keyring at %s (active master key id %s)", path, kid)
    return ring


def new_key_id(ring: Keyring | None = None) -> str:
    while True:
        kid = "mk-" + secrets.token_hex(4)
        if ring is None or kid not in ring.master_keys:
            return kid


def add_master_key(ring: Keyring, make_active: bool = True) -> str:
    """Add a fresh master key (returns its id); new writes use it when `make_active`."""
    kid = new_key_id(ring)
    ring.master_keys[kid] = new_key()
    if make_active:
        ring.active = kid
    log.info("added master key %s to keyring %s (active=%s)", kid, ring.path or "(env)", ring.active)
    return kid


def revoke(ring: Keyring, key_id: str) -> None:
    """Mark a master key revoked: files still wrapped by it can no longer be read."""
    if key_id not in ring.master_keys:
        raise KeyringError(f"master key {key_id!r} is not in the keyring {ring.path or '(env)'}")
    if key_id == ring.active:
        raise KeyringError(f"master key {key_id!r} is the active key; rotate to a new key before revoking it")
    ring.revoked.add(key_id)
    log.info("revoked master key %s in keyring %s", key_id, ring.path or "(env)")


def key_material_fingerprints(ring: Keyring) -> list[str]:
    """The strings under which key material could leak (b64 and hex of every key).

    For leak scans of logs, XCom, manifests and artifacts: none of these may appear anywhere.
    """
    out: list[str] = []
    for key in [*ring.master_keys.values(), ring.signing_key]:
        out += [base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode().rstrip("="), key.hex()]
    return sorted(set(out))


def default_path() -> Path:
    """The embedded default: <LEPTONFLOW_HOME or ./var>/keys/keyring.json (as tasks.context uses)."""
    home = os.environ.get("LEPTONFLOW_HOME") or str(Path(__file__).resolve().parents[2] / "var")
    return Path(home) / "keys" / "keyring.json"


def load(path: str | Path | None = None, create: bool = True, use_env: bool = True,
         document: str | None = None) -> Keyring:
    """The keyring: `document` (a keyring JSON text) if given, else the file at `path`.

    `use_env`: a process without a StepContext (a Dask worker, a training rank) finds the
    keyring as its task left it: ``LEPTONFLOW_KEYRING_JSON``, else ``LEPTONFLOW_KEYRING``.
    Steps pass what :class:`tasks.context.Settings` read instead.
    """
    doc = document or (os.environ.get("LEPTONFLOW_KEYRING_JSON") if use_env else None)
    if doc:
        try:
            parsed = json.loads(doc)
        except json.JSONDecodeError as exc:
            raise KeyringError(f"LEPTONFLOW_KEYRING_JSON is not valid JSON (line {exc.lineno})") from None
        return Keyring.from_doc(parsed)
    path = Path(path or (os.environ.get("LEPTONFLOW_KEYRING") if use_env else None) or default_path())
    if not path.exists():
        if not create:
            raise KeyringError(f"no keyring at {path}")
        return generate(path)
    try:
        parsed = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KeyringError(f"keyring {path} is not valid JSON (line {exc.lineno})") from None
    return Keyring.from_doc(parsed, path=str(path))
