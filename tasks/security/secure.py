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
``fail`` it raises ``AnomalyAlert`` and nothing is sealed (Param ``anomaly_check`` off
skips it).

Then it seals: a committed ``secure`` manifest whose ``extra`` lists each checked
manifest's digest, the sha256 of every key-material sidecar and the anomaly result,
signed like any manifest. A later change to a checked manifest or sidecar no longer
matches its seal (:func:`verify_seal`).

Other steps read through :func:`verified_files` (signature + sha256 before use), and
load model weights through :func:`verify_and_load_state_dict`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.io import parquet as parquet_io
from tasks.io.code_version import code_version
from tasks.io.lake import FileEntry, Lake, Manifest
from tasks.security import crypto as lfcrypto
from tasks.security.keyring import KeyError_
from tasks.security.signing import signature_key_id

log = logging.getLogger(__name__)

SECURED_STAGES = ("clean", "quarantine", "quarantine_validation", "split")
IN_MEMORY_MAX = 256 << 20  # files up to this size are fetched once and checked from memory


class IntegrityError(RuntimeError):
    """A lake file or artifact is not what its manifest says; the message names the file."""


def _sha256(url: str) -> str:
    try:
        return parquet_io.sha256_of(url)
    except FileNotFoundError:
        raise IntegrityError(f"{url}: file listed in the manifest is missing") from None


def check_sha256(url: str, entry: FileEntry) -> None:
    actual = _sha256(url)
    if not hmac.compare_digest(actual, entry.sha256):
        raise IntegrityError(f"{url}: sha256 {actual[:16]}... does not match the manifest's {entry.sha256[:16]}...")


def verified_files(ctx: Any, stage: str, group: str | None = None) -> list[tuple[str, FileEntry]]:
    """(url, entry) of the interval's committed `stage` files, after signature and sha256 checks.

    Raises ``ManifestError`` (no output / bad signature) or :class:`IntegrityError` (naming the file).
    """
    lake: Lake = ctx.lake
    m = lake.require(stage, ctx.dataset, ctx.ds)
    out = []
    for entry in m.group_files(group):
        url = lake.full_url(lake.abspath(m, entry))
        check_sha256(url, entry)
        out.append((url, entry))
    return out


def _check_file(url: str, entry: FileEntry, crypto: Any, known_keys: set[str]) -> dict[str, Any]:
    """All checks of one file; returns its key ids and sidecar digest (small JSON).

    Files up to IN_MEMORY_MAX are fetched once (one GET on object stores) and every check
    runs on those bytes; larger ones are streamed.
    """
    info: dict[str, Any] = {"path": entry.path, "rows": entry.rows, "encrypted": bool(entry.key_id)}
    data = _fetch_small(url, entry)
    if data is None:
        check_sha256(url, entry)
    elif not hmac.compare_digest(hashlib.sha256(data).hexdigest(), entry.sha256):
        raise IntegrityError(f"{url}: sha256 does not match the manifest's {entry.sha256[:16]}...")

    def parquet(props: Any) -> pq.ParquetFile:
        if data is None:
            return parquet_io.open_parquet(url, crypto if props is not None else None)
        try:
            return pq.ParquetFile(pa.BufferReader(data), decryption_properties=props)
        except KeyError_ as exc:
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
        except KeyError_ as exc:
            raise parquet_io.ParquetReadError(f"{url}: row group {i}: cannot decrypt: {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            raise parquet_io.ParquetReadError(f"{url}: row group {i}: {exc}") from exc
    if rows != entry.rows:
        raise IntegrityError(f"{url}: {rows} rows read, the manifest says {entry.rows}")
    return info


def _fetch_small(url: str, entry: FileEntry) -> bytes | None:
    if entry.bytes > IN_MEMORY_MAX:
        return None
    fs, path = fsspec.core.url_to_fs(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise IntegrityError(f"{url}: file listed in the manifest is missing") from None


def check_manifest(lake: Lake, m: Manifest, crypto: Any, known_keys: set[str]) -> dict[str, Any]:
    """Check every file of a (signature-verified) manifest, in parallel threads (I/O and pyarrow
    release the GIL)."""
    urls = [lake.full_url(lake.abspath(m, e)) for e in m.files]
    workers = max(1, min(len(urls), os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        infos = list(pool.map(lambda u, e: _check_file(u, e, crypto, known_keys), urls, m.files))
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
    known_keys = set(ctx.keys.master_keys) - set(ctx.keys.revoked)
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
    the key-material sidecars' sha256 (cheap: no data file is read)."""
    lake: Lake = ctx.lake
    seal = lake.require("secure", ctx.dataset, ctx.ds)
    for stage, info in seal.extra.get("checked", {}).items():
        m = lake.require(stage, ctx.dataset, ctx.ds)
        where = lake.interval_dir(stage, ctx.dataset, ctx.ds)
        if m.digest() != info["digest"]:
            raise IntegrityError(
                f"{where}: manifest changed after it was sealed (version {m.version}, sealed {info['version']}); "
                "re-run secure"
            )
        by_path = {e.path: e for e in m.files}
        for rel, sha in info.get("key_material", {}).items():
            url = lake.full_url(lake.abspath(m, by_path[rel]))
            actual = hashlib.sha256(lfcrypto.read_key_material(url)).hexdigest()
            if actual != sha:
                raise IntegrityError(
                    f"{lfcrypto.key_material_url(url)}: key material changed after it was sealed "
                    "(re-wrapped by a rotation, or tampered); re-run secure"
                )
    return {"sealed": sorted(seal.extra.get("checked", {})), "seal_version": seal.version}


def verify_and_load_state_dict(path: str, expected_sha256: str, map_location: str = "cpu") -> dict[str, Any]:
    """Load a torch state dict only after its sha256 matches, and only as tensors (weights_only)."""
    import torch  # lazy: most steps never load weights

    fs, p = fsspec.core.url_to_fs(path)
    try:
        data = fs.cat_file(p)
    except FileNotFoundError:
        raise IntegrityError(f"{path}: model artifact is missing") from None
    actual = hashlib.sha256(data).hexdigest()
    if not expected_sha256 or not hmac.compare_digest(actual, expected_sha256.lower()):
        raise IntegrityError(f"{path}: sha256 {actual[:16]}... does not match the expected {expected_sha256[:16]}...")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError for non-tensor payloads
        raise IntegrityError(f"{path}: not a plain state dict (refused by weights_only load): {exc}") from exc
    if not isinstance(state, dict):
        raise IntegrityError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state
