"""The `secure` step and tamper-evident reading helpers.

``run(ctx)`` checks the interval's committed outputs of clean, quarantine (also the validation
quarantine, ``quarantine_validation``) and split
(each may be absent; the result says which were checked). For every file:

- the manifest signature holds (``lake.require`` verifies it),
- the file's sha256 matches the manifest,
- reading it WITHOUT keys fails (it is encrypted, footer included),
- reading it WITH keys works, every row group (AES-GCM authenticates every page)
  and the row count matches the manifest,
- its key material sidecar names only keys of the keyring (ids recorded).

Then the poisoned-data gate (before training): the clean step's anomaly result if it
recorded one (``clean.extra["anomaly"]``), else :func:`tasks.security.anomaly.score_committed`
on a bounded sample of the committed clean rows; over ``anomaly_max_rate`` with policy
``fail`` it raises ``AnomalyAlert`` and nothing is sealed (setting ``anomaly_check`` off
skips it).

Then it seals: a committed ``secure`` manifest whose ``extra`` lists each checked
manifest's digest, the sha256 of every key-material sidecar and the anomaly result,
signed like any manifest. A later change to a checked manifest or sidecar no longer
matches its seal (:func:`verify_seal`).

Every size and sha256 check goes through :mod:`tasks.io.verified`, the lake's one verified
reader, which other steps use too.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import IntegrityError, KeyringError
from tasks.io import parquet as parquet_io
from tasks.io import verified
from tasks.io.code_version import code_version
from tasks.io.lake import FileEntry, Lake, Manifest
from tasks.security import crypto as lfcrypto
from tasks.security.signing import signature_key_id

log = logging.getLogger(__name__)

SECURED_STAGES = ("clean", "quarantine", "quarantine_validation", "split")
IN_MEMORY_MAX = 256 << 20  # files up to this size are fetched once and checked from memory


def _check_file(lake: Lake, m: Manifest, entry: FileEntry, crypto: Any, known_keys: set[str]) -> dict[str, Any]:
    """All checks of one file; returns its key ids and sidecar digest (small JSON).

    Files up to IN_MEMORY_MAX are fetched once (one GET on object stores) and every check
    runs on those bytes; larger ones are streamed.
    """
    url = verified.file_url(lake, m, entry)
    info: dict[str, Any] = {"path": entry.path, "rows": entry.rows, "encrypted": bool(entry.key_id)}
    data = verified.read_bytes(lake, m, entry) if entry.bytes <= IN_MEMORY_MAX else None
    if data is None:
        verified.check_file(lake, m, entry)

    def parquet(props: Any) -> pq.ParquetFile:
        if data is None:
            return parquet_io.open_parquet(url, crypto if props is not None else None)
        try:
            return pq.ParquetFile(pa.BufferReader(data), decryption_properties=props)
        except KeyringError as exc:
            raise parquet_io.ParquetReadError(f"{url}: cannot decrypt: {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            raise parquet_io.ParquetReadError(f"{url}: cannot read Parquet file: {exc}") from exc

    props = None
    if crypto is not None:
        if not entry.key_id:
            raise IntegrityError(f"{url}: not encrypted (manifest records no key id) while encryption is on")
        try:
            parquet(None)
        except parquet_io.ParquetReadError:
            pass  # expected: without keys even the footer is unreadable
        else:
            raise IntegrityError(f"{url}: readable without keys: the file is not encrypted")
        material = lfcrypto.read_key_material(url)
        key_ids = lfcrypto.file_key_ids(url, material)
        unknown = key_ids - known_keys
        if unknown:
            raise IntegrityError(f"{url}: wrapped by master key(s) {sorted(unknown)} not in the keyring")
        info["key_ids"] = sorted(key_ids)
        info["key_material_sha256"] = hashlib.sha256(material).hexdigest()
        props = crypto.decryption_properties(url=url)
    pf = parquet(props)
    rows = 0
    for i in range(pf.num_row_groups):  # decrypts + authenticates every page
        try:
            rows += pf.read_row_group(i).num_rows
        except KeyringError as exc:
            raise parquet_io.ParquetReadError(f"{url}: row group {i}: cannot decrypt: {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            raise parquet_io.ParquetReadError(f"{url}: row group {i}: {exc}") from exc
    if rows != entry.rows:
        raise IntegrityError(f"{url}: {rows} rows read, the manifest says {entry.rows}")
    return info


def check_manifest(lake: Lake, m: Manifest, crypto: Any, known_keys: set[str]) -> dict[str, Any]:
    """Check every file of a (signature-verified) manifest, in parallel threads (I/O and pyarrow
    release the GIL)."""
    workers = max(1, min(len(m.files), os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        infos = list(pool.map(lambda e: _check_file(lake, m, e, crypto, known_keys), m.files))
    return {
        "version": m.version,
        "digest": m.digest(),
        "signature_key_id": signature_key_id(m.signature),
        "files": len(m.files),
        "rows": sum(e.rows for e in m.files),
        "key_ids": sorted({k for i in infos for k in i.get("key_ids", [])}),
        "key_material": {i["path"]: i["key_material_sha256"] for i in infos if "key_material_sha256" in i},
    }


def run(ctx: Any) -> dict[str, Any]:
    """Verify the interval's clean/quarantine/split outputs and commit a signed seal."""
    lake: Lake = ctx.lake
    crypto = ctx.crypto()  # None when the `encrypt` Param is off: then only signatures and sha256
    known_keys = lfcrypto.known_key_ids(ctx.keys)
    checked: dict[str, Any] = {}
    absent: list[str] = []
    manifests: list[Manifest] = []
    for stage in SECURED_STAGES:
        m = lake.manifest(stage, ctx.dataset, ctx.ds)  # raises ManifestError if the signature fails
        if m is None:
            absent.append(stage)
            continue
        manifests.append(m)
        checked[stage] = check_manifest(lake, m, crypto, known_keys)
        log.info("secure: %s ds=%s: %d files verified", stage, ctx.ds, checked[stage]["files"])
    if not checked:
        log.warning("secure: nothing committed for %s ds=%s in %s", ctx.dataset, ctx.ds, SECURED_STAGES)
    anomaly_result = _anomaly_gate(ctx, manifests)  # raises AnomalyAlert (policy fail) before sealing
    version, _ = lake.new_version("secure", ctx.dataset, ctx.ds)
    seal = lake.commit(
        Manifest(
            stage="secure",
            dataset=ctx.dataset,
            ds=ctx.ds,
            version=version,
            input_fingerprint=Lake.manifests_fingerprint(*manifests),
            code_version=code_version(__name__),
            params=ctx.cache_params(__name__),
            extra={"checked": checked, "absent": absent, "anomaly": anomaly_result},
        )
    )
    files = sum(c["files"] for c in checked.values())
    return {
        "checked": {s: c["files"] for s, c in checked.items()},
        "absent": absent,
        "files_checked": files,
        "all_encrypted": crypto is not None and files > 0,
        "verified": True,
        "key_ids": sorted({k for c in checked.values() for k in c["key_ids"]}),
        "seal_version": seal.version,
        "seal_digest": seal.digest(),
        "anomaly": anomaly_result,
    }


def _anomaly_gate(ctx: Any, manifests: list[Manifest]) -> dict[str, Any] | None:
    """Poisoned-data gate before training: the clean step's own anomaly result when it scored the
    interval, else an estimate from a bounded sample of the committed clean rows (Param
    ``anomaly_check``, default true)."""
    clean = next((m for m in manifests if m.stage == "clean"), None)
    if clean is None or not ctx.param("anomaly_check"):
        return None
    if isinstance(clean.extra.get("anomaly"), dict):
        return {"source": "clean", **clean.extra["anomaly"]}
    from tasks.security import anomaly  # lazy: scikit-learn only when needed
    return {"source": "secure-sample", **anomaly.score_committed(ctx)}


def verify_seal(ctx: Any) -> dict[str, Any]:
    """Check that the interval's seal still matches what it sealed: the manifests' digests and
    the key-material sidecars' sha256 (cheap: no data file is read).

    A key rotation keeps seals valid: it checks each seal before re-wrapping and re-records it
    after (:func:`reseal`), so only a change made outside a rotation fails here.
    """
    lake: Lake = ctx.lake
    seal = lake.require("secure", ctx.dataset, ctx.ds)
    check_seal(lake, seal)
    return {"sealed": sorted(seal.extra.get("checked", {})), "seal_version": seal.version,
            "rotations": len(seal.extra.get("rotations", []))}


def check_seal(lake: Lake, seal: Manifest) -> None:
    """Raise IntegrityError (naming the manifest or sidecar) unless everything `seal` sealed is unchanged."""
    for stage, info in seal.extra.get("checked", {}).items():
        m = lake.require(stage, seal.dataset, seal.ds)
        where = lake.interval_dir(stage, seal.dataset, seal.ds)
        if m.digest() != info["digest"]:
            raise IntegrityError(
                f"{where}: manifest changed after it was sealed (version {m.version}, sealed {info['version']}); "
                "re-run secure", path=where, problem="seal")
        by_path = {e.path: e for e in m.files}
        for rel, sha in info.get("key_material", {}).items():
            if rel not in by_path:
                raise IntegrityError(f"{where}: sealed file {rel} is no longer listed; re-run secure",
                                     path=where, problem="seal")
            url = lake.full_url(lake.abspath(m, by_path[rel]))
            actual = hashlib.sha256(lfcrypto.read_key_material(url)).hexdigest()
            if actual != sha:
                side = lfcrypto.key_material_url(url)
                raise IntegrityError(
                    f"{side}: key material changed after it was sealed (tampered, or re-wrapped outside "
                    "`python -m tasks rotate-keys`); re-run secure", path=side, problem="seal")


def reseal(lake: Lake, seal: Manifest, crypto: Any, rotation: dict[str, Any]) -> Manifest:
    """Re-record a seal after its interval's files were re-wrapped (and maybe their manifests re-signed).

    Called by the rotation only after :func:`check_seal` held for the same seal. Each re-wrapped
    file must still open with its new key material (its footer decrypts: the sidecar belongs to
    this file), then the sidecars' sha256, key ids and manifest digests are recorded, the rotation
    is appended to ``extra["rotations"]`` and the seal is re-signed in place (same version).
    """
    checked = seal.extra.get("checked", {})
    for stage, info in checked.items():
        m = lake.require(stage, seal.dataset, seal.ds)
        by_path = {e.path: e for e in m.files}
        shas: dict[str, str] = {}
        ids: set[str] = set()
        for rel in info.get("key_material", {}):
            url = lake.full_url(lake.abspath(m, by_path[rel]))
            material = lfcrypto.read_key_material(url)
            if crypto is not None:
                parquet_io.open_parquet(url, crypto).metadata  # noqa: B018 - the footer decrypts with the new material
            shas[rel] = hashlib.sha256(material).hexdigest()
            ids |= lfcrypto.file_key_ids(url, material)
        info.update(key_material=shas, key_ids=sorted(ids), digest=m.digest(), version=m.version,
                    signature_key_id=signature_key_id(m.signature))
    seal.extra.setdefault("rotations", []).append(rotation)
    return lake.commit(seal)
