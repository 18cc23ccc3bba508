"""Parquet Modular Encryption (PME) for lake files, key wrapping and master-key rotation.

How files are protected
    Every file gets fresh random data keys (AES-256, ``AES_GCM_V1``: pages and
    metadata are authenticated, so a flipped byte fails the read). The footer, the
    ordinary columns and the PII columns (``spec.pii_columns``) are under three
    different PME master-key identifiers: ``lf-footer``, ``lf-data``, ``lf-pii``.
    With double wrapping, data keys are wrapped by per-process key-encryption keys
    (KEKs) and only the KEKs are wrapped by our KMS client, :class:`RingKms`, with
    AES-256-GCM under a key derived (HKDF) from the keyring's active master key and
    the role: PII keys never share a wrapping key with the rest.

External key material
    Wrapped keys are not stored in the file footer but in a sidecar JSON next to
    it (``_KEY_MATERIAL_FOR_<file>.json``, pyarrow's naming). That is what makes
    rotation cheap: :func:`rotate_file` re-wraps the sidecar under the new master
    key and never touches the data file, so its sha256 in the manifest stays valid.
    Sidecars are not listed in the data manifests (steps commit only data files);
    their integrity is enforced cryptographically (every wrapped key is AES-GCM
    authenticated, with the role and key id as associated data, and a wrong data
    key fails the GCM check of the footer), and ``secure`` records their sha256 in
    its seal. Rotation leaves the manifests as they are by default: their digests
    feed downstream cache keys (split, train), and a key rotation must not make the
    next run recompute and retrain on identical data. So ``FileEntry.key_id`` is the
    key that wrapped the file when it was written; the key wrapping it now is in
    the sidecar (:func:`file_key_ids`), and ``secure`` records it in its seal
    (``rotate-keys --update-manifests`` rewrites and re-signs the entries instead).

What travels to Dask workers and training ranks
    :class:`LakeCrypto` is a small frozen dataclass (key id, keyring path, KMS config, PII
    column names): picklable and cheap. PME property objects cannot be pickled, so each task
    builds them where it writes or reads. Key bytes never travel, neither pickled nor in the
    environment: a worker loads the keyring from the path (a 0600 file: the embedded keyring,
    or the private copy a task made of a Connection's document, see
    :func:`tasks.security.keyring.private_copy`), or, with a KMS (:mod:`tasks.security.kms`),
    asks the KMS to unwrap and needs no keyring at all.

Rotation is :mod:`tasks.security.rotation` (``python -m tasks rotate-keys``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import fsspec
import pyarrow.fs as pafs
import pyarrow.parquet.encryption as pe
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tasks.errors import KeyringError, LeptonflowError
from tasks.io.lake import is_local
from tasks.security import keyring
from tasks.security.keyring import Keyring
from tasks.security.kms import KmsConfig, backend_for, is_kms_wrapped, kms_wrapped_key_id

log = logging.getLogger(__name__)

ROLE_FOOTER = "lf-footer"
ROLE_DATA = "lf-data"
ROLE_PII = "lf-pii"
ROLES = (ROLE_FOOTER, ROLE_DATA, ROLE_PII)
WRAP_FORMAT = "lf1"
KEY_MATERIAL_PREFIX = "_KEY_MATERIAL_FOR_"
CACHE_LIFETIME = timedelta(minutes=10)


class CryptoError(LeptonflowError, RuntimeError):
    """Encryption cannot be set up or a rotation fails; the message names the file or key id."""


# ---- key wrapping ----------------------------------------------------------------
def _role_key(master: bytes, role: str) -> bytes:
    """Per-role wrapping key: one master key, but PII/data/footer keys never share a wrapping key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"leptonflow-pme-role\0" + role.encode()).derive(
        master
    )


def _aad(role: str, key_id: str) -> bytes:
    return b"leptonflow-pme-v1\0" + role.encode() + b"\0" + key_id.encode()


def wrap(ring: Keyring, key_id: str, role: str, key_bytes: bytes) -> str:
    """AES-GCM-wrap a PME key under master key `key_id`: ``lf1:<key id>:<b64 nonce+ciphertext>``."""
    nonce = os.urandom(12)
    ct = AESGCM(_role_key(ring.master_key(key_id), role)).encrypt(nonce, bytes(key_bytes), _aad(role, key_id))
    return f"{WRAP_FORMAT}:{key_id}:{base64.b64encode(nonce + ct).decode()}"


def wrapped_key_id(wrapped: str) -> str:
    """The id of the master key (local) or KMS key that wrapped `wrapped`."""
    if is_kms_wrapped(wrapped):
        return kms_wrapped_key_id(wrapped)
    fmt, _, rest = wrapped.partition(":")
    key_id = rest.partition(":")[0]
    if fmt != WRAP_FORMAT or not key_id:
        raise KeyringError("wrapped key is not in leptonflow's format (written by another KMS client?)")
    return key_id


def unwrap(ring: Keyring, role: str, wrapped: str) -> bytes:
    if is_kms_wrapped(wrapped):
        if not ring.kms:
            raise KeyringError(f"the {role} key is wrapped by KMS key {kms_wrapped_key_id(wrapped)!r}, and this "
                               "process has no KMS configured (the keyring's kms section or LEPTONFLOW_KMS)")
        return backend_for(KmsConfig.from_dict(ring.kms)).unwrap(role, wrapped)
    key_id = wrapped_key_id(wrapped)
    master = ring.master_key(key_id)  # raises naming the key id when missing or revoked
    try:
        blob = base64.b64decode(wrapped.split(":", 2)[2], validate=True)
    except (IndexError, ValueError):
        raise KeyringError(f"wrapped {role} key under {key_id!r} is malformed (tampered key material?)") from None
    try:
        return AESGCM(_role_key(master, role)).decrypt(blob[:12], blob[12:], _aad(role, key_id))
    except InvalidTag:
        raise KeyringError(
            f"master key {key_id!r} does not unwrap the {role} key: wrong key material for this id "
            "or tampered key material"
        ) from None


class RingKms(pe.KmsClient):
    """PME KMS client: wraps with one key (a keyring master key, or the KMS key), unwraps with the one
    the wrapped text names (local keyring or KMS)."""

    def __init__(self, ring: Keyring, wrap_key_id: str):
        super().__init__()
        self.ring = ring
        self.wrap_key_id = wrap_key_id

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        if self.ring.kms and self.wrap_key_id == self.ring.wrap_key_id:
            return backend_for(KmsConfig.from_dict(self.ring.kms)).wrap(master_key_identifier, key_bytes)
        return wrap(self.ring, self.wrap_key_id, master_key_identifier, key_bytes)

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        return unwrap(self.ring, master_key_identifier, wrapped_key)


# ---- per-process keyring and factory caches ---------------------------------------
_LOCK = threading.Lock()
_FACTORIES: dict[tuple[str, str], pe.CryptoFactory] = {}


def load_ring(keyring_path: str = "", kms: KmsConfig | None = None) -> tuple[Keyring, str]:
    """The keyring at `keyring_path` (with `kms` as its KMS when given), and a fingerprint of its state.

    With no path, a KMS-only ring (no local key). Never creates a keyring: a worker that cannot
    see the task's keyring fails naming the path, it does not invent a key.
    """
    if keyring_path:
        ring = keyring.load(keyring_path)
    elif kms is not None:
        ring = Keyring(active="", master_keys={})
    else:
        raise KeyringError("no keyring path and no KMS config: this process cannot unwrap any key")
    if kms is not None:
        ring.kms = kms.to_dict()
    doc = json.dumps(ring.to_doc(), sort_keys=True).encode()
    return ring, hashlib.sha256(doc).hexdigest()


def _factory(ring: Keyring, fp: str, wrap_key_id: str) -> pe.CryptoFactory:
    """One CryptoFactory per keyring state and wrapping key: pyarrow caches KMS clients and KEKs
    inside the factory, so a changed keyring (new or revoked key) must never hit an old cache."""
    with _LOCK:
        fac = _FACTORIES.get((fp, wrap_key_id))
        if fac is None:
            if len(_FACTORIES) > 16:
                _FACTORIES.clear()
            fac = pe.CryptoFactory(lambda _cfg: RingKms(ring, wrap_key_id))
            _FACTORIES[(fp, wrap_key_id)] = fac
        return fac


def arrow_fs(url: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem + path for any fsspec URL (PME writes/reads sidecars through it)."""
    fs, path = fsspec.core.url_to_fs(url)
    if is_local(fs):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def key_material_url(url: str) -> str:
    """URL of a data file's external key material sidecar."""
    head, _, name = url.rpartition("/")
    return f"{head}/{KEY_MATERIAL_PREFIX}{name}.json"


def read_key_material(url: str) -> bytes:
    """The raw sidecar of a data file (its external key material)."""
    side = key_material_url(url)
    fs, path = fsspec.core.url_to_fs(side)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise CryptoError(f"{url}: no external key material ({side} is missing)") from None


def file_key_ids(url: str, material: bytes | None = None) -> set[str]:
    """Master key ids that wrap a file's keys, read from its sidecar (no key needed)."""
    raw = read_key_material(url) if material is None else material
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise CryptoError(f"{key_material_url(url)}: unreadable key material: {exc}") from None
    ids: set[str] = set()
    for value in doc.values():
        try:
            mat = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            continue
        if isinstance(mat, dict) and "masterKeyID" in mat:
            wrapped = mat.get("wrappedKEK") if mat.get("doubleWrapping") else mat.get("wrappedDEK")
            if wrapped:
                try:
                    ids.add(wrapped_key_id(wrapped))
                except KeyringError as exc:
                    raise CryptoError(f"{key_material_url(url)}: {exc}") from None
    return ids


# ---- the object steps use -----------------------------------------------------------
@dataclass(frozen=True)
class LakeCrypto:
    """Picklable ParquetCrypto (see tasks.io.parquet): ids and locations only, never key bytes."""

    key_id: str  # key that wraps new files' keys (the keyring's active key or the KMS key when made)
    keyring_path: str = ""  # a 0600 keyring file; "" with a KMS and no local key
    pii_columns: tuple[str, ...] = ()
    double_wrapping: bool = True
    kms: KmsConfig | None = None  # the KMS that wraps new files (no secret)

    def _ring(self) -> tuple[Keyring, str]:
        ring, fp = load_ring(self.keyring_path, self.kms)
        if self.key_id != ring.wrap_key_id and self.key_id not in ring.master_keys:
            raise KeyringError(
                f"master key {self.key_id!r} (active when the task started) is not in the keyring "
                f"{ring.path or '(KMS only)'} seen by this process"
            )
        return ring, fp

    def encryption_config(self, columns: list[str], external: bool = True) -> pe.EncryptionConfiguration:
        pii = [c for c in columns if c in set(self.pii_columns)]
        data = [c for c in columns if c not in set(self.pii_columns)]
        column_keys = {role: cols for role, cols in ((ROLE_DATA, data), (ROLE_PII, pii)) if cols}
        return pe.EncryptionConfiguration(
            footer_key=ROLE_FOOTER,
            column_keys=column_keys,  # every column listed: none is left in plaintext
            encryption_algorithm="AES_GCM_V1",
            plaintext_footer=False,
            double_wrapping=self.double_wrapping,
            cache_lifetime=CACHE_LIFETIME,
            internal_key_material=not external,
            data_key_length_bits=256,
        )

    def encryption_properties(self, columns: list[str], url: str | None = None) -> Any:
        """PME properties for writing one file (external key material next to `url` when given)."""
        ring, fp = self._ring()
        if self.key_id != ring.wrap_key_id or not ring.kms:
            ring.master_key(self.key_id)  # fails, naming the key id, when it was revoked meanwhile
        fac = _factory(ring, fp, self.key_id)
        config = self.encryption_config(list(columns), external=url is not None)
        if url is None:
            return fac.file_encryption_properties(pe.KmsConnectionConfig(), config)
        fs, path = arrow_fs(url)
        return fac.file_encryption_properties(pe.KmsConnectionConfig(), config, parquet_file_path=path, filesystem=fs)

    def decryption_properties(self, url: str | None = None) -> Any:
        ring, fp = load_ring(self.keyring_path, self.kms)
        fac = _factory(ring, fp, ring.wrap_key_id)
        config = pe.DecryptionConfiguration(cache_lifetime=CACHE_LIFETIME)
        if url is None:
            return fac.file_decryption_properties(pe.KmsConnectionConfig(), config)
        fs, path = arrow_fs(url)
        return fac.file_decryption_properties(pe.KmsConnectionConfig(), config, parquet_file_path=path, filesystem=fs)


def for_context(ctx: Any) -> LakeCrypto:
    """The encryption of a step's lake writes: the keyring's active key (or its KMS key), PII columns of the spec.

    Workers get the keyring's path when it holds master keys (files wrapped by them stay readable),
    and the KMS config when a KMS wraps.
    """
    return for_ring(ctx.keys, tuple(ctx.spec.pii_columns))


def for_ring(ring: Keyring, pii_columns: tuple[str, ...] = ()) -> LakeCrypto:
    kms = KmsConfig.from_dict(ring.kms, f"keyring {ring.path or '(document)'}: kms") if ring.kms else None
    if kms is None:
        ring.master_key(ring.active)  # an active key that is revoked is an error, named
    if ring.master_keys and not ring.path:
        raise KeyringError("a keyring document must be written to a private file before workers can use it "
                           "(tasks.security.keyring.private_copy)")
    return LakeCrypto(key_id=ring.wrap_key_id, keyring_path=ring.path if ring.master_keys else "",
                      pii_columns=pii_columns, kms=kms)


def known_key_ids(ring: Keyring) -> set[str]:
    """Key ids a file of this lake may be wrapped by: the keyring's unrevoked master keys and its KMS key."""
    return (set(ring.master_keys) - set(ring.revoked)) | ({ring.wrap_key_id} if ring.kms else set())


# ---- rotation -----------------------------------------------------------------------
def rotate_file(url: str, ring: Keyring, new_key_id: str, double_wrapping: bool = True) -> None:
    """Re-wrap one file's keys under `new_key_id` (sidecar only; the data file is untouched)."""
    fac = pe.CryptoFactory(lambda _cfg: RingKms(ring, new_key_id))  # fresh: no cached KEKs
    fs, path = arrow_fs(url)
    try:
        fac.rotate_master_keys(pe.KmsConnectionConfig(), path, filesystem=fs, double_wrapping=double_wrapping)
    except KeyringError as exc:
        raise CryptoError(f"{url}: cannot re-wrap keys: {exc}") from exc
    except OSError as exc:
        raise CryptoError(f"{url}: cannot re-wrap keys: {exc}") from exc
    log.debug("re-wrapped %s under %s", url, new_key_id)
