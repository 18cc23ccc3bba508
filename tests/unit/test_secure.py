"""The secure step on real encrypted lake outputs: what it checks, what it seals, what it catches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tasks.context import StepContext
from tasks.io import parquet as parquet_io
from tasks.io import verified
from tasks.io.lake import ManifestError
from tasks.security import crypto, keyring, rotation, secure
from tests.unit.secure_data import commit_table, events, secured_interval

DS = "2026-11-03"


@pytest.fixture
def ctx(lf_home) -> StepContext:
    return StepContext(dataset="events", ds=DS)


def _files(ctx, stage):
    m = ctx.lake.require(stage, ctx.dataset, ctx.ds)
    return [Path(ctx.lake.abspath(m, e)) for e in m.files]


@pytest.mark.parametrize("in_memory_max", [secure.IN_MEMORY_MAX, 0], ids=["fetched-once", "streamed"])
def test_secure_verifies_and_seals_every_stage(ctx, monkeypatch, in_memory_max):
    monkeypatch.setattr(secure, "IN_MEMORY_MAX", in_memory_max)
    made = secured_interval(ctx)
    out = secure.run(ctx)
    assert out["checked"] == {"clean": 1, "quarantine": 1, "split": 3}
    assert out["absent"] == ["quarantine_validation"] and out["files_checked"] == 5
    assert out["all_encrypted"] and out["verified"] and out["key_ids"] == [ctx.keys.active]
    seal = ctx.lake.require("secure", "events", DS)  # signed like any manifest
    assert seal.digest() == out["seal_digest"]
    for stage, m in made.items():
        info = seal.extra["checked"][stage]
        assert info["digest"] == m.digest() and info["version"] == m.version
        for rel, sha in info["key_material"].items():
            side = Path(crypto.key_material_url(ctx.lake.abspath(m, next(e for e in m.files if e.path == rel))))
            assert hashlib.sha256(side.read_bytes()).hexdigest() == sha
    assert secure.verify_seal(ctx)["sealed"] == ["clean", "quarantine", "split"]
    text = json.dumps(out) + seal.to_json()
    assert not any(s in text for s in keyring.key_material_fingerprints(ctx.keys))


def test_absent_stages_are_listed(ctx):
    commit_table(ctx, "clean", {"": events(100, DS)}, ctx.crypto())
    out = secure.run(ctx)
    assert out["checked"] == {"clean": 1} and out["absent"] == ["quarantine", "quarantine_validation", "split"]


@pytest.mark.parametrize("in_memory_max", [secure.IN_MEMORY_MAX, 0], ids=["fetched-once", "streamed"])
def test_flipped_byte_is_caught_naming_the_file(ctx, monkeypatch, in_memory_max):
    monkeypatch.setattr(secure, "IN_MEMORY_MAX", in_memory_max)
    secured_interval(ctx)
    victim = _files(ctx, "split")[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    with pytest.raises(secure.IntegrityError, match=rf"{victim}: sha256"):
        secure.run(ctx)
    with pytest.raises(secure.IntegrityError, match=str(victim)):
        verified.verified_paths(ctx.lake, ctx.lake.require("split", ctx.dataset, ctx.ds))
    assert len(verified.verified_paths(ctx.lake, ctx.lake.require("clean", ctx.dataset, ctx.ds))) == 1  # others usable


@pytest.mark.parametrize("in_memory_max", [secure.IN_MEMORY_MAX, 0], ids=["fetched-once", "streamed"])
def test_truncated_and_missing_files_are_named(ctx, monkeypatch, in_memory_max):
    monkeypatch.setattr(secure, "IN_MEMORY_MAX", in_memory_max)
    secured_interval(ctx)
    victim, gone = _files(ctx, "split")[:2]
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(secure.IntegrityError, match=rf"{victim}: size .* does not match") as err:
        secure.run(ctx)
    assert err.value.problem == "size" and err.value.path == str(victim)
    victim.unlink()
    gone.unlink()
    with pytest.raises(secure.IntegrityError, match=r"split/events/.*: missing") as err:
        secure.run(ctx)
    assert err.value.problem == "missing"


def test_edited_manifest_is_caught(ctx):
    secured_interval(ctx)
    path = Path(ctx.lake.manifest_path("quarantine", "events", DS))
    doc = json.loads(path.read_text())
    doc["files"][0]["rows"] = 19
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="quarantine.*signature"):
        secure.run(ctx)


def test_plaintext_file_is_refused_when_encryption_is_on(ctx):
    commit_table(ctx, "clean", {"": events(100, DS)}, crypto=None)
    with pytest.raises(secure.IntegrityError, match=r"clean/events/ds=2026-11-03/v=.*not encrypted"):
        secure.run(ctx)
    plain = StepContext(dataset="events", ds=DS, params={"encrypt": False})
    out = secure.run(plain)  # with the encrypt Param off only signatures and checksums are checked
    assert out["checked"] == {"clean": 1} and not out["all_encrypted"]


@pytest.mark.parametrize("in_memory_max", [secure.IN_MEMORY_MAX, 0], ids=["fetched-once", "streamed"])
def test_swapped_key_material_is_caught(ctx, monkeypatch, in_memory_max):
    monkeypatch.setattr(secure, "IN_MEMORY_MAX", in_memory_max)
    commit_table(ctx, "clean", {"": events(300, DS), "x": events(300, DS, seed=2)}, ctx.crypto())
    a, b = _files(ctx, "clean")
    sa, sb = Path(crypto.key_material_url(str(a))), Path(crypto.key_material_url(str(b)))
    sa.write_bytes(sb.read_bytes())  # valid key material, but of another file
    with pytest.raises(parquet_io.ParquetReadError, match=str(a)):
        secure.run(ctx)


def test_seal_detects_changes_made_outside_a_rotation(ctx):
    """A rotation keeps seals valid (tests/unit/test_rotation.py); anything else that changes a sealed
    sidecar or manifest is caught by the seal check, naming what changed."""
    made = secured_interval(ctx)
    secure.run(ctx)
    assert secure.verify_seal(ctx)["sealed"] == ["clean", "quarantine", "split"]
    a, b = _files(ctx, "split")[:2]
    side_a, side_b = Path(crypto.key_material_url(str(a))), Path(crypto.key_material_url(str(b)))
    original = side_a.read_bytes()
    side_a.write_bytes(side_b.read_bytes())  # valid key material, but another file's
    with pytest.raises(secure.IntegrityError, match=rf"{side_a}: key material changed after it was sealed"):
        secure.verify_seal(ctx)
    side_a.write_bytes(original)
    assert secure.verify_seal(ctx)
    ctx.lake.commit(made["quarantine"])  # the same version re-signed and re-committed: its digest is new
    with pytest.raises(secure.IntegrityError, match="quarantine.*manifest changed after it was sealed"):
        secure.verify_seal(StepContext(dataset="events", ds=DS))


def test_no_key_material_in_logs_outputs_or_lake(ctx, caplog, capsys):
    import logging

    caplog.set_level(logging.DEBUG)
    secured_interval(ctx)
    results = [secure.run(ctx)]
    rotation.cli(["--keyring", ctx.keyring_path, "--lake", ctx.lake_url, "--update-manifests"])
    fresh = StepContext(dataset="events", ds=DS)
    results.append(secure.run(fresh))
    ring = keyring.load(ctx.keyring_path)
    assert len(ring.master_keys) == 2
    fps = keyring.key_material_fingerprints(ring)
    text = caplog.text + capsys.readouterr().out + json.dumps(results) + repr(ring) + repr(fresh.crypto())
    lake_bytes = b"".join(p.read_bytes() for p in Path(ctx.lake_url).rglob("*") if p.is_file())
    for s in fps:
        assert s not in text and s.encode() not in lake_bytes
