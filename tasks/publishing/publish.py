"""Publish step: the compressed model as a signed, verifiable artifact with its lineage.

Artifact store = any fsspec URL (``ctx.artifacts_url``: a local folder by default,
``s3://bucket/prefix`` through s3fs). Layout::

    <store>/models/<name>/<version>/manifest.json   sha256 + size of every file, lineage, HMAC signature
    <store>/models/<name>/<version>/...              model files, model card, plots, tables
    <store>/models/<name>/latest.json                pointer {"version", "manifest_sha256", ...}

Files are uploaded first and ``manifest.json`` last; then everything is re-read and
checked (signature + every checksum) and only then ``latest.json`` moves, in one
atomic write (``os.replace`` locally, a single PUT on object stores). A reader of
``latest`` therefore never sees a half-uploaded or unverified version. The version id
is derived from the inputs (compressed manifest digest, params, code), so re-running
an interval republishes nothing and just re-verifies.

Storage options (endpoint, credentials) come from the ``leptonflow_artifacts`` Connection's
extra or the env var ``LEPTONFLOW_ARTIFACTS_OPTIONS`` (a JSON object passed to fsspec, e.g.
``{"endpoint_url": "http://127.0.0.1:9000"}`` for an S3-compatible server); fsspec's own
``FSSPEC_S3_ENDPOINT_URL`` style variables work too. Secrets never enter the manifest.

``python -m tasks verify-artifact <url> [--keyring PATH]`` checks an artifact folder (or a
``models/<name>`` folder, following ``latest.json``) and exits non-zero naming the first
file that fails. :func:`load_published` verifies first, then loads the TorchScript export
from the verified bytes (no pickle).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import fsspec

from tasks.errors import IntegrityError, KeyringError, ManifestError
from tasks.io import verified
from tasks.io.code_version import code_version
from tasks.io.lake import TASKS_DIR, Lake, Manifest, fingerprint, is_local, write_atomic
from tasks.security import signing
from tasks.security.keyring import Keyring

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest.json"
FORMAT = "leptonflow-artifact/1"


class ArtifactError(IntegrityError):
    """A published artifact is missing, tampered with, or unsigned; the message names the file."""


# ---- store access ------------------------------------------------------------------
@dataclass
class Store:
    fs: fsspec.AbstractFileSystem
    root: str  # path inside fs, no trailing slash

    @classmethod
    def open(cls, url: str, options: dict[str, Any] | None = None) -> Store:
        fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        return cls(fs, root.rstrip("/"))

    @property
    def local(self) -> bool:
        return is_local(self.fs)

    def url(self, path: str) -> str:
        return path if self.local else self.fs.unstrip_protocol(path)

    def write_atomic(self, path: str, data: bytes) -> None:
        write_atomic(self.fs, path, data, self.local)

    def read(self, path: str) -> bytes:
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError as exc:
            raise ArtifactError(f"{self.url(path)}: missing") from exc


# ---- signing --------------------------------------------------------------------
def payload(doc: dict[str, Any]) -> bytes:
    """Canonical bytes the signature covers: the manifest without its signature field."""
    return json.dumps({k: v for k, v in doc.items() if k != "signature"}, sort_keys=True, default=str).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- verify and load ---------------------------------------------------------------
def _resolve(store: Store) -> str:
    """The artifact folder: `root` itself, or the version `root/latest.json` points to."""
    if store.fs.exists(f"{store.root}/{MANIFEST}"):
        return store.root
    if store.fs.exists(f"{store.root}/{LATEST}"):
        pointer = json.loads(store.read(f"{store.root}/{LATEST}"))
        return f"{store.root}/{pointer['version']}"
    raise ArtifactError(f"{store.url(store.root)}: no {MANIFEST} or {LATEST} here")


def read_artifact(
    url: str, ring: Keyring, options: dict[str, Any] | None = None, want: set[str] | None = None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Verify an artifact's signature and every file's checksum; return (manifest, bytes of `want` files).

    The returned bytes are the ones that were checked, so a caller loading them cannot
    race a concurrent overwrite.
    """
    store = Store.open(url, options)
    adir = _resolve(store)
    mpath = f"{adir}/{MANIFEST}"
    raw = store.read(mpath)
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{store.url(mpath)}: not JSON: {exc}") from exc
    if not signing.verify(ring.signing_key, payload(doc), doc.get("signature", "")):
        raise ArtifactError(f"{store.url(mpath)}: signature check failed (edited, or signed with another key)")
    if adir != store.root:  # reached through latest.json: the pointer must name this exact manifest
        pointer = json.loads(store.read(f"{store.root}/{LATEST}"))
        if pointer.get("manifest_sha256") != sha256(raw):
            raise ArtifactError(f"{store.url(store.root)}/{LATEST}: points to a manifest with another sha256")
    kept: dict[str, bytes] = {}
    for rel, meta in sorted(doc.get("files", {}).items()):
        if rel in (MANIFEST, LATEST) or rel.startswith("/") or ".." in rel.split("/"):
            raise ArtifactError(f"{store.url(mpath)}: illegal file name {rel!r}")
        data = store.read(f"{adir}/{rel}")
        if len(data) != meta["bytes"] or sha256(data) != meta["sha256"]:
            raise ArtifactError(f"{store.url(f'{adir}/{rel}')}: checksum mismatch (tampered or truncated)")
        if want is None or rel in want:
            kept[rel] = data
    extra = set(want or ()) - set(doc.get("files", {}))
    if extra:
        raise ArtifactError(f"{store.url(mpath)}: lists no {sorted(extra)}")
    return doc, kept


def verify_artifact(url: str, ring: Keyring, options: dict[str, Any] | None = None) -> dict[str, Any]:
    doc, _ = read_artifact(url, ring, options, want=set())
    return {"name": doc["name"], "version": doc["version"], "files": len(doc["files"]), "verified": True}


def load_published(url: str, ring: Keyring, options: dict[str, Any] | None = None):
    """The published model as an nn.Module ``forward(x_num, x_cat) -> logits``, after full verification.

    Loaded from the verified bytes of the serving export: a TorchScript module, or an
    onnxruntime session behind :class:`tasks.compression.export.OnnxModule`. Nothing is unpickled.
    """
    from tasks.compression import export
    doc, blobs = read_artifact(url, ring, options)
    serving = doc.get("serving_format", "model.ts")
    if serving not in blobs:
        raise ArtifactError(f"{url}: serving file {serving!r} is not in the manifest")
    if serving.endswith(".ts"):
        return export.load_torchscript(blobs[serving])
    if serving.endswith(".onnx"):
        return export.OnnxModule(blobs[serving])
    raise ArtifactError(f"{url}: serving format {serving!r} is neither TorchScript (.ts) nor ONNX (.onnx)")


# ---- publishing -------------------------------------------------------------------
def publish_files(
    url: str, name: str, version: str, files: dict[str, bytes], meta: dict[str, Any], ring: Keyring,
    options: dict[str, Any] | None = None, verify_ring: Keyring | None = None,
) -> dict[str, Any]:
    """Upload `files` + a signed manifest, verify it from the store, then move `latest`.

    `verify_ring` is the keyring consumers verify with (default: the signing one); a
    mismatch fails the publish before `latest` moves.
    """
    verify_ring = verify_ring or ring
    bad = [r for r in files if not r or r in (MANIFEST, LATEST) or r.startswith("/") or ".." in r.split("/")]
    if bad:  # checked before anything is uploaded
        raise ArtifactError(f"{name}/{version}: illegal artifact file name(s) {bad}")
    store = Store.open(url, options)
    base = f"{store.root}/models/{name}"
    adir = f"{base}/{version}"
    mpath = f"{adir}/{MANIFEST}"
    reused = False
    if store.fs.exists(mpath):
        try:
            read_artifact(store.url(adir), verify_ring, options, want=set())
            reused = True
            log.info("artifact %s/%s already published and verified: not uploading again", name, version)
        except ArtifactError as exc:
            log.warning("re-uploading %s/%s: existing copy fails verification (%s)", name, version, exc)
    if not reused:
        for rel, data in files.items():
            path = f"{adir}/{rel}"
            store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            store.fs.pipe_file(path, data)
        doc = {
            "format": FORMAT, "name": name, "version": version, "published_at": time.time(), **meta,
            "files": {rel: {"sha256": sha256(d), "bytes": len(d)} for rel, d in sorted(files.items())},
        }
        doc["signature"] = signing.sign(ring.signing_key, payload(doc))
        store.write_atomic(mpath, json.dumps(doc, indent=1, sort_keys=True, default=str).encode())
    # re-read from the store (not our memory): only a verified upload may become `latest`
    store.fs.invalidate_cache()
    read_artifact(store.url(adir), verify_ring, options, want=set())
    manifest_bytes = store.read(mpath)
    pointer = {"name": name, "version": version, "manifest_sha256": sha256(manifest_bytes), "moved_at": time.time()}
    store.write_atomic(f"{base}/{LATEST}", json.dumps(pointer, sort_keys=True).encode())
    log.info("published %s version %s to %s (latest moved)", name, version, store.url(adir))
    return {"artifact_url": store.url(adir), "latest_url": store.url(f"{base}/{LATEST}"), "name": name,
            "version": version, "verified": True, "reused": reused, "files": len(files),
            "asset_uri": f"leptonflow://models/{name}"}


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=TASKS_DIR, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _lineage_entry(m: Manifest | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {"stage": m.stage, "version": m.version, "digest": m.digest(), "input_fingerprint": m.input_fingerprint,
            "code_version": m.code_version, "params": m.params, "rows": m.rows, "created_at": m.created_at}


def model_card(doc: dict[str, Any], table_md: str) -> str:
    s = doc["metrics"].get("compression", {})
    lin = doc["lineage"]
    lines = [
        f"# Model card: {doc['name']} {doc['version']}", "",
        f"- dataset: `{lin['dataset']}` (spec fingerprint `{lin.get('spec_fingerprint', '')}`)",
        f"- data interval: {lin['interval']['start']} to {lin['interval']['end']} (run `{lin['run_id']}`)",
        f"- task: {s.get('task', '?')}; metric: {s.get('metric_name', '?')}",
        f"- serving format: `{doc['serving_format']}` (`.ts` TorchScript, `.onnx` onnxruntime); "
        "float models ship both formats",
        f"- code: `{doc['code']['version']}` git `{doc['code'].get('git_commit') or 'n/a'}`", "",
        "## Intended use", "",
        "Scores events of this dataset with the features of `tasks.prep.features.transform` and the feature "
        "statistics of the split it was trained on. Not validated outside that data interval's distribution.", "",
        "## Metrics", "",
        f"- val {s.get('metric_name', 'metric')} uncompressed: {s.get('baseline_metric')}",
        f"- test {s.get('metric_name', 'metric')} of the published export: {s.get('test_metric')}",
        f"- compression: {s.get('note', '')}; {s.get('size_ratio', 1):.2f}x smaller, "
        f"{s.get('speedup_b256', 1):.2f}x faster at batch 256 (budget {s.get('budget')})",
    ]
    ev = doc["metrics"].get("evaluate")
    if ev:
        lines.append(f"- evaluation step: `{json.dumps(ev, default=str)[:400]}`")
    lines += ["", "## Compression candidates", "", table_md.strip(), "", "## Lineage", ""]
    for stage, entry in lin["manifests"].items():
        lines.append(f"- {stage}: " + (f"version `{entry['version']}`, digest `{entry['digest'][:16]}`"
                                       if entry else "not available"))
    lines += ["", "## Data quality", ""]
    for k, v in lin["validation"].items():
        ok = v.get("success") if isinstance(v, dict) else None
        lines.append(f"- {k}: {'passed' if ok else 'FAILED' if ok is False else 'n/a'}")
    lines += ["", "Verify before use: `python -m tasks verify-artifact <artifact url>`.", ""]
    return "\n".join(lines)


def run(ctx: Any) -> dict[str, Any]:
    """Pipeline step: publish the interval's compressed model with manifest, card and lineage."""
    lake: Lake = ctx.lake
    comp = lake.require("compressed", ctx.dataset, ctx.ds)
    stages = {s: lake.manifest(s, ctx.dataset, ctx.ds) for s in ("clean", "split", "model", "evaluation", "validation")}
    name = ctx.param("model_name") or ctx.dataset
    options = ctx.artifacts_options or None
    code = code_version(__name__)
    params = ctx.cache_params(__name__)
    version = f"{ctx.ds}-{fingerprint(comp.digest(), params, code)[:12]}"

    files: dict[str, bytes] = {}
    for f in comp.files:
        files[f.path.split("/", 1)[-1]] = verified.read_bytes(lake, comp, f)
    for stage in ("model", "evaluation"):  # their plots and reports travel with the model
        m = stages[stage]
        for f in (m.files if m else []):
            rel = f.path.split("/", 1)[-1]
            if rel.endswith((".png", ".md")) or rel in {"model_config.json", "metrics.json"}:
                files[f"{stage}/{rel}"] = verified.read_bytes(lake, m, f)
    if stages["validation"] is not None:  # the GX Data Docs (raw/, clean/ pages + result JSON)
        for f in stages["validation"].files:
            files[f"validation/{f.path}"] = verified.read_bytes(lake, stages["validation"], f)
    suites = stages["validation"].extra.get("suites", {}) if stages["validation"] else {}
    summary = comp.extra.get("summary", {})
    up = ctx.upstream or {}
    model_m = stages["model"]
    structure = json.loads(files.get("compression.json", b"{}"))
    meta = {
        "serving_format": structure.get("serving_format", "model.ts"),
        "lineage": {
            "dataset": ctx.dataset,
            "spec_fingerprint": ctx.spec.fingerprint(),
            "interval": {"start": str(ctx.interval_start), "end": str(ctx.interval_end), "ds": ctx.ds},
            "run_id": ctx.run_id,
            "manifests": {**{s: _lineage_entry(stages[s]) for s in ("clean", "split", "model")},
                          "compressed": _lineage_entry(comp), "evaluation": _lineage_entry(stages["evaluation"]),
                          "validation": _lineage_entry(stages["validation"])},
            # the steps' results (XCom) when run in a DAG, else the committed Data Docs summaries
            "validation": {k: up.get(k) or (suites.get(k.removeprefix("validate_")) if k != "secure" else None)
                           for k in ("validate_raw", "validate_clean", "secure")
                           if up.get(k) or suites.get(k.removeprefix("validate_"))},
            "plans": {k: up.get(k) for k in ("plan_clean", "plan_train")},
        },
        "code": {"version": code, "git_commit": _git_commit()},
        "params": params,
        "metrics": {
            "compression": summary,
            "train": (model_m.extra.get("metrics") if model_m else None) or up.get("train"),
            "evaluate": up.get("evaluate") or (stages["evaluation"].extra.get("metrics")
                                                if stages["evaluation"] else None),
        },
    }
    table = files.get("compression.md", b"").decode()
    files["MODEL_CARD.md"] = model_card({"name": name, "version": version, **meta}, table).encode()
    result = publish_files(ctx.artifacts_url, name, version, files, meta, ctx.keys, options)
    result["compressed"] = bool(summary.get("compressed"))
    result["metrics"] = {k: summary.get(k) for k in ("metric_name", "test_metric", "baseline_metric", "size_ratio",
                                                     "speedup_b256", "serving_format")}
    result["metrics"]["candidate"] = (summary.get("chosen") or {}).get("name")
    return result


# ---- CLI -------------------------------------------------------------------------
def verify_cli(argv: list[str]) -> int:
    """``python -m tasks verify-artifact URL [--keyring PATH] [--storage-options JSON]``."""
    from tasks.context import Settings
    from tasks.security import keyring
    p = argparse.ArgumentParser(prog="python -m tasks verify-artifact")
    p.add_argument("url", help="artifact folder (models/<name>/<version>) or models/<name> to follow latest")
    p.add_argument("--keyring", help="keyring file (default $LEPTONFLOW_KEYRING_JSON / $LEPTONFLOW_KEYRING)")
    p.add_argument("--storage-options", help="JSON fsspec options (default $LEPTONFLOW_ARTIFACTS_OPTIONS)")
    args = p.parse_args(argv)
    try:
        ring = keyring.load(args.keyring, create=False)
        options = json.loads(args.storage_options) if args.storage_options else Settings.from_env().artifacts_options
        result = verify_artifact(args.url, ring, options)
    except (IntegrityError, ManifestError, KeyringError, ValueError) as exc:
        print(f"verify-artifact: REFUSED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    return 0
