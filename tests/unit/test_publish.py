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
from tasks.io.lake import FileEntry, Manifest
from tasks.publishing import publish
from tasks.publishing.publish import ArtifactError
from tasks.security import keyring
from tasks.training.metrics import metric_value
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
              "compress_backends": ["int8-ts", "fp32-onnx", "int8-onnx"], "compress_finetune_epochs": 1,
              "compress_max_train_rows": 2000, "compress_latency_repeats": 3, "seed": 0}
    compress.compress_and_commit(ctx.lake, ctx.dataset, ctx.ds, model, {"hidden": [48, 24]},
                                 {"task": "classification"}, data, params, "fp", "code")


@pytest.fixture(scope="module")
def template_home(tmp_path_factory, model_and_data) -> Path:
    """A LEPTONFLOW_HOME with a keyring, a committed `compressed` stage and Data Docs: built once, copied per test."""
    model, data = model_and_data
    home = tmp_path_factory.mktemp("template") / "lfhome"
    ctx = StepContext(dataset="events", ds=DS, lake_url=str(home / "lake"),
                      keyring_path=str(home / "keys" / "keyring.json"))
    _compressed_lake(ctx, model, data)
    # committed GX Data Docs of the interval (what tasks.validation.validate leaves in the lake)
    page = b"<html>clean suite: 31 expectations passed</html>"
    idir = ctx.lake.interval_dir("validation", "events", DS)
    ctx.lake.fs.makedirs(f"{idir}/clean", exist_ok=True)
    ctx.lake.fs.pipe_file(f"{idir}/clean/index.html", page)
    ctx.lake.commit(Manifest("validation", "events", DS, "v1", files=[
        FileEntry("clean/index.html", 0, len(page), hashlib.sha256(page).hexdigest())],
        extra={"suites": {"clean": {"success": True, "evaluated_expectations": 31}}}))
    return home


@pytest.fixture
def published(lf_home, template_home):
    for sub in ("lake", "keys"):
        shutil.copytree(template_home / sub, lf_home / sub)
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
    assert doc["lineage"]["manifests"]["validation"]["version"] == "v1"
    assert (adir / "validation" / "clean" / "index.html").read_bytes().startswith(b"<html>clean suite")
    assert doc["lineage"]["plans"]["plan_train"] == {"nproc": 1, "device": "cpu"}
    assert doc["lineage"]["interval"]["ds"] == DS and doc["code"]["version"]
    assert set(doc["params"]) >= {"model_name"}  # publish's own settings: its cache key
    # the settings each upstream step ran with travel in the lineage (here: what compress_and_commit was given)
    compressed_params = doc["lineage"]["manifests"]["compressed"]["params"]
    assert compressed_params["seed"] == 0 and compressed_params["compress_budget"] == 0.02
    for rel, meta in doc["files"].items():
        assert (adir / rel).stat().st_size == meta["bytes"]
    assert {"model.ts", "MODEL_CARD.md", "compression.png", "compression.md"} <= set(doc["files"])
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
    model_file = Path(res["artifact_url"]) / "model.ts"
    blob = bytearray(model_file.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    model_file.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="model.ts: checksum mismatch"):
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
                              verify_ring=keyring.load(ctx.keyring_path))
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
        shutil.copytree(template_home / sub, lf_home / sub)
    ctx = StepContext(dataset="events", ds=DS, params={"seed": 0, "api_key": "hunter2"})
    with pytest.raises(SettingError, match="setting api_key: is not a leptonflow setting"):
        publish.run(ctx)
    assert not (lf_home / "artifacts").exists() or not any((lf_home / "artifacts").rglob("manifest.json"))
