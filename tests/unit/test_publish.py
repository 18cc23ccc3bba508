"""Publishing: signed artifact with lineage, verify-before-latest, tamper refusal, verified loading."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tasks.compression import compress
from tasks.context import StepContext
from tasks.errors import SettingError
from tasks.io.lake import Manifest
from tasks.publishing import publish
from tasks.publishing.publish import ArtifactError
from tasks.security import keyring, signing
from tasks.training.metrics import metric_value
from tests.evaluated import commit_evaluation
from tests.keys import keyring_at
from tests.unit.tabular_toy import ToyTabular, make_data, train_toy

DS = "2026-11-03"


@pytest.fixture(scope="module")
def model_and_data():
    tr, va, te = make_data(2000, 0), make_data(600, 1), make_data(600, 2)
    model = train_toy(ToyTabular(hidden=(48, 24)), *tr, epochs=3)
    splits = {"train": tr, "val": va, "test": te}
    return model, {k: compress.TabularData.from_numpy(*d) for k, d in splits.items()}


def _compressed_lake(ctx: StepContext, model, data) -> None:
    params = {"compress_budget": 0.02, "compress_ratios": [0.5],
              "compress_backends": ["fp32-onnx", "int8-onnx", "int8-static-onnx"], "compress_finetune_epochs": 1,
              "compress_max_train_rows": 2000, "compress_latency_repeats": 3, "compress_calibration_rows": 256,
              "seed": 0}
    compress.compress_and_commit(ctx.lake, ctx.dataset, ctx.ds, model, {"hidden": [48, 24]},
                                 {"task": "classification"}, data, params, "fp", "code")


@pytest.fixture(scope="module")
def template_home(tmp_path_factory, model_and_data) -> Path:
    """A LEPTONFLOW_HOME with a keyring, a committed `compressed` stage and Data Docs: built once, copied per test."""
    model, data = model_and_data
    home = tmp_path_factory.mktemp("template") / "lfhome"
    ctx = StepContext(dataset="events", ds=DS, lake_url=str(home / "lake"),
                      keyring_path=keyring_at(home / "keys" / "keyring.json"))
    _compressed_lake(ctx, model, data)
    commit_evaluation(ctx.lake, "events", DS)  # the publish gate's input: the model beat the baselines
    # committed GX Data Docs of the interval (what tasks.validation.validate leaves in the lake)
    page = b"<html>clean suite: 31 expectations passed</html>"
    version, vdir = ctx.lake.new_version("validation", "events", DS)
    ctx.lake.commit(Manifest("validation", "events", DS, version, files=[
        ctx.lake.put_bytes(vdir, version, "clean/index.html", page)],
        extra={"suites": {"clean": {"success": True, "evaluated_expectations": 31}}}))
    # an evaluation that passed the baseline gate (tasks.training.baselines): publishing needs one
    version, _ = ctx.lake.new_version("evaluation", "events", DS)
    ctx.lake.commit(Manifest("evaluation", "events", DS, version, extra={
        "model_version": None, "metrics": {"auc": 0.8},
        "comparison": {"task": "classification", "metric": "auc", "model": 0.8, "trivial": 0.5, "linear": 0.79}}))
    return home


@pytest.fixture
def published(lf_home, template_home):
    for sub in ("lake", "keys"):
        shutil.copytree(template_home / sub, lf_home / sub, dirs_exist_ok=True)
    upstream = {"validate_raw": {"success": True, "evaluated": 12}, "plan_train": {"nproc": 1, "device": "cpu"}}
    ctx = StepContext(dataset="events", ds=DS, upstream=upstream,
                      params={"seed": 0})
    return ctx, publish.run(ctx)


def test_publish_writes_signed_manifest_with_lineage(published):
    ctx, res = published
    assert res["verified"] and res["asset_uri"] == "leptonflow://models/events"
    assert res["metrics"]["candidate"] and res["metrics"]["metric_name"] == "auc"
    assert json.loads(json.dumps(res)) == res  # small JSON only: it travels as XCom
    adir = Path(res["artifact_url"])
    assert adir.parent.name == "events" and adir.parent.parent.name == "models" and adir.name == res["version"]
    doc = json.loads((adir / "manifest.json").read_text())
    comp = ctx.lake.require("compressed", "events", DS)
    assert doc["lineage"]["manifests"]["compressed"]["digest"] == comp.digest()
    assert doc["lineage"]["manifests"]["model"] is None  # no model stage in this lake: recorded as absent
    assert doc["lineage"]["validation"]["validate_raw"]["evaluated"] == 12  # from the upstream step result
    assert doc["lineage"]["validation"]["validate_clean"]["evaluated_expectations"] == 31  # from the lake
    assert doc["lineage"]["manifests"]["validation"]["version"] == ctx.lake.require("validation", "events", DS).version
    assert (adir / "validation" / "clean" / "index.html").read_bytes().startswith(b"<html>clean suite")
    assert doc["lineage"]["plans"]["plan_train"] == {"nproc": 1, "device": "cpu"}
    assert doc["lineage"]["interval"]["ds"] == DS and doc["code"]["version"]
    assert set(doc["params"]) >= {"model_name"}  # publish's own settings: its cache key
    # the settings each upstream step ran with travel in the lineage (here: what compress_and_commit was given)
    compressed_params = doc["lineage"]["manifests"]["compressed"]["params"]
    assert compressed_params["seed"] == 0 and compressed_params["compress_budget"] == 0.02
    for rel, meta in doc["files"].items():
        assert (adir / rel).stat().st_size == meta["bytes"]
    assert {"model.onnx", "MODEL_CARD.md", "compression.png", "compression.md"} <= set(doc["files"])
    card = (adir / "MODEL_CARD.md").read_text()
    assert res["version"] in card and "Lineage" in card and "validate_raw: passed" in card
    latest = json.loads((adir.parent / "latest.json").read_text())
    assert latest["version"] == res["version"]


def test_load_published_reproduces_the_compressed_model(published, model_and_data):
    ctx, res = published
    _, data = model_and_data
    served = publish.load_published(res["artifact_url"], ctx.keys)
    via_latest = publish.load_published(str(Path(res["artifact_url"]).parent), ctx.keys)
    test = data["test"]
    summary = ctx.lake.require("compressed", "events", DS).extra["summary"]
    auc = metric_value("classification", test.y.numpy(), compress.predict(served, test))
    assert auc == pytest.approx(summary["test_metric"], abs=1e-9)
    assert np.array_equal(compress.predict(via_latest, test), compress.predict(served, test))


def test_republish_is_idempotent_and_repairs_a_tampered_copy(published):
    ctx, res = published
    again = publish.run(ctx)
    assert again["version"] == res["version"] and again["reused"]
    model_file = Path(res["artifact_url"]) / "model.onnx"
    blob = bytearray(model_file.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    model_file.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="model.onnx: checksum mismatch"):
        publish.verify_artifact(res["artifact_url"], ctx.keys)
    repaired = publish.run(ctx)
    assert not repaired["reused"] and publish.verify_artifact(res["artifact_url"], ctx.keys)["verified"]


def test_verify_cli_refuses_tampering_and_names_the_file(published, capsys):
    ctx, res = published
    adir = Path(res["artifact_url"])
    assert publish.verify_cli([str(adir)]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True
    card = adir / "MODEL_CARD.md"
    card.write_text(card.read_text() + "\nall metrics are excellent\n")
    assert publish.verify_cli([str(adir)]) == 1
    err = capsys.readouterr().err
    assert "REFUSED" in err and "MODEL_CARD.md" in err and "checksum mismatch" in err
    with pytest.raises(ArtifactError, match="MODEL_CARD.md"):
        publish.load_published(str(adir), ctx.keys)


def test_edited_manifest_or_foreign_key_is_refused(published, tmp_path):
    ctx, res = published
    adir = Path(res["artifact_url"])
    other = keyring.generate(tmp_path / "other.json")
    with pytest.raises(ArtifactError, match="signature check failed"):
        publish.verify_artifact(str(adir), other)
    mpath = adir / "manifest.json"
    doc = json.loads(mpath.read_text())
    doc["metrics"]["compression"]["test_metric"] = 0.999
    mpath.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="manifest.json: signature check failed"):
        publish.verify_artifact(str(adir), ctx.keys)
    # latest.json names the manifest's sha256: a swapped manifest is refused through the pointer too
    with pytest.raises(ArtifactError, match="signature|another sha256"):
        publish.verify_artifact(str(adir.parent), ctx.keys)


def test_latest_moves_only_to_a_verified_version(published, model_and_data):
    ctx, res = published
    base = Path(res["artifact_url"]).parent
    ctx2 = StepContext(dataset="events", ds=DS, params={"seed": 0, "model_name": "events"},
                       upstream=ctx.upstream)
    res2 = publish.run(ctx2)  # other params -> another version
    assert res2["version"] != res["version"]
    assert json.loads((base / "latest.json").read_text())["version"] == res2["version"]
    # an upload that fails verification (here: consumers' keyring differs from the signing one) never moves latest
    ring = keyring.generate(Path(ctx.keyring_path).parent / "x.json")
    files = {"model.ts": b"abc"}
    with pytest.raises(ArtifactError):
        publish.publish_files(ctx.artifacts_url, "events", "v-bad", files, {}, ring,
                              verify_keys=keyring.load(ctx.keyring_path))
    assert json.loads((base / "latest.json").read_text())["version"] == res2["version"]
    assert (base / "v-bad" / "manifest.json").exists()


def test_bad_inputs_are_clear_errors(lf_home, tmp_path):
    ctx = StepContext(dataset="events", ds="2026-11-09")
    with pytest.raises(Exception, match="no committed compressed output"):
        publish.run(ctx)
    ring = keyring.generate(tmp_path / "k.json")
    with pytest.raises(ArtifactError, match="no manifest.json or latest.json"):
        publish.verify_artifact(str(tmp_path), ring)


def test_illegal_file_names_are_refused_before_upload(tmp_path):
    ring = keyring.generate(tmp_path / "k.json")
    store = tmp_path / "store"
    for bad in ("../evil.txt", "manifest.json", "/abs"):
        with pytest.raises(ArtifactError, match="illegal artifact file name"):
            publish.publish_files(str(store), "m", "v1", {"model.ts": b"ok", bad: b"x"}, {}, ring)
    assert not (tmp_path / "store" / "models" / "m" / "evil.txt").exists()
    assert not (store / "models" / "m" / "v1" / "model.ts").exists()  # nothing was uploaded
    assert not (store / "models" / "m" / "latest.json").exists()


def test_python_m_tasks_verify_artifact_exit_codes(published):
    import os
    import subprocess
    import sys

    ctx, res = published
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    ok = subprocess.run([sys.executable, "-m", "tasks", "verify-artifact", res["artifact_url"]], cwd=repo, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["version"] == res["version"]
    target = Path(res["artifact_url"]) / "compression.png"
    target.write_bytes(target.read_bytes() + b"\0")
    bad = subprocess.run([sys.executable, "-m", "tasks", "verify-artifact", res["artifact_url"]], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "compression.png" in bad.stderr


def test_an_undeclared_param_is_refused_before_publishing(lf_home, template_home):
    """Only declared settings reach a step (and its manifest): a stray secret in dag_run.conf is an error."""
    for sub in ("lake", "keys"):
        shutil.copytree(template_home / sub, lf_home / sub, dirs_exist_ok=True)
    ctx = StepContext(dataset="events", ds=DS, params={"seed": 0, "api_key": "hunter2"})
    with pytest.raises(SettingError, match="setting api_key: is not a leptonflow setting"):
        publish.run(ctx)
    assert not (lf_home / "artifacts").exists() or not any((lf_home / "artifacts").rglob("manifest.json"))


# ---- Ed25519: verify with the public key only; domains; the signed pointer and its sequence ------

@pytest.fixture
def store(lf_home):
    """The artifact store of lf_home, its publisher keyring and a publish function (no model needed)."""
    ctx = StepContext(dataset="events", ds=DS)
    state = publish.PointerState(lf_home / "trust" / "pointers.json")

    def put(version: str, ring=None, **kw):
        files = {"model.onnx": f"weights of {version}".encode(), "MODEL_CARD.md": b"# card"}
        return publish.publish_files(ctx.artifacts_url, "events", version, files, {"serving_format": "model.onnx"},
                                     ring or ctx.keys, state=state, **kw)

    return ctx, put, Path(ctx.artifacts_url) / "models" / "events"


def _public_key_file(ctx, tmp_path) -> Path:
    out = tmp_path / "publisher.pub.json"
    out.write_text(json.dumps(ctx.keys.public_doc()))
    return out


def test_the_card_shows_the_signing_key_fingerprint_and_public_key(published):
    ctx, res = published
    doc = json.loads((Path(res["artifact_url"]) / "manifest.json").read_text())
    assert doc["signature"].startswith(f"ed25519:artifact-manifest:{ctx.keys.signing_active}:")
    assert doc["signing"]["fingerprint"] == ctx.keys.signing_key().fingerprint
    card = (Path(res["artifact_url"]) / "MODEL_CARD.md").read_text()
    assert ctx.keys.signing_key().fingerprint in card and doc["signing"]["public_key"] in card


def test_a_consumer_verifies_with_the_public_key_alone(store, tmp_path):
    import os
    import subprocess
    import sys

    ctx, put, base = store
    res = put("v1")
    pub = _public_key_file(ctx, tmp_path)
    repo = Path(__file__).resolve().parents[2]
    consumer = tmp_path / "consumer"  # a host with no keyring at all
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEPTONFLOW_")}
    env.update(PYTHONPATH=str(repo), LEPTONFLOW_HOME=str(consumer), LEPTONFLOW_KEYRING=str(consumer / "none.json"))
    run = [sys.executable, "-m", "tasks", "verify-artifact", str(base), "--public-key", str(pub)]
    ok = subprocess.run(run, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["version"] == res["version"] and out["signed_by"] == ctx.keys.signing_active
    assert not (consumer / "none.json").exists()  # no secret needed, none created
    assert json.loads((consumer / "trust" / "pointers.json").read_text())  # the sequence it saw is remembered
    for s in keyring.key_material_fingerprints(ctx.keys):
        assert s not in pub.read_text()
    other = tmp_path / "other.pub.json"
    other.write_text(json.dumps(keyring.new_keyring().public_doc()))
    bad = subprocess.run([*run[:-1], str(other)], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "REFUSED" in bad.stderr and "not among the trusted public keys" in bad.stderr


def test_a_signed_lake_manifest_never_passes_as_an_artifact(store):
    ctx, put, base = store
    adir = Path(put("v1")["artifact_url"])
    mpath = adir / "manifest.json"
    doc = json.loads(mpath.read_text())
    # the publisher's key signing lake manifests (a step signs every manifest it commits): such a
    # signature over an artifact's bytes is refused as an artifact signature
    lake_sig = ctx.lake.signer(publish.payload(doc))
    mpath.write_text(json.dumps({**doc, "signature": lake_sig}))
    with pytest.raises(ArtifactError, match="signed as a lake-manifest object, not as a artifact-manifest"):
        publish.verify_artifact(str(adir), ctx.keys)
    relabeled = lake_sig.replace(":lake-manifest:", ":artifact-manifest:")
    mpath.write_text(json.dumps({**doc, "signature": relabeled}))
    with pytest.raises(ArtifactError, match="does not match"):
        publish.verify_artifact(str(adir), ctx.keys)
    # and a real committed lake manifest, served as an artifact manifest, is refused before it is used
    version, _ = ctx.lake.new_version("clean", "events", DS)
    m = ctx.lake.commit(Manifest("clean", "events", DS, version))
    mpath.write_bytes(Path(ctx.lake.manifest_path(m.stage, "events", DS)).read_bytes())
    with pytest.raises(ArtifactError, match="signature check failed|not a leptonflow artifact manifest"):
        publish.verify_artifact(str(adir), ctx.keys)


def test_signing_key_rotation_keeps_old_artifacts_verifiable(store, tmp_path):
    ctx, put, base = store
    res1 = put("v1")
    old_id = ctx.keys.signing_active
    ring = keyring.load(ctx.keyring_path)
    new_id = keyring.rotate_signing_key(ring)
    ring.save()
    res2 = put("v2", ring=ring)
    assert res2["signed_by"] == new_id != old_id == res1["signed_by"]
    pub = signing.PublicKeys.from_file(_public_key_file(StepContext(dataset="events", ds=DS), tmp_path))
    assert publish.verify_artifact(res1["artifact_url"], pub)["signed_by"] == old_id  # signed before the rotation
    assert publish.verify_artifact(res2["artifact_url"], pub)["signed_by"] == new_id
    assert publish.verify_artifact(str(base), pub)["version"] == "v2"  # the pointer, signed by the new key
    assert ring.signing_keys[old_id].private is None


def _pointer(base: Path) -> dict:
    return json.loads((base / "latest.json").read_text())


def test_latest_is_signed_and_a_replayed_older_pointer_is_refused(store, tmp_path):
    ctx, put, base = store
    res1 = put("v1")
    state = publish.PointerState(tmp_path / "consumer-trust.json")
    first = _pointer(base)
    assert first["signature"].startswith("ed25519:pointer:") and first["sequence"] == res1["sequence"] == 1
    assert publish.verify_artifact(str(base), ctx.keys, state=state)["version"] == "v1"
    old_pointer = (base / "latest.json").read_bytes()  # the attacker keeps a copy of the signed pointer
    res2 = put("v2")
    assert res2["latest_moved"] and res2["sequence"] == 2
    assert publish.verify_artifact(str(base), ctx.keys, state=state)["version"] == "v2"
    (base / "latest.json").write_bytes(old_pointer)  # replay: validly signed, but older
    with pytest.raises(ArtifactError, match="sequence 1 is older than 2, already seen.*rollback refused"):
        publish.verify_artifact(str(base), ctx.keys, state=state)
    with pytest.raises(ArtifactError, match="sequence 1 is older than 2"):
        put("v3")  # nor does the publisher build on a pointer rolled back behind its back
    # a hand-edited pointer is not signed by the publisher
    forged = {**_pointer(base), "version": "v1", "sequence": 9}
    (base / "latest.json").write_text(json.dumps(forged))
    with pytest.raises(ArtifactError, match="pointer signature check failed"):
        publish.verify_artifact(str(base), ctx.keys)
    # one signed by someone else, or an artifact signature replayed as a pointer's, neither
    fake = {**forged, "signature": signing.signer_for(keyring.new_keyring(), signing.POINTER)(publish.payload(forged))}
    (base / "latest.json").write_text(json.dumps(fake))
    with pytest.raises(ArtifactError, match="not among the trusted public keys"):
        publish.verify_artifact(str(base), ctx.keys)
    art = {**forged, "signature": signing.signer_for(ctx.keys, signing.ARTIFACT)(publish.payload(forged))}
    (base / "latest.json").write_text(json.dumps(art))
    with pytest.raises(ArtifactError, match="signed as a artifact-manifest object, not as a pointer"):
        publish.verify_artifact(str(base), ctx.keys)
    unsigned = {k: v for k, v in forged.items() if k != "signature"}  # the old, unsigned pointer format
    (base / "latest.json").write_text(json.dumps(unsigned))
    with pytest.raises(ArtifactError, match="pointer signature check failed: unsigned"):
        publish.verify_artifact(str(base), ctx.keys)


def test_republishing_an_older_version_leaves_latest_and_rollback_is_explicit(store, tmp_path, capsys):
    ctx, put, base = store
    put("v1")
    put("v2")
    again = put("v1")  # re-running the older interval's publish
    assert again["reused"] and not again["latest_moved"] and again["latest_version"] == "v2"
    assert _pointer(base)["version"] == "v2"
    # even the publisher's own key cannot re-point latest at v1 with a plain pointer: v1 was published at
    # sequence 1, and only a rollback pointer may name an older version
    manifest = (base / "v1" / "manifest.json").read_bytes()
    sneaky = {"format": "leptonflow-pointer/1", "name": "events", "version": "v1", "sequence": 3, "moved_at": 0,
              "manifest_sha256": hashlib.sha256(manifest).hexdigest()}
    sneaky["signature"] = signing.signer_for(ctx.keys, signing.POINTER)(publish.payload(sneaky))
    saved = (base / "latest.json").read_bytes()
    (base / "latest.json").write_text(json.dumps(sneaky))
    with pytest.raises(ArtifactError, match="published at sequence 1.*rollback refused"):
        publish.verify_artifact(str(base), ctx.keys)
    (base / "latest.json").write_bytes(saved)
    assert publish.rollback_cli(["--name", "events", "--to", "v1"]) == 0
    rolled = json.loads(capsys.readouterr().out)
    assert rolled == {"name": "events", "version": "v1", "sequence": 3, "rollback_of": "v2"}
    state = publish.PointerState(tmp_path / "trust.json")
    assert publish.verify_artifact(str(base), signing.PublicKeys.from_ring(ctx.keys), state=state)["version"] == "v1"
    assert put("v3")["sequence"] == 4  # and publishing goes on from there


def test_an_unsigned_pointer_of_the_old_format_is_replaced_by_the_next_publish(store):
    ctx, put, base = store
    put("v1")
    legacy = {"name": "events", "version": "v1", "manifest_sha256": _pointer(base)["manifest_sha256"], "moved_at": 0}
    (base / "latest.json").write_text(json.dumps(legacy))  # what publish wrote before pointers were signed
    with pytest.raises(ArtifactError, match="unsigned"):
        publish.verify_artifact(str(base), ctx.keys)  # never trusted by a verifier
    res = put("v2")
    assert res["latest_moved"] and _pointer(base)["signature"] and publish.verify_artifact(str(base), ctx.keys)
    (base / "latest.json").write_text(json.dumps({**_pointer(base), "version": "v1"}))  # tampered: refused...
    with pytest.raises(ArtifactError, match="not publishing over it.*rollback-model"):
        put("v3")
    assert publish.rollback_cli(["--name", "events", "--to", "v2"]) == 0  # the operator's explicit repair
    assert _pointer(base)["rollback_of"] == "(no verified pointer)" and _pointer(base)["sequence"] == 3
    assert publish.verify_artifact(str(base), ctx.keys)["version"] == "v2"
