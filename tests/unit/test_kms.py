"""A real KMS behind PME: AWS KMS (boto3) against moto's KMS server on loopback.

The master key never leaves the KMS: the keyring holds none, files' KEKs are wrapped by kms:Encrypt
(bound to their PME role by the encryption context), and workers only ask kms:Decrypt, with
credentials from the provider chain, given nothing but the key id and the endpoint.
"""

from __future__ import annotations

import json
import pickle

import boto3
import pytest
import requests

from tasks.context import Settings, StepContext
from tasks.errors import KeyringError, SettingError
from tasks.io import parquet as parquet_io
from tasks.security import crypto, keyring, rotation, secure
from tasks.security.kms import AwsKms, KmsConfig
from tests.moto_server import moto_server
from tests.unit.secure_data import commit_table, events, secured_interval

DS = "2026-11-03"


@pytest.fixture
def kms(lf_home, monkeypatch):
    """A KMS-protocol server on a free loopback port with one symmetric key; credentials by the provider chain."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto_server() as endpoint:
        requests.post(f"{endpoint}/moto-api/reset", timeout=30)  # moto's state is per process: start empty
        client = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1")
        key_id = client.create_key(Description="leptonflow test")["KeyMetadata"]["KeyId"]
        client.create_alias(AliasName="alias/leptonflow", TargetKeyId=key_id)
        yield {"backend": "aws-kms", "key_id": "alias/leptonflow", "region": "us-east-1", "endpoint_url": endpoint}


def _kms_keyring(lf_home, kms) -> str:
    path = lf_home / "keys" / "kms-keyring.json"
    keyring.generate(path, kms=kms)  # `python -m tasks keys init --kms ...`
    return str(path)


def _read_on_worker(c, url: str) -> int:
    return parquet_io.read_table(url, c).num_rows


def test_files_are_wrapped_by_the_kms_and_workers_only_ask_it_to_unwrap(kms, lf_home, tmp_path):
    from distributed import Client, LocalCluster

    ctx = StepContext(dataset="events", ds=DS, keyring_path=_kms_keyring(lf_home, kms))
    assert ctx.keys.master_keys == {}  # no master key outside the KMS
    c = ctx.crypto()
    assert c.key_id == "alias/leptonflow" and c.kms == KmsConfig.from_dict(kms) and c.keyring_path == ""
    url = str(tmp_path / "data" / "f.parquet")
    entry = parquet_io.write_table(url, events(1500, DS), "f.parquet", crypto=c)
    assert entry.key_id == "alias/leptonflow"
    side = (tmp_path / "data" / "_KEY_MATERIAL_FOR_f.parquet.json").read_text()
    assert "aws1:alias%2Fleptonflow:" in side and crypto.file_key_ids(url) == {"alias/leptonflow"}
    with pytest.raises(parquet_io.ParquetReadError, match=str(url)):
        parquet_io.read_table(url, None)
    blob = pickle.dumps(c)
    assert len(blob) < 1024  # key id, endpoint, PII columns: no keyring path, no key
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            assert client.submit(_read_on_worker, pickle.loads(blob), url).result() == 1500


def test_a_wrapped_key_is_bound_to_its_role(kms):
    backend = AwsKms(KmsConfig.from_dict(kms))
    dek = bytes(range(32))
    wrapped = backend.wrap(crypto.ROLE_DATA, dek)
    assert backend.unwrap(crypto.ROLE_DATA, wrapped) == dek and dek.hex() not in wrapped
    with pytest.raises(KeyringError, match=r"KMS key 'alias/leptonflow': decrypt refused \(InvalidCiphertext"):
        backend.unwrap(crypto.ROLE_PII, wrapped)  # a data key cannot pose as a PII key
    with pytest.raises(KeyringError, match="malformed"):
        backend.unwrap(crypto.ROLE_DATA, wrapped[:-8] + "!!!!!!!!")


def test_secure_seals_and_rotation_moves_a_local_lake_under_the_kms(kms, lf_home):
    ctx = StepContext(dataset="events", ds=DS)  # the embedded local keyring
    secured_interval(ctx)
    secure.run(ctx)
    old = ctx.keys.active
    ring = keyring.load(ctx.keyring_path)
    ring.kms = dict(kms)  # the keys Connection / LEPTONFLOW_KMS now names a KMS
    ring.save()
    out = rotation.rotate_lake(ctx.lake_url, ring, "events")
    assert out["key_id"] == "alias/leptonflow" and out["previous_key_ids"] == [old] and out["seals_updated"] == 1
    keyring.revoke(ring, old)
    ring.save()
    fresh = StepContext(dataset="events", ds=DS)
    assert secure.verify_seal(fresh) and secure.run(fresh)["key_ids"] == ["alias/leptonflow"]
    m = fresh.lake.require("split", "events", DS)
    assert sum(parquet_io.read_table(fresh.lake.abspath(m, e), fresh.crypto()).num_rows for e in m.files) == m.rows


def test_the_kms_is_chosen_by_settings_or_the_keys_connection(kms, lf_home, monkeypatch):
    env = Settings.from_env({"LEPTONFLOW_HOME": str(lf_home), "LEPTONFLOW_KEYRING": str(lf_home / "keys" /
                                                                                         "keyring.json"),
                             "LEPTONFLOW_KMS": json.dumps(kms)})
    ctx = StepContext(dataset="events", ds=DS, env=env)
    assert ctx.crypto().kms.key_id == "alias/leptonflow"
    m = commit_table(ctx, "clean", {"": events(200, DS)}, ctx.crypto())
    assert crypto.file_key_ids(ctx.lake.full_url(ctx.lake.abspath(m, m.files[0]))) == {"alias/leptonflow"}
    for bad, problem in (({**kms, "secret_access_key": "x"}, "unknown field"), ({**kms, "backend": "gcp"}, "backend")):
        with pytest.raises(SettingError, match=f"LEPTONFLOW_KMS.*{problem}"):
            Settings.from_env({"LEPTONFLOW_KMS": json.dumps(bad)})
    from leptonflow_airflow.hooks import ConnectionConfigError, KeyringHook

    doc = keyring.new_keyring(kms).to_doc()
    monkeypatch.setenv("AIRFLOW_CONN_LEPTONFLOW_KEYS", json.dumps({"conn_type": "generic", "extra": doc}))
    assert KeyringHook().config().document["kms"]["key_id"] == "alias/leptonflow"
    doc["kms"]["password"] = "x"
    monkeypatch.setenv("AIRFLOW_CONN_LEPTONFLOW_KEYS", json.dumps({"conn_type": "generic", "extra": doc}))
    with pytest.raises(ConnectionConfigError, match="leptonflow_keys.*unknown field"):
        KeyringHook().config()
