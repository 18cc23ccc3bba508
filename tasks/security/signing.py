"""Signatures: Ed25519 with a domain tag and a key id, for lake manifests, artifacts and pointers.

A signature reads ``ed25519:<domain>:<key id>:<b64 signature>`` and signs
``b"leptonflow-signature/1\\0" + domain + b"\\0" + key id + b"\\0" + payload``. The domain says
what kind of object was signed (:data:`LAKE` manifest, :data:`ARTIFACT` manifest, :data:`POINTER`);
a verifier checks against the domain it expects, so a signed lake manifest never passes as an
artifact, nor an artifact manifest as a ``latest`` pointer (the label in the text only makes the
error clear: the signed bytes carry the domain). The key id (``ed-<16 hex>``, derived from the
public key) picks the public key; verifying needs public keys only
(:meth:`PublicKeys.from_file`: what ``python -m tasks keys export-public`` writes), and a rotated
signing key stays verifiable because its public half stays in the keyring and in the export.

Cost (bench/signing.py): signing and verifying a lake manifest with Ed25519 takes tens of
microseconds; a step reads and commits a handful of manifests, so lake manifests use Ed25519 too.

Legacy: manifests signed before this (``hmac-sha256:<key id>:<hex>``, MAC over a manifest domain;
``hmac-sha256:<hex>``, MAC over the payload alone) verify as lake manifests only, and only
with a keyring that still holds that MAC key (``legacy_hmac_key``); artifacts signed by HMAC verify
only when the caller asks for it explicitly (``allow_legacy_hmac``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tasks.errors import KeyringError
from tasks.security.keyring import PUBLIC_FORMAT, Keyring, public_key_fingerprint, public_key_id

LAKE = "lake-manifest"
ARTIFACT = "artifact-manifest"
POINTER = "pointer"
DOMAINS = (LAKE, ARTIFACT, POINTER)
ED_PREFIX = "ed25519:"
HMAC_PREFIX = "hmac-sha256:"
_CONTEXT = b"leptonflow-signature/1\0"
_LEGACY_DOMAIN = b"leptonflow-manifest-v2\0"


def _message(domain: str, key_id: str, payload: bytes) -> bytes:
    return _CONTEXT + domain.encode() + b"\0" + key_id.encode() + b"\0" + payload


def parse(signature: str) -> tuple[str, str, str, str]:
    """(scheme, domain, key id, value) of a signature; scheme '' when it is in no known form."""
    if signature.startswith(ED_PREFIX):
        parts = signature[len(ED_PREFIX):].split(":")
        if len(parts) == 3:
            return "ed25519", parts[0], parts[1], parts[2]
    elif signature.startswith(HMAC_PREFIX):
        body = signature[len(HMAC_PREFIX):]
        key_id, _, mac = body.rpartition(":")
        return "hmac", LAKE, key_id, mac
    return "", "", "", ""


def signature_key_id(signature: str) -> str:
    """The signing key id named in a signature ('' when it names none)."""
    return parse(signature or "")[2]


@dataclass(frozen=True)
class Signer:
    """Signs payloads of one domain with one Ed25519 key; callable as a Lake's ``signer``.

    Never pickled: a signer stays in the process that holds the keyring.
    """

    domain: str
    key_id: str
    _private: Ed25519PrivateKey = field(repr=False)

    def __call__(self, payload: bytes) -> str:
        sig = self._private.sign(_message(self.domain, self.key_id, payload))
        return f"{ED_PREFIX}{self.domain}:{self.key_id}:{base64.b64encode(sig).decode()}"

    def __reduce__(self):
        raise KeyringError("a Signer holds a private key and is never pickled")


@dataclass(frozen=True)
class PublicKeys:
    """The public keys a verifier trusts, by key id (plus a legacy MAC key when a keyring gave one)."""

    keys: Mapping[str, bytes]  # key id -> raw 32-byte Ed25519 public key
    legacy_hmac_key: bytes | None = field(default=None, repr=False)
    source: str = ""

    def __reduce__(self):
        if self.legacy_hmac_key:
            raise KeyringError("public keys with a legacy MAC key are never pickled")
        return (PublicKeys, (dict(self.keys), None, self.source))

    @classmethod
    def from_ring(cls, ring: Keyring) -> PublicKeys:
        return cls({k.key_id: k.public for k in ring.signing_keys.values()}, ring.legacy_hmac_key,
                   ring.path or "(keyring document)")

    @classmethod
    def from_file(cls, path: str | Path) -> PublicKeys:
        """The keys of a ``keys export-public`` JSON file, or of one PEM public key (SubjectPublicKeyInfo)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyringError(f"public key file {path}: {exc.strerror}") from None
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                key = serialization.load_pem_public_key(data)
            except ValueError as exc:
                raise KeyringError(f"public key file {path}: not a PEM public key ({exc})") from None
            if not isinstance(key, Ed25519PublicKey):
                raise KeyringError(f"public key file {path}: not an Ed25519 key")
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return cls({public_key_id(raw): raw}, source=str(path))
        try:
            doc = json.loads(data)
            if "master_keys" in doc or '"private"' in data.decode():
                raise ValueError("it holds private key material (a keyring?): give the public key file "
                                 "`python -m tasks keys export-public` writes")
            if doc.get("format") != PUBLIC_FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, not {PUBLIC_FORMAT!r}")
            keys = {}
            for kid, k in doc["keys"].items():
                raw = base64.b64decode(k["public_key"], validate=True)
                if public_key_id(raw) != kid or len(raw) != 32:
                    raise ValueError(f"key {kid!r} does not match its public key")
                keys[kid] = raw
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise KeyringError(f"public key file {path}: {exc}") from None
        return cls(keys, source=str(path))

    def fingerprints(self) -> dict[str, str]:
        return {kid: public_key_fingerprint(raw) for kid, raw in self.keys.items()}


@dataclass(frozen=True)
class Verifier:
    """Checks signatures of one domain; callable as a Lake's ``verifier`` (True when valid)."""

    public: PublicKeys
    domain: str
    allow_legacy_hmac: bool = False

    def __call__(self, payload: bytes, signature: str) -> bool:
        return self.problem(payload, signature) is None

    def problem(self, payload: bytes, signature: str) -> str | None:
        """Why `signature` is not a valid signature of `payload` in this domain, or None when it is."""
        scheme, domain, key_id, value = parse(signature or "")
        if not scheme:
            return "unsigned" if not signature else "not a leptonflow signature"
        if scheme == "hmac":
            return self._legacy(payload, key_id, value)
        if domain != self.domain:
            return f"signed as a {domain or '?'} object, not as a {self.domain} (domain separation)"
        raw = self.public.keys.get(key_id)
        if raw is None:
            return f"signed with key {key_id!r}, which is not among the trusted public keys ({self.public.source})"
        try:
            sig = base64.b64decode(value, validate=True)
            Ed25519PublicKey.from_public_bytes(raw).verify(sig, _message(self.domain, key_id, payload))
        except (InvalidSignature, ValueError, binascii.Error):
            return f"Ed25519 signature of key {key_id!r} does not match (edited after signing)"
        return None

    def _legacy(self, payload: bytes, key_id: str, mac: str) -> str | None:
        if self.domain != LAKE and not self.allow_legacy_hmac:
            return f"legacy HMAC signature: a {self.domain} must be signed with Ed25519"
        key = self.public.legacy_hmac_key
        if not key:
            return "legacy HMAC signature, and no legacy MAC key to check it (public keys cannot)"
        body = _LEGACY_DOMAIN + key_id.encode() + b"\0" + payload if key_id else payload
        if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), mac):
            return "legacy HMAC signature does not match (edited, or signed with another key)"
        return None


def signer_for(ring: Keyring, domain: str = LAKE) -> Signer:
    """A signer of `domain` with the keyring's active Ed25519 key."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown signature domain {domain!r}")
    key = ring.signing_key()
    return Signer(domain, key.key_id, Ed25519PrivateKey.from_private_bytes(key.private))


def verifier_for(keys: Keyring | PublicKeys, domain: str = LAKE, allow_legacy_hmac: bool = False) -> Verifier:
    """A verifier of `domain` trusting every signing key of a keyring (active and retired) or a public key set."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown signature domain {domain!r}")
    public = keys if isinstance(keys, PublicKeys) else PublicKeys.from_ring(keys)
    return Verifier(public, domain, allow_legacy_hmac)
