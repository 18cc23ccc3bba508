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

What travels to Dask workers
    :class:`LakeCrypto` is a small frozen dataclass (key id, keyring location, PII
    column names): picklable and cheap. PME property objects cannot be pickled, so
    each task builds them where it writes or reads. Key bytes never travel: the
    worker loads the keyring itself (``LEPTONFLOW_KEYRING_JSON`` or the file), so
    remote workers need the same secret mounted.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
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
    fmt, _, rest = wrapped.partition(":")
    key_id = rest.partition(":")[0]
    if fmt != WRAP_FORMAT or not key_id:
        raise KeyringError("wrapped key is not in leptonflow's format (written by another KMS client?)")
    return key_id


def unwrap(ring: Keyring, role: str, wrapped: str) -> bytes:
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
    """PME KMS client backed by our keyring: wraps with one master key, unwraps with the one named."""

    def __init__(self, ring: Keyring, wrap_key_id: str):
        super().__init__()
        self.ring = ring
        self.wrap_key_id = wrap_key_id

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        return wrap(self.ring, self.wrap_key_id, master_key_identifier, key_bytes)

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        return unwrap(self.ring, master_key_identifier, wrapped_key)


# ---- per-process keyring and factory caches ---------------------------------------
_LOCK = threading.Lock()
_FACTORIES: dict[tuple[str, str], pe.CryptoFactory] = {}


def load_ring(keyring_path: str = "") -> tuple[Keyring, str]:
    """The keyring as this process sees it (env doc wins over the file) and a fingerprint of it.

    Never creates a keyring: a worker that cannot see the task's keyring must fail, not
    invent a new key.
    """
    ring = keyring.load(keyring_path or None, create=False)
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

    key_id: str  # master key that wraps new files' keys (the keyring's active key when made)
    keyring_path: str = ""  # "" = LEPTONFLOW_KEYRING_JSON / default location on the worker
    pii_columns: tuple[str, ...] = ()
    double_wrapping: bool = True

    def _ring(self) -> tuple[Keyring, str]:
        ring, fp = load_ring(self.keyring_path)
        if self.key_id not in ring.master_keys:
            raise KeyringError(
                f"master key {self.key_id!r} (active when the task started) is not in the keyring "
                f"{ring.path or '(LEPTONFLOW_KEYRING_JSON)'} seen by this process"
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
        ring.master_key(self.key_id)  # fails, naming the key id, when it was revoked meanwhile
        fac = _factory(ring, fp, self.key_id)
        config = self.encryption_config(list(columns), external=url is not None)
        if url is None:
            return fac.file_encryption_properties(pe.KmsConnectionConfig(), config)
        fs, path = arrow_fs(url)
        return fac.file_encryption_properties(pe.KmsConnectionConfig(), config, parquet_file_path=path, filesystem=fs)

    def decryption_properties(self, url: str | None = None) -> Any:
        ring, fp = load_ring(self.keyring_path)
        fac = _factory(ring, fp, ring.active)
        config = pe.DecryptionConfiguration(cache_lifetime=CACHE_LIFETIME)
        if url is None:
            return fac.file_decryption_properties(pe.KmsConnectionConfig(), config)
        fs, path = arrow_fs(url)
        return fac.file_decryption_properties(pe.KmsConnectionConfig(), config, parquet_file_path=path, filesystem=fs)


def for_context(ctx: Any) -> LakeCrypto:
    """The encryption of a step's lake writes: the keyring's active key, PII columns of the spec."""
    ring = ctx.keys  # creates the embedded keyring on first use, in the task process only
    ring.master_key(ring.active)  # an active key that is revoked is an error, named
    return LakeCrypto(
        key_id=ring.active,
        keyring_path=ring.path or "",
        pii_columns=tuple(ctx.spec.pii_columns),
    )


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


def rotate_lake(
    lake_url: str, ring: Keyring, dataset: str | None = None, update_manifests: bool = False
) -> dict[str, Any]:
    """Re-wrap every encrypted file of committed manifests under the ring's active key.

    Manifests are signature-checked before anything is touched (a tampered manifest is
    never re-signed). With `update_manifests` their ``key_id`` entries are rewritten and
    re-signed (their digests change: downstream caches miss once); by default they stay
    byte-identical.
    """
    from tasks.io.lake import Lake
    from tasks.security import signing

    lake = Lake(lake_url, signer=signing.signer_for(ring), verifier=signing.verifier_for(ring))
    new_id = ring.active
    summary: dict[str, Any] = {"key_id": new_id, "files": 0, "manifests": 0, "manifests_updated": 0,
                               "previous_key_ids": []}
    previous: set[str] = set()
    if not lake.fs.exists(lake.root):
        raise CryptoError(f"no lake at {lake_url}")
    for stage_path in sorted(lake.fs.ls(lake.root, detail=False)):
        stage = stage_path.rstrip("/").rsplit("/", 1)[-1]
        if stage == "raw" or not lake.fs.isdir(stage_path):
            continue
        datasets = [dataset] if dataset else [p.rstrip("/").rsplit("/", 1)[-1] for p in lake.fs.ls(stage_path)]
        for ds_name in datasets:
            for ds in lake.intervals(stage, ds_name):
                m = lake.require(stage, ds_name, ds)  # signature verified
                changed = False
                for entry in m.files:
                    if not entry.key_id or not entry.path.endswith(".parquet"):
                        continue
                    url = lake.full_url(lake.abspath(m, entry))
                    previous |= file_key_ids(url)
                    rotate_file(url, ring, new_id)
                    changed = changed or entry.key_id != new_id
                    entry.key_id = new_id
                    summary["files"] += 1
                if m.files and any(e.key_id for e in m.files):
                    summary["manifests"] += 1
                if changed and update_manifests:
                    lake.commit(m)  # same version: re-signed in place, nothing discarded
                    summary["manifests_updated"] += 1
    summary["previous_key_ids"] = sorted(previous - {new_id})
    return summary


def rotate_cli(argv: list[str]) -> int:
    """``python -m tasks rotate-keys --keyring PATH [--lake URL [--dataset D]] [--rewrap-only] [--update-manifests]``.

    Adds a master key and makes it active (new writes use it), then re-wraps the keys of
    every committed encrypted file of the lake under it, without rewriting data files.
    Old keys stay in the keyring (revoke them with ``tasks.security.keyring.revoke`` once rotated).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m tasks rotate-keys", description=rotate_cli.__doc__)
    p.add_argument("--keyring", default=os.environ.get("LEPTONFLOW_KEYRING"), help="keyring file (0600)")
    p.add_argument("--lake", help="lake root URL whose files get re-wrapped under the new key")
    p.add_argument("--dataset", help="only this dataset (default: every dataset of the lake)")
    p.add_argument("--rewrap-only", action="store_true", help="no new key: re-wrap under the current active key")
    p.add_argument("--update-manifests", action="store_true",
                   help="also rewrite FileEntry.key_id and re-sign manifests (downstream cache keys change)")
    args = p.parse_args(argv)
    if not args.keyring:
        p.error("--keyring is required (or set LEPTONFLOW_KEYRING)")
    if os.environ.get("LEPTONFLOW_KEYRING_JSON"):
        raise CryptoError(
            "LEPTONFLOW_KEYRING_JSON is set, so tasks would not see a rotated keyring file; unset it, rotate the "
            "file, then store the file's new content in the secrets backend"
        )
    if args.dataset and not args.lake:
        p.error("--dataset needs --lake")
    path = Path(args.keyring)
    ring = keyring.load(path, create=False, use_env=False)
    old = ring.active
    if not args.rewrap_only:
        keyring.add_master_key(ring)
        ring.save()  # before any re-wrap: files must never be wrapped by a key that is not stored
    result: dict[str, Any] = {"keyring": str(path), "previous_active": old, "active": ring.active}
    if args.lake:
        result.update(rotate_lake(args.lake, ring, args.dataset, update_manifests=args.update_manifests))
    print(json.dumps(result, indent=1))
    return 0
