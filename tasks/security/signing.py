"""Manifest signatures: HMAC-SHA256 over the manifest's canonical payload.

Signatures written by :func:`signer_for` read ``hmac-sha256:<signing key id>:<hex>``;
the MAC covers a domain tag, the key id and the payload, so a signature cannot be
replayed as another kind of object nor attributed to another key. The older form
``hmac-sha256:<hex>`` (MAC over the payload alone) still verifies, so manifests
committed before this change stay readable.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from tasks.security.keyring import Keyring

PREFIX = "hmac-sha256:"
DOMAIN = b"leptonflow-manifest-v2\0"


def sign(key: bytes, payload: bytes) -> str:
    """Legacy form (no key id); kept for callers and for manifests already written."""
    return PREFIX + hmac.new(key, payload, hashlib.sha256).hexdigest()


def verify(key: bytes, payload: bytes, signature: str) -> bool:
    """Check either signature form against `key`."""
    if not signature or not signature.startswith(PREFIX):
        return False
    body = signature[len(PREFIX):]
    if ":" in body:
        key_id, _, _ = body.partition(":")
        return hmac.compare_digest(sign_with_id(key, key_id, payload), signature)
    return hmac.compare_digest(sign(key, payload), signature)


def sign_with_id(key: bytes, key_id: str, payload: bytes) -> str:
    if ":" in key_id:
        raise ValueError(f"signing key id {key_id!r} must not contain ':'")
    mac = hmac.new(key, DOMAIN + key_id.encode() + b"\0" + payload, hashlib.sha256).hexdigest()
    return f"{PREFIX}{key_id}:{mac}"


def signature_key_id(signature: str) -> str:
    """The signing key id named in a signature ('' for the legacy form)."""
    body = signature[len(PREFIX):] if signature.startswith(PREFIX) else ""
    return body.partition(":")[0] if ":" in body else ""


def signer_for(ring: Keyring) -> Callable[[bytes], str]:
    key_id = ring.signing_key_id
    return lambda payload: sign_with_id(ring.signing_key, key_id, payload)


def verifier_for(ring: Keyring) -> Callable[[bytes, str], bool]:
    key_id = ring.signing_key_id

    def _verify(payload: bytes, signature: str) -> bool:
        named = signature_key_id(signature or "")
        if named and named != key_id:  # signed by another key: no MAC can match
            return False
        return verify(ring.signing_key, payload, signature)

    return _verify
