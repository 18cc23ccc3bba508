"""Keyring files: 0600 on creation, env override, rotation helpers, leak fingerprints."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys

import pytest

from tasks.security import keyring
from tasks.security.keyring import KeyringError


@pytest.fixture(autouse=True)
def _no_env_keyring(monkeypatch):
    monkeypatch.delenv("LEPTONFLOW_KEYRING_JSON", raising=False)


def test_keyring_file_is_created_0600_in_a_0700_folder(tmp_path):
    path = tmp_path / "keys" / "keyring.json"
    ring = keyring.load(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert ring.active in ring.master_keys and len(ring.master_keys[ring.active]) == 32
    again = keyring.load(path)  # a second load reads, never regenerates
    assert again.master_keys == ring.master_keys and again.signing_key == ring.signing_key
    keyring.add_master_key(again)
    again.save()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_concurrent_creation_yields_one_keyring(tmp_path):
    path = tmp_path / "keyring.json"
    code = "import sys, json; from tasks.security import keyring; print(keyring.load(sys.argv[1]).active)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    actives = {p.communicate()[0].strip() for p in procs}
    assert len(actives) == 1 and actives == {keyring.load(path).active}
    assert not [p for p in tmp_path.iterdir() if p.name != "keyring.json"]  # no temp files left


def test_env_document_overrides_the_file(tmp_path, monkeypatch):
    path = tmp_path / "keyring.json"
    file_ring = keyring.load(path)
    env_ring = keyring.generate(tmp_path / "other.json")
    monkeypatch.setenv("LEPTONFLOW_KEYRING_JSON", json.dumps(env_ring.to_doc()))
    got = keyring.load(path)
    assert got.active == env_ring.active != file_ring.active
    assert got.path == ""
    with pytest.raises(KeyringError, match="secrets backend"):
        got.save()
    assert keyring.load(path, use_env=False).active == file_ring.active
    monkeypatch.setenv("LEPTONFLOW_KEYRING_JSON", "{not json")
    with pytest.raises(KeyringError, match="LEPTONFLOW_KEYRING_JSON is not valid JSON"):
        keyring.load(path)


def test_malformed_and_missing_keyrings_name_the_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"active": "mk-1", "master_keys": {}}))
    with pytest.raises(KeyringError, match="bad.json.*signing_key"):
        keyring.load(bad)
    with pytest.raises(KeyringError, match="no keyring at"):
        keyring.load(tmp_path / "absent.json", create=False)


def test_revocation_and_lookup_errors_name_the_key_id_never_the_key(tmp_path):
    ring = keyring.load(tmp_path / "k.json")
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


def test_fingerprints_cover_every_key_in_b64_and_hex(tmp_path):
    ring = keyring.load(tmp_path / "k.json")
    keyring.add_master_key(ring)
    fps = set(keyring.key_material_fingerprints(ring))
    for key in [*ring.master_keys.values(), ring.signing_key]:
        assert base64.b64encode(key).decode() in fps and key.hex() in fps
    # the keyring file itself contains them (the scan must find leaks of this kind)
    ring.save()
    text = (tmp_path / "k.json").read_text()
    assert any(f in text for f in fps)
