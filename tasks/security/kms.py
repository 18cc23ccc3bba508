"""Key wrapping backends behind PME's KMS client: the local keyring, or a real KMS.

PME asks its KMS client for two things only: wrap a key-encryption key (KEK) under a master
key, and unwrap it again (:class:`tasks.security.crypto.RingKms`). A backend does exactly that;
the wrapped text names the backend and key, so a reader picks the backend from the file:

``lf1:<master key id>:<b64 nonce + AES-GCM ciphertext>``
    :class:`tasks.security.crypto` with the keyring's own master keys (the embedded default).
``aws1:<quoted KMS key id>:<b64 CiphertextBlob>``
    :class:`AwsKms`: ``kms:Encrypt`` / ``kms:Decrypt`` of AWS KMS (or any server speaking its
    protocol). The master key never leaves the KMS; the encryption context
    ``{"leptonflow:role": <footer|data|pii>}`` binds each wrapped key to its PME role.

A worker gets a :class:`KmsConfig` (key id, region, endpoint: no secret) and asks the KMS to
unwrap with credentials from the usual provider chain (instance/task role, ``AWS_*`` variables
of its own deployment, a profile): leptonflow never handles KMS credentials. pyarrow caches
unwrapped KEKs per process (``cache_lifetime``), so a worker calls the KMS a few times per file
role, not per page.

Next backend: HashiCorp Vault Transit fits the same two calls (``transit/encrypt/<key>`` and
``transit/decrypt/<key>`` with ``context`` = the role, wrapped text ``vault1:<key>:<vault:vN:...>``);
its ``rotate`` + ``rewrap`` and ``min_decryption_version`` are the rotation and revocation.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from tasks.errors import KeyringError

AWS_FORMAT = "aws1"
BACKENDS = ("aws-kms",)
ROLE_CONTEXT = "leptonflow:role"


@dataclass(frozen=True)
class KmsConfig:
    """Where the KMS is and which key wraps: picklable, no secret (credentials come from the provider chain)."""

    backend: str
    key_id: str  # key id, ARN or alias ("alias/leptonflow")
    region: str = ""
    endpoint_url: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "kms config") -> KmsConfig:
        if not isinstance(d, dict):
            raise KeyringError(f"{where}: must be a JSON object")
        unknown = set(d) - {"backend", "key_id", "region", "endpoint_url"}
        if unknown:
            raise KeyringError(f"{where}: unknown field(s) {sorted(unknown)} (credentials never go here: "
                               "the KMS client uses the provider chain)")
        backend = d.get("backend", "")
        if backend not in BACKENDS:
            raise KeyringError(f"{where}: backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if not d.get("key_id"):
            raise KeyringError(f"{where}: no key_id")
        return cls(backend=backend, key_id=str(d["key_id"]), region=str(d.get("region") or ""),
                   endpoint_url=str(d.get("endpoint_url") or ""))

    def to_dict(self) -> dict[str, str]:
        return {"backend": self.backend, "key_id": self.key_id, "region": self.region,
                "endpoint_url": self.endpoint_url}


def is_kms_wrapped(wrapped: str) -> bool:
    return wrapped.startswith(AWS_FORMAT + ":")


def kms_wrapped_key_id(wrapped: str) -> str:
    fmt, _, rest = wrapped.partition(":")
    key_id = unquote(rest.partition(":")[0])
    if fmt != AWS_FORMAT or not key_id:
        raise KeyringError("wrapped key is not in leptonflow's AWS KMS format")
    return key_id


_CLIENTS: dict[KmsConfig, Any] = {}
_LOCK = threading.Lock()


class AwsKms:
    """Wrap/unwrap through AWS KMS Encrypt/Decrypt; the master key stays in the KMS."""

    def __init__(self, config: KmsConfig):
        self.config = config

    @property
    def client(self) -> Any:
        with _LOCK:  # boto3 clients are thread-safe once made; making them is not
            client = _CLIENTS.get(self.config)
            if client is None:
                import boto3

                session = boto3.session.Session()
                client = session.client("kms", region_name=self.config.region or None,
                                        endpoint_url=self.config.endpoint_url or None)
                _CLIENTS[self.config] = client
            return client

    def _call(self, op: str, key_id: str, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise KeyringError(f"KMS key {key_id!r}: {op} refused ({code})") from None
        except BotoCoreError as exc:
            raise KeyringError(f"KMS key {key_id!r}: {op} failed: {type(exc).__name__}: {exc}") from None

    def wrap(self, role: str, key_bytes: bytes) -> str:
        out = self._call("encrypt", self.config.key_id, KeyId=self.config.key_id, Plaintext=bytes(key_bytes),
                         EncryptionContext={ROLE_CONTEXT: role})
        return f"{AWS_FORMAT}:{quote(self.config.key_id, safe='')}:{base64.b64encode(out['CiphertextBlob']).decode()}"

    def unwrap(self, role: str, wrapped: str) -> bytes:
        key_id = kms_wrapped_key_id(wrapped)
        try:
            blob = base64.b64decode(wrapped.split(":", 2)[2], validate=True)
        except (IndexError, ValueError):
            raise KeyringError(f"wrapped {role} key under KMS key {key_id!r} is malformed (tampered?)") from None
        out = self._call("decrypt", key_id, KeyId=key_id, CiphertextBlob=blob,
                         EncryptionContext={ROLE_CONTEXT: role})
        return out["Plaintext"]


def backend_for(config: KmsConfig) -> AwsKms:
    if config.backend == "aws-kms":
        return AwsKms(config)
    raise KeyringError(f"KMS backend {config.backend!r} is not supported")
