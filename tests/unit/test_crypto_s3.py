"""PME on an object store: a real S3-protocol server on loopback (moto server mode) through s3fs.

Sidecar key material goes through pyarrow's filesystem adapter over fsspec; rotation
re-wraps it there without rewriting the data objects.
"""

from __future__ import annotations

import boto3
import fsspec
import pytest

from tasks.context import StepContext
from tasks.io import parquet as parquet_io
from tasks.security import crypto, keyring, rotation, secure
from tests.moto_server import moto_server
from tests.unit.secure_data import commit_table, events

DS = "2026-11-03"


@pytest.fixture
def s3_lake(lf_home, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="lake")
        # lake code opens plain URLs: the endpoint comes from fsspec's config, as in a deployment
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint, "skip_instance_cache": True})
        yield "s3://lake/root"


def test_encrypted_lake_on_s3_verifies_and_rotates(s3_lake):
    ctx = StepContext(dataset="events", ds=DS, lake_url=s3_lake)
    m = commit_table(ctx, "clean", {"": events(1500, DS)}, ctx.crypto())
    url = ctx.lake.full_url(ctx.lake.abspath(m, m.files[0]))
    assert url.startswith("s3://lake/root/clean/events/ds=2026-11-03/v=")
    fs, _ = fsspec.core.url_to_fs(url)
    assert fs.exists(crypto.key_material_url(url))
    assert parquet_io.read_table(url, ctx.crypto()).num_rows == m.files[0].rows
    with pytest.raises(parquet_io.ParquetReadError, match="s3://lake/root/clean"):
        parquet_io.read_table(url, None)
    out = secure.run(ctx)
    assert out["checked"] == {"clean": 1} and out["all_encrypted"]

    before = parquet_io.sha256_of(url)
    ring = ctx.keys
    keyring.add_master_key(ring)
    ring.save()
    summary = rotation.rotate_lake(s3_lake, ring, "events")
    assert summary["files"] == 1 and summary["manifests"] == 1
    assert parquet_io.sha256_of(url) == before
    assert crypto.file_key_ids(url) == {ring.active}
    fresh = StepContext(dataset="events", ds=DS, lake_url=s3_lake)
    assert secure.run(fresh)["key_ids"] == [ring.active]
    assert parquet_io.read_table(url, fresh.crypto()).equals(events(1500, DS))
