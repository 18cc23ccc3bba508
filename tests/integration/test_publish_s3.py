"""Publishing to a real S3-protocol server on loopback (moto in server mode) through s3fs."""

from __future__ import annotations

import json

import boto3
import pytest

from tasks.compression import compress
from tasks.context import StepContext
from tasks.io.lake import Manifest
from tasks.publishing import publish
from tasks.training.metrics import metric_value
from tests.moto_server import moto_server
from tests.unit.tabular_toy import ToyTabular, make_data, train_toy

DS = "2026-11-04"


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on a free loopback port, with one empty bucket."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto_server() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="models")
        yield endpoint, client


def test_publish_verify_and_refuse_tampering_on_s3(lf_home, s3, capsys):
    endpoint, client = s3
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing", "skip_instance_cache": True}
    tr, va, te = make_data(1500, 0), make_data(500, 1), make_data(500, 2)
    model = train_toy(ToyTabular(hidden=(32, 16)), *tr, epochs=2)
    data = {k: compress.TabularData.from_numpy(*d) for k, d in {"train": tr, "val": va, "test": te}.items()}
    ctx = StepContext(dataset="events", ds=DS, artifacts_url="s3://models/prod",
                      artifacts_options=options, params={"seed": 0})
    params = {"compress_budget": 0.02, "compress_ratios": [0.5],
              "compress_backends": ["fp32-onnx", "int8-onnx", "int8-static-onnx"], "compress_finetune_epochs": 1,
              "compress_max_train_rows": 1500, "compress_latency_repeats": 3,
              "compress_calibration_rows": 256, "seed": 0}
    compress.compress_and_commit(ctx.lake, "events", DS, model, {}, {"task": "classification"}, data, params,
                                 "fp", "code")
    version, _ = ctx.lake.new_version("evaluation", "events", DS)  # an evaluation that passed the baseline gate
    ctx.lake.commit(Manifest("evaluation", "events", DS, version, extra={
        "model_version": None, "comparison": {"task": "classification", "model": 0.8, "trivial": 0.5, "linear": 0.79}}))

    res = publish.run(ctx)
    assert res["verified"] and res["artifact_url"] == f"s3://models/prod/models/events/{res['version']}"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="models", Prefix="prod/")["Contents"]}
    assert f"prod/models/events/{res['version']}/manifest.json" in keys
    assert f"prod/models/events/{res['version']}/model.onnx" in keys
    manifest = client.get_object(Bucket="models", Key=f"prod/models/events/{res['version']}/manifest.json")
    text = manifest["Body"].read().decode()
    assert "endpoint_url" not in text and '"secret"' not in text  # credentials never published
    latest = json.loads(client.get_object(Bucket="models", Key="prod/models/events/latest.json")["Body"].read())
    assert latest["version"] == res["version"]
    assert "endpoint_url" not in json.dumps(latest)

    served = publish.load_published("s3://models/prod/models/events", ctx.keys, options)
    auc = metric_value("classification", data["test"].y.numpy(), compress.predict(served, data["test"]))
    summary = ctx.lake.require("compressed", "events", DS).extra["summary"]
    assert auc == pytest.approx(summary["test_metric"], abs=1e-9)

    cli_opts = ["--storage-options", json.dumps(options)]
    assert publish.verify_cli([res["artifact_url"], *cli_opts]) == 0
    capsys.readouterr()
    # tamper with one object behind the store's back
    key = f"prod/models/events/{res['version']}/compression.md"
    body = client.get_object(Bucket="models", Key=key)["Body"].read()
    client.put_object(Bucket="models", Key=key, Body=body.replace(b"|", b"!", 1))
    assert publish.verify_cli([res["artifact_url"], *cli_opts]) == 1
    err = capsys.readouterr().err
    assert "compression.md" in err and "checksum mismatch" in err
    with pytest.raises(publish.ArtifactError, match="compression.md"):
        publish.load_published(res["artifact_url"], ctx.keys, options)
