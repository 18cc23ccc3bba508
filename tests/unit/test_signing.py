"""Signatures: Ed25519 with a domain tag and a key id; public keys verify, only the private key signs;
edits, foreign keys and cross-domain replays are refused; rotated keys and legacy MACs stay verifiable."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tasks.context import StepContext
from tasks.errors import KeyringError
from tasks.io.lake import Lake, Manifest, ManifestError
from tasks.security import keyring, signing

DS = "2026-11-03"


def test_signature_names_domain_and_key_and_covers_the_payload(tmp_path):
    ring = keyring.generate(tmp_path / "k.json")
    sig = signing.signer_for(ring)(b"payload")
    assert sig.startswith(f"ed25519:{signing.LAKE}:{ring.signing_active}:")
    assert signing.signature_key_id(sig) == ring.signing_active
    verify = signing.verifier_for(ring)
    assert verify(b"payload", sig)
    assert not verify(b"payload!", sig)
    assert not verify(b"payload", "")
    other = keyring.new_keyring()
    forged = signing.signer_for(other)(b"payload").replace(other.signing_active, ring.signing_active)
    assert "does not match" in verify.problem(b"payload", forged)  # claiming a trusted key id does not help
    assert "not among the trusted" in verify.problem(b"payload", signing.signer_for(other)(b"payload"))


@pytest.mark.parametrize("signed_as", signing.DOMAINS)
def test_a_signature_of_one_domain_never_passes_in_another(tmp_path, signed_as):
    ring = keyring.generate(tmp_path / "k.json")
    sig = signing.signer_for(ring, signed_as)(b"{}")
    for domain in signing.DOMAINS:
        problem = signing.verifier_for(ring, domain).problem(b"{}", sig)
        assert (problem is None) == (domain == signed_as)
        relabeled = sig.replace(f":{signed_as}:", f":{domain}:")  # the label is not what is checked
        if domain != signed_as:
            assert "does not match" in signing.verifier_for(ring, domain).problem(b"{}", relabeled)
            assert "domain separation" in problem


def test_public_keys_verify_without_any_secret(tmp_path):
    ring = keyring.generate(tmp_path / "k.json")
    sig = signing.signer_for(ring, signing.ARTIFACT)(b"x")
    pub = tmp_path / "public.json"
    pub.write_text(json.dumps(ring.public_doc()))
    keys = signing.PublicKeys.from_file(pub)
    assert signing.verifier_for(keys, signing.ARTIFACT)(b"x", sig)
    assert keys.legacy_hmac_key is None and keys.fingerprints() == {ring.signing_active: ring.signing_key().fingerprint}
    for s in keyring.key_material_fingerprints(ring):
        assert s not in pub.read_text()
    # a PEM public key (SubjectPublicKeyInfo) works too
    pem = Ed25519PublicKey.from_public_bytes(ring.signing_key().public).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "k.pem").write_bytes(pem)
    assert signing.verifier_for(signing.PublicKeys.from_file(tmp_path / "k.pem"), signing.ARTIFACT)(b"x", sig)
    # handing a verifier the keyring itself as a "public key" is refused
    with pytest.raises(KeyringError, match="private key material"):
        signing.PublicKeys.from_file(tmp_path / "k.json")
    assert pickle.loads(pickle.dumps(keys)) == keys  # public keys may travel; signers never do
    with pytest.raises(KeyringError, match="never pickled"):
        pickle.dumps(signing.signer_for(ring))


def test_rotated_signing_key_keeps_old_signatures_verifiable(tmp_path):
    ring = keyring.generate(tmp_path / "k.json")
    old_id = ring.signing_active
    old_sig = signing.signer_for(ring, signing.ARTIFACT)(b"v1")
    new_id = keyring.rotate_signing_key(ring)
    new_sig = signing.signer_for(ring, signing.ARTIFACT)(b"v2")
    assert signing.signature_key_id(new_sig) == new_id != old_id
    public = signing.PublicKeys(dict((k.key_id, k.public) for k in ring.signing_keys.values()))
    verify = signing.verifier_for(public, signing.ARTIFACT)
    assert verify(b"v1", old_sig) and verify(b"v2", new_sig)
    assert ring.signing_keys[old_id].private is None  # nothing new can be signed with the old key


def test_legacy_hmac_manifests_verify_only_with_the_mac_key_and_only_as_lake_manifests():
    key = bytes(range(32))
    ring = keyring.new_keyring()
    ring.legacy_hmac_key = key
    payload = b'{"stage": "clean"}'
    with_id = "hmac-sha256:sk-1:" + hmac.new(key, b"leptonflow-manifest-v2\0sk-1\0" + payload,
                                             hashlib.sha256).hexdigest()
    bare = "hmac-sha256:" + hmac.new(key, payload, hashlib.sha256).hexdigest()
    lake = signing.verifier_for(ring, signing.LAKE)
    assert lake(payload, with_id) and lake(payload, bare) and not lake(payload + b" ", bare)
    assert "must be signed with Ed25519" in signing.verifier_for(ring, signing.ARTIFACT).problem(payload, bare)
    assert signing.verifier_for(ring, signing.ARTIFACT, allow_legacy_hmac=True)(payload, bare)
    public_only = signing.PublicKeys.from_ring(keyring.new_keyring())
    assert "no legacy MAC key" in signing.verifier_for(public_only).problem(payload, bare)


def _commit(ctx: StepContext) -> Path:
    lake = ctx.lake
    version, _ = lake.new_version("clean", ctx.dataset, ctx.ds)
    lake.commit(Manifest("clean", ctx.dataset, ctx.ds, version, rows=5, extra={"accounting": {"rows_in": 5}}))
    return Path(lake.manifest_path("clean", ctx.dataset, ctx.ds))


def test_edited_manifest_fails_the_signature_check(lf_home):
    ctx = StepContext(dataset="events", ds=DS)
    path = _commit(ctx)
    assert ctx.lake.require("clean", "events", DS).rows == 5
    assert json.loads(path.read_text())["signature"].startswith("ed25519:lake-manifest:")
    doc = json.loads(path.read_text())
    doc["extra"]["accounting"]["rows_in"] = 6
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=r"_manifest.json: manifest signature check failed \(Ed25519 signature"):
        ctx.lake.require("clean", "events", DS)


def test_manifest_signed_by_another_keyring_is_rejected(lf_home, tmp_path):
    ctx = StepContext(dataset="events", ds=DS)
    path = _commit(ctx)
    other = keyring.generate(tmp_path / "other.json")
    foreign = Lake(ctx.lake_url, signer=signing.signer_for(other), verifier=signing.verifier_for(other))
    with pytest.raises(ManifestError, match="signature"):
        foreign.require("clean", "events", DS)
    # an attacker re-signing an edited manifest with their own key is caught by the real verifier
    m = Manifest.from_json(path.read_text())
    m.rows = 99
    m.signature = signing.signer_for(other)(m.payload())
    path.write_text(m.to_json())
    with pytest.raises(ManifestError, match="signature check failed.*not among the trusted public keys"):
        ctx.lake.require("clean", "events", DS)


def test_a_reader_with_public_keys_only_reads_the_lake(lf_home, tmp_path):
    ctx = StepContext(dataset="events", ds=DS)
    _commit(ctx)
    reader = Lake(ctx.lake_url, verifier=signing.verifier_for(signing.PublicKeys.from_ring(ctx.keys)))
    assert reader.require("clean", "events", DS).rows == 5
