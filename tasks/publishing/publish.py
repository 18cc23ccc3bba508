"""Publish step: the compressed model as a signed, verifiable artifact with its lineage.

Artifact store = any fsspec URL (``ctx.artifacts_url``: a local folder by default,
``s3://bucket/prefix`` through s3fs). Layout::

    <store>/models/<name>/<version>/manifest.json   sha256 + size of every file, lineage, Ed25519 signature
    <store>/models/<name>/<version>/...              model files, model card, plots, tables
    <store>/models/<name>/latest.json                signed pointer {"version", "manifest_sha256", "sequence"}

Nothing is uploaded unless the interval's evaluation of this very model passed the baseline gate
(:func:`tasks.training.baselines.enforce`, setting ``baseline_tolerance``): it beats the trivial
predictor and comes within the tolerance of the linear baseline; otherwise
:class:`tasks.training.baselines.BaselineGateError` names the three figures.

Signatures are Ed25519 (:mod:`tasks.security.signing`): the manifest is signed in the
``artifact-manifest`` domain, the pointer in the ``pointer`` domain, each naming the key id. The
private key stays with the publisher (its keyring); a consumer needs the public key only
(``python -m tasks keys export-public``; its fingerprint is in the model card), so whoever can
verify cannot forge. A rotated signing key keeps its public half, so old artifacts stay verifiable.

Files are uploaded first and ``manifest.json`` last; then everything is re-read and
checked (signature + every checksum) and only then ``latest.json`` moves, in one
atomic write (``os.replace`` locally, a single PUT on object stores). A reader of
``latest`` therefore never sees a half-uploaded or unverified version. The version id
is derived from the inputs (compressed manifest digest, params, code), so re-running
an interval republishes nothing and just re-verifies.

Rollback protection: every publish gives the new version the next ``sequence`` number (in its
signed manifest and in the signed pointer). ``latest`` never moves back to an older version by
publishing (re-running an old interval leaves it where it is); only ``python -m tasks
rollback-model`` re-points it at an older version, with a new, higher sequence and
``rollback_of``. A verifier refuses a pointer whose sequence is lower than one it has already
seen (a replayed old ``latest.json``): it remembers the highest per model in a small trust-state
file (:class:`PointerState`, ``<LEPTONFLOW_HOME>/trust/pointers.json`` for the CLI), as TUF clients do.

Storage options (endpoint, credentials) come from the ``leptonflow_artifacts`` Connection's
extra or the env var ``LEPTONFLOW_ARTIFACTS_OPTIONS`` (a JSON object passed to fsspec, e.g.
``{"endpoint_url": "http://127.0.0.1:9000"}`` for an S3-compatible server); fsspec's own
``FSSPEC_S3_ENDPOINT_URL`` style variables work too. Secrets never enter the manifest.

``python -m tasks verify-artifact <url> --public-key FILE`` checks an artifact folder (or a
``models/<name>`` folder, following ``latest.json``) and exits non-zero naming the first
file that fails. :func:`load_published` verifies first, then loads the ONNX export into
onnxruntime from the verified bytes (no pickle).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from tasks.errors import IntegrityError, LeptonflowError
from tasks.io import verified
from tasks.io.code_version import code_version
from tasks.io.lake import TASKS_DIR, Lake, Manifest, fingerprint, is_local, write_atomic
from tasks.security import signing
from tasks.security.keyring import Keyring
from tasks.training import baselines

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest.json"
FORMAT = "leptonflow-artifact/1"
POINTER_FORMAT = "leptonflow-pointer/1"


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


# ---- signing ----------------------------------------------------------------------
def payload(doc: dict[str, Any]) -> bytes:
    """Canonical bytes the signature covers: the document without its signature field."""
    return json.dumps({k: v for k, v in doc.items() if k != "signature"}, sort_keys=True, default=str).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


Keys = Keyring | signing.PublicKeys


def _verifier(keys: Keys, domain: str, allow_legacy_hmac: bool = False) -> signing.Verifier:
    return signing.verifier_for(keys, domain, allow_legacy_hmac)


def signing_info(ring: Keyring) -> dict[str, Any]:
    """Who signs: algorithm, key id, public key and its fingerprint (public facts; for the manifest and card)."""
    key = ring.signing_key()
    return {"algorithm": "ed25519", "key_id": key.key_id, "fingerprint": key.fingerprint,
            "public_key": base64.b64encode(key.public).decode()}


class PointerState:
    """The highest ``latest`` sequence seen per model on this host (a JSON file; not a secret).

    A verifier that has seen sequence N refuses a pointer with a lower one: an attacker who can
    write the store can replay an old *signed* pointer, but not make this host forget N.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{self.path}: unreadable pointer state ({exc}); refusing to guess") from None

    def seen(self, model: str) -> int:
        return int((self._read().get(model) or {}).get("sequence", 0))

    def record(self, model: str, sequence: int, version: str) -> None:
        doc = self._read()
        if sequence >= int((doc.get(model) or {}).get("sequence", 0)):
            doc[model] = {"sequence": sequence, "version": version, "at": time.time()}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
            tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
            os.replace(tmp, self.path)


def _model_key(store: Store, base: str) -> str:
    return store.url(base)


def read_pointer(store: Store, base: str, keys: Keys, state: PointerState | None = None) -> dict[str, Any] | None:
    """The verified ``latest.json`` of the model folder `base` (None when there is none).

    Raises:
        ArtifactError: the pointer is unsigned, its signature fails (domain ``pointer``, key id),
            or its sequence is lower than one `state` has seen (a replayed old pointer).
    """
    path = f"{base}/{LATEST}"
    if not store.fs.exists(path):
        return None
    raw = store.read(path)
    try:
        pointer = json.loads(raw)
    except ValueError as exc:
        raise ArtifactError(f"{store.url(path)}: not JSON: {exc}") from exc
    if not isinstance(pointer, dict):
        raise ArtifactError(f"{store.url(path)}: not a pointer")
    problem = _verifier(keys, signing.POINTER).problem(payload(pointer), pointer.get("signature", ""))
    if problem:
        raise ArtifactError(f"{store.url(path)}: pointer signature check failed: {problem}")
    seq = pointer.get("sequence")
    if not isinstance(seq, int) or seq < 1 or not isinstance(pointer.get("version"), str):
        raise ArtifactError(f"{store.url(path)}: pointer has no valid sequence/version")
    if state is not None:
        seen = state.seen(_model_key(store, base))
        if seq < seen:
            raise ArtifactError(f"{store.url(path)}: sequence {seq} is older than {seen}, already seen for this model "
                                f"(a replayed old latest.json: rollback refused; see {state.path})")
    return pointer


# ---- verify and load ---------------------------------------------------------------
def read_artifact(
    url: str, keys: Keys, options: dict[str, Any] | None = None, want: set[str] | None = None,
    state: PointerState | None = None, allow_legacy_hmac: bool = False,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Verify an artifact's signature and every file's checksum; return (manifest, bytes of `want` files).

    `url` is an artifact folder, or a model folder whose signed ``latest.json`` names the version
    (then the pointer's signature, sequence and manifest sha256 are checked too, and `state`
    remembers the sequence). `keys`: the publisher's public keys (or a keyring). The returned bytes
    are the ones that were checked, so a caller loading them cannot race a concurrent overwrite.
    """
    store = Store.open(url, options)
    pointer = None
    adir = store.root
    if not store.fs.exists(f"{store.root}/{MANIFEST}"):
        pointer = read_pointer(store, store.root, keys, state)
        if pointer is None:
            raise ArtifactError(f"{store.url(store.root)}: no {MANIFEST} or {LATEST} here")
        version = pointer["version"]
        if not version or "/" in version or version in (".", ".."):
            raise ArtifactError(f"{store.url(store.root)}/{LATEST}: illegal version {version!r}")
        adir = f"{store.root}/{version}"
    mpath = f"{adir}/{MANIFEST}"
    raw = store.read(mpath)
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{store.url(mpath)}: not JSON: {exc}") from exc
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict) or not all(isinstance(f, dict) and {"bytes", "sha256"} <= set(f)
                                              for f in files.values()):
        raise ArtifactError(f"{store.url(mpath)}: not a leptonflow artifact manifest ({FORMAT}: a JSON object whose "
                            "files map names to bytes and sha256); is this an artifact folder?")
    problem = _verifier(keys, signing.ARTIFACT, allow_legacy_hmac).problem(payload(doc), doc.get("signature", ""))
    if problem:
        raise ArtifactError(f"{store.url(mpath)}: signature check failed: {problem}")
    if pointer is not None:  # reached through latest.json: the pointer must name this exact manifest
        _check_pointer_target(store, pointer, doc, raw)
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
    if pointer is not None and state is not None:
        state.record(_model_key(store, store.root), pointer["sequence"], pointer["version"])
    return doc, kept


def _check_pointer_target(store: Store, pointer: dict[str, Any], doc: dict[str, Any], raw: bytes) -> None:
    where = f"{store.url(store.root)}/{LATEST}"
    if pointer.get("manifest_sha256") != sha256(raw):
        raise ArtifactError(f"{where}: points to a manifest with another sha256")
    if doc.get("name") != pointer.get("name") or doc.get("version") != pointer.get("version"):
        raise ArtifactError(f"{where}: names {pointer.get('name')}/{pointer.get('version')}, the manifest is "
                            f"{doc.get('name')}/{doc.get('version')}")
    published = doc.get("sequence")
    if pointer.get("rollback_of"):
        if not isinstance(published, int) or published >= pointer["sequence"]:
            raise ArtifactError(f"{where}: a rollback pointer must name an older version")
    elif published != pointer["sequence"]:
        raise ArtifactError(f"{where}: sequence {pointer['sequence']} names version {doc.get('version')}, which was "
                            f"published at sequence {published}: an older version re-pointed without "
                            "`python -m tasks rollback-model` (rollback refused)")


def verify_artifact(url: str, keys: Keys, options: dict[str, Any] | None = None,
                    state: PointerState | None = None, allow_legacy_hmac: bool = False) -> dict[str, Any]:
    doc, _ = read_artifact(url, keys, options, want=set(), state=state, allow_legacy_hmac=allow_legacy_hmac)
    return {"name": doc["name"], "version": doc["version"], "files": len(doc["files"]), "verified": True,
            "sequence": doc.get("sequence"), "signed_by": signing.signature_key_id(doc.get("signature", ""))}


def load_published(url: str, keys: Keys, options: dict[str, Any] | None = None,
                   state: PointerState | None = None):
    """The published model as an nn.Module ``forward(x_num, x_cat) -> logits``, after full verification.

    Loaded from the verified bytes of the serving export: an onnxruntime session behind
    :class:`tasks.compression.export.OnnxModule`. Nothing is unpickled.
    """
    from tasks.compression import export
    doc, blobs = read_artifact(url, keys, options, state=state)
    serving = doc.get("serving_format", "model.ts")
    if serving not in blobs:
        raise ArtifactError(f"{url}: serving file {serving!r} is not in the manifest")
    if serving.endswith(".onnx"):
        return export.OnnxModule(blobs[serving])
    raise ArtifactError(f"{url}: serving format {serving!r} is not ONNX (.onnx); TorchScript (.ts) artifacts are "
                        "no longer served (torch.jit is deprecated): publish the model again")


# ---- publishing -------------------------------------------------------------------
def _write_pointer(store: Store, base: str, ring: Keyring, pointer: dict[str, Any]) -> dict[str, Any]:
    pointer = {"format": POINTER_FORMAT, **pointer}
    pointer["signature"] = signing.signer_for(ring, signing.POINTER)(payload(pointer))
    store.write_atomic(f"{base}/{LATEST}", json.dumps(pointer, sort_keys=True).encode())
    return pointer


def _legacy_pointer(store: Store, base: str) -> bool:
    """Whether ``latest.json`` is in the format written before pointers were signed (no signature, no sequence)."""
    try:
        doc = json.loads(store.read(f"{base}/{LATEST}"))
    except (ArtifactError, ValueError):
        return False
    return isinstance(doc, dict) and "signature" not in doc and "sequence" not in doc


def _current_sequence(store: Store, base: str, keys: Keys, state: PointerState | None,
                      replace_invalid: bool = False) -> tuple[dict | None, int]:
    """The verified current pointer (None if there is none) and the highest sequence known for the model.

    A pointer that fails verification stops a publish (someone tampered with the store); an unsigned
    pointer of the format before signatures is replaced (with a warning), and ``rollback-model``
    (`replace_invalid`) may replace any pointer: both are the publisher's own decision, and verifiers
    never accept such a pointer.
    """
    try:
        current = read_pointer(store, base, keys, state)
    except ArtifactError as exc:
        if not (replace_invalid or _legacy_pointer(store, base)):
            raise ArtifactError(f"{exc}; not publishing over it: inspect the store, then re-point it with "
                                "`python -m tasks rollback-model`") from None
        log.warning("replacing %s/%s, which does not verify: %s", store.url(base), LATEST, exc)
        current = None
    seq = current["sequence"] if current else 0
    return current, max(seq, state.seen(_model_key(store, base)) if state else 0)


def publish_files(
    url: str, name: str, version: str, files: dict[str, bytes], meta: dict[str, Any], ring: Keyring,
    options: dict[str, Any] | None = None, verify_keys: Keys | None = None, state: PointerState | None = None,
) -> dict[str, Any]:
    """Upload `files` + a signed manifest, verify it from the store, then move the signed `latest`.

    `verify_keys` are the public keys consumers verify with (default: the signing keyring's); a
    mismatch fails the publish before `latest` moves. `latest` moves only forward: to a version
    published now (or interrupted after its upload), never back to an older one.
    """
    verify_keys = verify_keys or ring
    bad = [r for r in files if not r or r in (MANIFEST, LATEST) or r.startswith("/") or ".." in r.split("/")]
    if bad:  # checked before anything is uploaded
        raise ArtifactError(f"{name}/{version}: illegal artifact file name(s) {bad}")
    if not version or "/" in version or version in (".", ".."):
        raise ArtifactError(f"{name}: illegal version {version!r}")
    store = Store.open(url, options)
    base = f"{store.root}/models/{name}"
    adir = f"{base}/{version}"
    mpath = f"{adir}/{MANIFEST}"
    current, last_seq = _current_sequence(store, base, verify_keys, state)
    existing = None
    if store.fs.exists(mpath):
        try:
            existing, _ = read_artifact(store.url(adir), verify_keys, options, want=set())
            log.info("artifact %s/%s already published and verified: not uploading again", name, version)
        except ArtifactError as exc:
            log.warning("re-uploading %s/%s: existing copy fails verification (%s)", name, version, exc)
    if existing is None:
        for rel, data in files.items():
            path = f"{adir}/{rel}"
            store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            store.fs.pipe_file(path, data)
        doc = {
            "format": FORMAT, "name": name, "version": version, "published_at": time.time(), **meta,
            "sequence": last_seq + 1, "signing": signing_info(ring),
            "files": {rel: {"sha256": sha256(d), "bytes": len(d)} for rel, d in sorted(files.items())},
        }
        doc["signature"] = signing.signer_for(ring, signing.ARTIFACT)(payload(doc))
        store.write_atomic(mpath, json.dumps(doc, indent=1, sort_keys=True, default=str).encode())
    # re-read from the store (not our memory): only a verified upload may become `latest`
    store.fs.invalidate_cache()
    doc, _ = read_artifact(store.url(adir), verify_keys, options, want=set())
    manifest_bytes = store.read(mpath)
    seq = doc.get("sequence")
    pointer = current
    if current is not None and current["version"] == version and current["manifest_sha256"] == sha256(manifest_bytes):
        moved = False  # already latest
    elif isinstance(seq, int) and seq > last_seq:
        pointer = _write_pointer(store, base, ring, {"name": name, "version": version,
                                                     "manifest_sha256": sha256(manifest_bytes), "sequence": seq,
                                                     "moved_at": time.time()})
        moved = True
        log.info("published %s version %s (sequence %d) to %s: latest moved", name, version, seq, store.url(adir))
    else:
        moved = False
        log.warning("%s version %s was published before (sequence %s); latest stays at %s (sequence %s). "
                    "Point latest back at it with `python -m tasks rollback-model`", name, version, seq,
                    current and current["version"], last_seq)
    if state is not None and pointer is not None:
        state.record(_model_key(store, base), pointer["sequence"], pointer["version"])
    return {"artifact_url": store.url(adir), "latest_url": store.url(f"{base}/{LATEST}"), "name": name,
            "version": version, "verified": True, "reused": existing is not None, "files": len(files),
            "sequence": seq, "latest_moved": moved, "latest_version": pointer["version"] if pointer else None,
            "signed_by": signing.signature_key_id(doc.get("signature", "")),
            "asset_uri": f"leptonflow://models/{name}"}


def rollback(url: str, name: str, to_version: str, ring: Keyring, options: dict[str, Any] | None = None,
             state: PointerState | None = None) -> dict[str, Any]:
    """Point `latest` of model `name` at an older, verified version: a new pointer with the next sequence
    and ``rollback_of`` (the only way `latest` ever moves back)."""
    store = Store.open(url, options)
    base = f"{store.root}/models/{name}"
    current, last_seq = _current_sequence(store, base, ring, state, replace_invalid=True)
    adir = f"{base}/{to_version}"
    doc, _ = read_artifact(store.url(adir), ring, options, want=set())
    if current is not None and current["version"] == to_version:
        raise ArtifactError(f"{store.url(base)}/{LATEST}: already points at {to_version}")
    if not isinstance(doc.get("sequence"), int):
        raise ArtifactError(f"{store.url(adir)}/{MANIFEST}: has no publish sequence (published before sequences); "
                            "republish it instead")
    pointer = _write_pointer(store, base, ring, {
        "name": name, "version": to_version, "manifest_sha256": sha256(store.read(f"{adir}/{MANIFEST}")),
        "sequence": last_seq + 1, "moved_at": time.time(),
        "rollback_of": current["version"] if current else "(no verified pointer)"})
    if state is not None:
        state.record(_model_key(store, base), pointer["sequence"], to_version)
    log.warning("rolled %s back to %s (sequence %d, was %s)", name, to_version, pointer["sequence"],
                pointer["rollback_of"])
    return {"name": name, "version": to_version, "sequence": pointer["sequence"], "rollback_of": pointer["rollback_of"]}


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
        f"- serving format: `{doc['serving_format']}` (ONNX, run by onnxruntime); `model.pt`: the float "
        "PyTorch weights it was made from",
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
    gate = doc["metrics"].get("gate")
    if gate:  # the publish gate: model vs trivial predictor vs linear baseline on the same test split
        lines.append(f"- test {gate['metric']}: model {gate['model']:.4f} | trivial {gate['trivial']:.4f} | linear "
                     f"{gate['linear']:.4f} (gate passed, tolerance {gate['tolerance']:g})")
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
    sig = doc.get("signing") or {}
    lines += ["", "## Signature", "",
              f"- algorithm: {sig.get('algorithm', 'ed25519')}; signing key id: `{sig.get('key_id', '?')}`",
              f"- public key fingerprint: `{sig.get('fingerprint', '?')}`",
              f"- public key (raw Ed25519, base64): `{sig.get('public_key', '?')}`", "",
              "Verify before use, with the publisher's public key file (`python -m tasks keys export-public`; "
              "check its fingerprint against the one above, obtained from the publisher, not from this card): "
              "`python -m tasks verify-artifact <artifact url> --public-key <file>`.", ""]
    return "\n".join(lines)


def run(ctx: Any) -> dict[str, Any]:
    """Pipeline step: publish the interval's compressed model with manifest, card and lineage."""
    lake: Lake = ctx.lake
    comp = lake.require("compressed", ctx.dataset, ctx.ds)
    stages = {s: lake.manifest(s, ctx.dataset, ctx.ds) for s in ("clean", "split", "model", "evaluation", "validation")}
    # before anything is uploaded: a model that does not beat the baselines is refused (BaselineGateError)
    gate = baselines.enforce(stages["evaluation"], stages["model"], ctx.param("baseline_tolerance"))
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
        for f in stages["validation"].files:  # v=<version>/clean/index.html -> validation/clean/index.html
            rel = f.path.split("/", 1)[-1] if f.path.startswith("v=") else f.path
            files[f"validation/{rel}"] = verified.read_bytes(lake, stages["validation"], f)
    suites = stages["validation"].extra.get("suites", {}) if stages["validation"] else {}
    summary = comp.extra.get("summary", {})
    up = ctx.upstream or {}
    model_m = stages["model"]
    structure = json.loads(files.get("compression.json", b"{}"))
    meta = {
        "serving_format": structure.get("serving_format", "model.onnx"),
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
        "signing": signing_info(ctx.keys),
        "params": params,
        "metrics": {
            "gate": gate.to_json(),
            "compression": summary,
            "train": (model_m.extra.get("metrics") if model_m else None) or up.get("train"),
            "evaluate": up.get("evaluate") or (stages["evaluation"].extra.get("metrics")
                                                if stages["evaluation"] else None),
        },
    }
    table = files.get("compression.md", b"").decode()
    files["MODEL_CARD.md"] = model_card({"name": name, "version": version, **meta}, table).encode()
    state = PointerState(Path(ctx.env.home) / "trust" / "pointers.json")
    result = publish_files(ctx.artifacts_url, name, version, files, meta, ctx.keys, options, state=state)
    result["compressed"] = bool(summary.get("compressed"))
    result["metrics"] = {k: summary.get(k) for k in ("metric_name", "test_metric", "baseline_metric", "size_ratio",
                                                     "speedup_b256", "serving_format")}
    result["metrics"]["candidate"] = (summary.get("chosen") or {}).get("name")
    return result


# ---- CLI -------------------------------------------------------------------------
def _keys_from_args(args: argparse.Namespace, settings: Any) -> Keys:
    from tasks.security import keyring

    if args.public_key:
        return signing.PublicKeys.from_file(args.public_key)
    return keyring.load(args.keyring or settings.keyring_path)


def verify_cli(argv: list[str]) -> int:
    """``python -m tasks verify-artifact URL --public-key FILE [--state FILE | --no-state] [--storage-options JSON]``.

    Needs no secret: the publisher's public key file (``python -m tasks keys export-public``). Through
    ``latest.json`` the highest sequence seen is remembered in ``--state`` (default
    ``<LEPTONFLOW_HOME>/trust/pointers.json``), so a replayed older pointer is refused.
    """
    from tasks.context import Settings

    p = argparse.ArgumentParser(prog="python -m tasks verify-artifact", description=verify_cli.__doc__)
    p.add_argument("url", help="artifact folder (models/<name>/<version>) or models/<name> to follow latest")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--public-key", help="public key file: `keys export-public` JSON or an Ed25519 PEM")
    who.add_argument("--keyring", help="the publisher's keyring instead (default $LEPTONFLOW_KEYRING)")
    st = p.add_mutually_exclusive_group()
    st.add_argument("--state", help="trust-state file of pointer sequences seen "
                                    "(default <LEPTONFLOW_HOME>/trust/pointers.json)")
    st.add_argument("--no-state", action="store_true", help="do not remember or check pointer sequences")
    p.add_argument("--storage-options", help="JSON fsspec options (default $LEPTONFLOW_ARTIFACTS_OPTIONS)")
    p.add_argument("--allow-legacy-hmac", action="store_true",
                   help="also accept artifacts signed by the old shared-secret HMAC (needs --keyring)")
    args = p.parse_args(argv)
    try:
        settings = Settings.from_env()
        keys = _keys_from_args(args, settings)
        options = json.loads(args.storage_options) if args.storage_options else settings.artifacts_options
        state = None if args.no_state else PointerState(args.state or Path(settings.home) / "trust" / "pointers.json")
        result = verify_artifact(args.url, keys, options, state=state, allow_legacy_hmac=args.allow_legacy_hmac)
    except (LeptonflowError, ValueError) as exc:
        print(f"verify-artifact: REFUSED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    return 0


def rollback_cli(argv: list[str]) -> int:
    """``python -m tasks rollback-model --name NAME --to VERSION [--store URL] [--keyring PATH]``: the only way to
    point ``latest`` back at an older version (a new signed pointer with a higher sequence and ``rollback_of``)."""
    from tasks.context import Settings
    from tasks.security import keyring

    p = argparse.ArgumentParser(prog="python -m tasks rollback-model", description=rollback_cli.__doc__)
    p.add_argument("--name", required=True, help="model name (models/<name>)")
    p.add_argument("--to", required=True, help="the published version latest should name")
    p.add_argument("--store", help="artifact store URL (default $LEPTONFLOW_ARTIFACTS)")
    p.add_argument("--keyring", help="the publisher's keyring (default $LEPTONFLOW_KEYRING)")
    p.add_argument("--storage-options", help="JSON fsspec options (default $LEPTONFLOW_ARTIFACTS_OPTIONS)")
    args = p.parse_args(argv)
    try:
        settings = Settings.from_env()
        ring = keyring.load(args.keyring or settings.keyring_path)
        options = json.loads(args.storage_options) if args.storage_options else settings.artifacts_options
        state = PointerState(Path(settings.home) / "trust" / "pointers.json")
        result = rollback(args.store or settings.artifacts_url, args.name, args.to, ring, options, state)
    except (LeptonflowError, ValueError) as exc:
        print(f"rollback-model: REFUSED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    return 0
