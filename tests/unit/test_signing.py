"""Manifest signatures: key id in the signature, edits and foreign keys detected, legacy form accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.context import StepContext
from tasks.io.lake import Lake, Manifest, ManifestError
from tasks.security import keyring, signing

DS = "2026-11-03"


def test_signature_names_the_signing_key_and_covers_the_payload(tmp_path):
    ring = keyring.load(tmp_path / "k.json")
    sig = signing.signer_for(ring)(b"payload")
    assert sig.startswith(f"hmac-sha256:{ring.signing_key_id}:")
    assert signing.signature_key_id(sig) == ring.signing_key_id
    verify = signing.verifier_for(ring)
    assert verify(b"payload", sig)
    assert not verify(b"payload!", sig)
    assert not verify(b"payload", sig.replace(ring.signing_key_id, "sk-other"))  # id is MAC'd
    assert not verify(b"payload", "")
    assert signing.verify(ring.signing_key, b"payload", signing.sign(ring.signing_key, b"payload"))  # legacy form
    assert verify(b"payload", signing.sign(ring.signing_key, b"payload"))


def test_signing_key_id_reveals_nothing_of_the_key(tmp_path):
    ring = keyring.load(tmp_path / "k.json")
    for s in keyring.key_material_fingerprints(ring):
        assert s not in ring.signing_key_id
        assert ring.signing_key.hex()[:12] not in ring.signing_key_id


def _commit(ctx: StepContext) -> Path:
    lake = ctx.lake
    version, _ = lake.new_version("clean", ctx.dataset, ctx.ds)
    lake.commit(Manifest("clean", ctx.dataset, ctx.ds, version, rows=5, extra={"accounting": {"rows_in": 5}}))
    return Path(lake.interval_dir("clean", ctx.dataset, ctx.ds)) / "_manifest.json"


def test_edited_manifest_fails_the_signature_check(lf_home):
    ctx = StepContext(dataset="events", ds=DS)
    path = _commit(ctx)
    assert ctx.lake.require("clean", "events", DS).rows == 5
    doc = json.loads(path.read_text())
    doc["extra"]["accounting"]["rows_in"] = 6
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=r"_manifest.json: manifest signature check failed"):
        ctx.lake.require("clean", "events", DS)


def test_manifest_signed_by_another_keyring_is_rejected(lf_home, tmp_path):
    ctx = StepContext(dataset="events", ds=DS)
    path = _commit(ctx)
    other = keyring.generate(tmp_path / "other.json")
    foreign = Lake(ctx.lake_url, signer=signing.signer_for(other), verifier=signing.verifier_for(other))
    with pytest.raises(ManifestError, match="signature"):
        foreign.require("clean", "events", DS)
    # an attacker re-signing with their own key is caught by the real verifier
    m = Manifest.from_json(path.read_text())
    m.rows = 99
    foreign.commit(m)
    with pytest.raises(ManifestError, match="signature"):
        ctx.lake.require("clean", "events", DS)
