"""Key material: master keys for Parquet encryption and the manifest signing key.

Keys never appear in code, logs, XCom or manifests; only their ids do. Sources,
first match wins:

1. ``LEPTONFLOW_KEYRING_JSON``: the keyring document itself (what an Airflow
   Connection or secrets backend hands to the task as an env var / extra).
2. a keyring file (``LEPTONFLOW_KEYRING`` or the path given), generated on
   first use with mode 0600: the embedded default.

Document format: ``{"active": "<id>", "master_keys": {"<id>": "<b64>"},
"revoked": ["<id>"], "signing_key": "<b64>"}``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class KeyError_(LookupError):
    """A key is missing, unknown or revoked; the message names the key id, never the key."""


@dataclass
class Keyring:
    active: str
    master_keys: dict[str, bytes]
    signing_key: bytes
    revoked: set[str] = field(default_factory=set)
    path: str = ""

    def __repr__(self) -> str:  # never print key bytes
        return f"Keyring(active={self.active!r}, key_ids={sorted(self.master_keys)}, path={self.path!r})"

    def master_key(self, key_id: str) -> bytes:
        if key_id in self.revoked:
            raise KeyError_(f"master key {key_id!r} is revoked")
        if key_id not in self.master_keys:
            raise KeyError_(f"master key {key_id!r} is not in the keyring {self.path or '(env)'}")
        return self.master_keys[key_id]

    def to_doc(self) -> dict:
        enc = lambda b: base64.b64encode(b).decode()  # noqa: E731
        return {
            "active": self.active,
            "master_keys": {k: enc(v) for k, v in self.master_keys.items()},
            "revoked": sorted(self.revoked),
            "signing_key": enc(self.signing_key),
        }

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
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise KeyError_(f"keyring {path or '(env)'} is malformed: missing or bad field {exc}") from None

    def save(self, path: str | Path | None = None) -> None:
        path = Path(path or self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.to_doc(), fh)
        os.replace(tmp, path)
        os.chmod(path, 0o600)


def new_key() -> bytes:
    return secrets.token_bytes(32)  # AES-256


def generate(path: str | Path) -> Keyring:
    kid = "mk-" + secrets.token_hex(4)
    ring = Keyring(active=kid, master_keys={kid: new_key()}, signing_key=new_key(), path=str(path))
    ring.save(path)
    log.info("generated a new keyring at %s (active master key id %s)", path, kid)
    return ring


def load(path: str | Path | None = None, create: bool = True) -> Keyring:
    doc = os.environ.get("LEPTONFLOW_KEYRING_JSON")
    if doc:
        return Keyring.from_doc(json.loads(doc))
    path = Path(path or os.environ.get("LEPTONFLOW_KEYRING") or Path.cwd() / ".keys" / "keyring.json")
    if not path.exists():
        if not create:
            raise KeyError_(f"no keyring at {path}")
        return generate(path)
    return Keyring.from_doc(json.loads(path.read_text()), path=str(path))
