"""Keyring files: created only explicitly (0600 in a 0700 folder), refused when missing or readable by
others, Ed25519 signing keys, rotation helpers, leak fingerprints."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.context import StepContext
from tasks.security import keyring
from tasks.security.keyring import KeyringError

REPO = Path(__file__).resolve().parents[2]


def test_keyring_file_is_created_0600_in_a_0700_folder_only_by_init(tmp_path):
    path = tmp_path / "keys" / "keyring.json"
    ring = keyring.generate(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert ring.active in ring.master_keys and len(ring.master_keys[ring.active]) == 32
    assert ring.signing_key().key_id == ring.signing_active and ring.legacy_hmac_key is None
    again = keyring.load(path)  # a load reads, never regenerates
    assert again.master_keys == ring.master_keys and again.signing_key().private == ring.signing_key().private
    with pytest.raises(KeyringError, match="already exists"):
        keyring.generate(path)
    keyring.add_master_key(again)
    again.save()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_missing_keyring_is_an_error_naming_the_path_and_the_command(tmp_path, lf_home):
    absent = tmp_path / "typo" / "keyring.json"
    with pytest.raises(KeyringError, match=rf"no keyring at {absent}; create one with `python -m tasks keys init"):
        keyring.load(absent)
    ctx = StepContext(dataset="events", ds="2026-11-03", keyring_path=str(absent))
    with pytest.raises(KeyringError, match="no keyring at"):
        ctx.lake.require("clean", "events", "2026-11-03")  # not "signature check failed" after inventing a key
    assert not absent.parent.exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_keyring_readable_by_others_is_refused_naming_file_and_fix(tmp_path, mode):
    path = tmp_path / "keyring.json"
    keyring.generate(path)
    os.chmod(path, mode)
    with pytest.raises(KeyringError, match=rf"{path} is accessible by group/others \(mode 0{mode:o}\).*chmod 600"):
        keyring.load(path)
    os.chmod(path, 0o600)
    assert keyring.load(path).active


def test_keys_init_is_the_explicit_command(tmp_path):
    path = tmp_path / "k" / "keyring.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "LEPTONFLOW_KEYRING": str(path)}
    env.pop("LEPTONFLOW_KEYRING_JSON", None)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "tasks", "keys", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    out = run("init")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    ring = keyring.load(path)
    assert info["active"] == ring.active and info["fingerprint"] == ring.signing_key().fingerprint
    assert run("init").returncode != 0  # never overwrites
    public = run("export-public")
    doc = json.loads(public.stdout)
    assert doc["keys"][ring.signing_active]["fingerprint"] == ring.signing_key().fingerprint
    for s in keyring.key_material_fingerprints(ring):
        assert s not in public.stdout and s not in run("show").stdout
    assert run("rotate-signing").returncode == 0
    rotated = keyring.load(path)
    assert rotated.signing_active != ring.signing_active
    assert rotated.signing_keys[ring.signing_active].private is None  # retired: public half only


def test_concurrent_creation_yields_one_keyring(tmp_path):
    path = tmp_path / "keyring.json"
    code = ("import sys\nfrom tasks.security import keyring\ntry:\n    print(keyring.generate(sys.argv[1]).active)\n"
            "except keyring.KeyringError:\n    print('exists')")
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
        for _ in range(4)
    ]
    outs = [p.communicate()[0].strip() for p in procs]
    assert sorted(outs)[:3] == ["exists"] * 3 and keyring.load(path).active in outs
    assert not [p for p in tmp_path.iterdir() if p.name != "keyring.json"]  # no temp files left


def test_a_document_is_used_only_when_given(tmp_path):
    file_ring = keyring.generate(tmp_path / "keyring.json")
    doc_ring = keyring.new_keyring()
    got = keyring.load(tmp_path / "keyring.json", document=json.dumps(doc_ring.to_doc()))
    assert got.active == doc_ring.active != file_ring.active and got.path == ""
    with pytest.raises(KeyringError, match="secrets backend"):
        got.save()
    with pytest.raises(KeyringError, match="not valid JSON"):
        keyring.load(document="{not json")


def test_malformed_keyrings_name_the_problem(tmp_path):
    bad = tmp_path / "bad.json"
    keyring.write_private(bad, json.dumps({"active": "mk-1", "master_keys": {}}).encode())
    with pytest.raises(KeyringError, match="bad.json.*active master key 'mk-1' is not in it"):
        keyring.load(bad)
    ring = keyring.new_keyring()
    doc = ring.to_doc()
    doc["signing"]["keys"][ring.signing_active]["public"] = base64.b64encode(b"x" * 32).decode()
    keyring.write_private(bad, json.dumps(doc).encode())
    with pytest.raises(KeyringError, match="does not match its public key"):
        keyring.load(bad)


def test_a_v1_keyring_still_loads_and_says_how_to_get_a_signing_key(tmp_path):
    v1 = {"active": "mk-1", "master_keys": {"mk-1": base64.b64encode(bytes(32)).decode()},
          "signing_key": base64.b64encode(bytes(range(32))).decode()}
    path = tmp_path / "old.json"
    keyring.write_private(path, json.dumps(v1).encode())
    ring = keyring.load(path)
    assert ring.legacy_hmac_key == bytes(range(32))  # kept: verifies manifests signed before Ed25519
    with pytest.raises(KeyringError, match="no active Ed25519 signing key.*keys rotate-signing"):
        ring.signing_key()
    keyring.rotate_signing_key(ring)
    assert ring.signing_key().private


def test_revocation_and_lookup_errors_name_the_key_id_never_the_key(tmp_path):
    ring = keyring.generate(tmp_path / "k.json")
    first = ring.active
    with pytest.raises(KeyringError, match="active key"):
        keyring.revoke(ring, first)
    second = keyring.add_master_key(ring)
    assert ring.active == second != first
    keyring.revoke(ring, first)
    with pytest.raises(KeyringError, match=f"{first}.*revoked") as err:
        ring.master_key(first)
    with pytest.raises(KeyringError, match="mk-nope.*not in the keyring"):
        ring.master_key("mk-nope")
    for s in keyring.key_material_fingerprints(ring):
        assert s not in str(err.value) and s not in repr(ring)


def test_fingerprints_cover_every_secret_in_every_form(tmp_path):
    ring = keyring.generate(tmp_path / "k.json")
    keyring.add_master_key(ring)
    fps = set(keyring.key_material_fingerprints(ring))
    forms = set(keyring.secret_forms(ring))
    secrets_ = [*ring.master_keys.values(), ring.signing_key().private]
    for key in secrets_:
        assert base64.b64encode(key).decode() in fps and key.hex() in fps and key.hex().upper() in fps
        assert key in forms  # raw bytes too
        for prefix in (b"", b"a", b"ab"):  # base64'd inside a larger document, at every alignment
            blob = base64.b64encode(prefix + key + b"tail").decode()
            assert any(f in blob for f in fps)
    # the keyring file itself contains them (the scan must find leaks of this kind)
    ring.save()
    text = (tmp_path / "k.json").read_text()
    assert any(f in text for f in fps)
    public = json.dumps(ring.public_doc())
    assert not any(f in public for f in fps)  # the public keys are not secret forms
