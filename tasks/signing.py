"""Manifest signatures: HMAC-SHA256 over the manifest's canonical payload."""

from __future__ import annotations

import hashlib
import hmac

from tasks.keyring import Keyring


def sign(key: bytes, payload: bytes) -> str:
    return "hmac-sha256:" + hmac.new(key, payload, hashlib.sha256).hexdigest()


def verify(key: bytes, payload: bytes, signature: str) -> bool:
    return bool(signature) and hmac.compare_digest(sign(key, payload), signature)


def signer_for(ring: Keyring):
    return lambda payload: sign(ring.signing_key, payload)


def verifier_for(ring: Keyring):
    return lambda payload, sig: verify(ring.signing_key, payload, sig)
