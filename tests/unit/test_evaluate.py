"""Evaluation: metrics against sklearn, the evaluation manifest, verified weights-only loading of the model."""

from __future__ import annotations

import hashlib
import io
import json
import pickle

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from tasks.context import StepContext
from tasks.errors import IntegrityError
from tasks.io.lake import FileEntry, Manifest
from tasks.io.parquet import read_table
from tasks.training.evaluate import run
from tasks.training.metrics import MetricError, classification_metrics, regression_metrics, reliability
from tasks.training.model import build_model
from tasks.training.predict import load_model, predict
from tests.train_data import make_split


def commit_model(ctx: StepContext, stats: dict, hparams: dict) -> torch.nn.Module:
    """A `model` manifest as the train step commits it (model.pt state_dict + model_config.json)."""
    torch.manual_seed(1)
    model = build_model(stats, hparams)
    version, vdir = ctx.lake.new_version("model", ctx.dataset, ctx.ds)
    files = []
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    cfg = json.dumps({"hparams": hparams, "feature_stats": stats, "arch": model.arch}).encode()
    for name, data in (("model.pt", buf.getvalue()), ("model_config.json", cfg)):
        ctx.lake.fs.pipe_file(f"{vdir}/{name}", data)
        files.append(FileEntry(f"v={version}/{name}", 0, len(data), hashlib.sha256(data).hexdigest()))
    ctx.lake.commit(Manifest("model", ctx.dataset, ctx.ds, version, files=files))
    return model.eval()


def test_classification_metrics_match_sklearn_and_calibration():
    rng = np.random.default_rng(0)
    p = rng.random(5000)
    y = (rng.random(5000) < p).astype(np.float32)  # calibrated by construction
    m = classification_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["log_loss"] == pytest.approx(log_loss(y, p), rel=1e-6)
    assert m["accuracy"] == pytest.approx(np.mean((p >= 0.5) == (y == 1)))
    assert m["ece"] < 0.03 and sum(b["n"] for b in m["reliability"]) == 5000
    # always 0.9 confident on a 50% event: ECE 0.4 in one bin
    ece, curve = reliability(np.array([0, 1] * 50, dtype=float), np.full(100, 0.9))
    assert ece == pytest.approx(0.4) and len(curve) == 1 and curve[0]["lo"] == pytest.approx(0.9)
    with pytest.raises(MetricError, match="test split has a single label class .*auc is undefined"):
        classification_metrics(np.ones(4), np.full(4, 0.7))  # refused, not a fake number


def test_regression_metrics():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 4.0, 0.0]))
    assert m["rmse"] == pytest.approx(np.sqrt(13 / 3)) and m["mae"] == pytest.approx(5 / 3)


def test_run_scores_the_committed_model_on_the_test_split(lf_home):
    ctx = StepContext(dataset="events", ds="2026-11-06", params={"encrypt": True})
    split = make_split(ctx.lake, ds=ctx.ds, rows={"train": 2000, "val": 300, "test": 900}, crypto=ctx.crypto())
    stats = split.extra["feature_stats"]
    commit_model(ctx, stats, {"hidden": [8], "dropout": 0.0})
    res = run(ctx)

    trained = load_model(ctx.lake, ctx.lake.require("model", "events", ctx.ds))
    model, stats2 = trained.model, trained.stats
    tables = [read_table(ctx.lake.abspath(split, f), ctx.crypto()) for f in split.group_files("test")]
    y = np.concatenate([t.column("purchased").to_numpy().astype(float) for t in tables])
    p = np.concatenate([predict(model, stats2, t) for t in tables])
    assert res["rows"] == 900 == len(p)
    assert res["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert res["log_loss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), rel=1e-5)
    m = ctx.lake.require("evaluation", "events", ctx.ds)
    assert sorted(f.path.rsplit("/", 1)[-1] for f in m.files) == ["metrics.json", "reliability.png"]
    assert open(res["paths"]["reliability.png"], "rb").read(4) == b"\x89PNG"
    assert run(ctx)["cache_hit"] is True


def test_regression_model_and_tampered_weights(lf_home):
    ctx = StepContext(dataset="events", ds="2026-11-07", params={"encrypt": False})
    split = make_split(ctx.lake, ds=ctx.ds, rows={"train": 1000, "val": 200, "test": 400})
    stats = {**split.extra["feature_stats"], "task": "regression", "label": "session_events",
             "numeric_features": ["price", "quantity", "hour"]}
    commit_model(ctx, stats, {"hidden": [4], "dropout": 0.0})
    res = run(ctx)
    assert res["task"] == "regression" and res["rows"] == 400 and res["rmse"] >= res["mae"] > 0

    m = ctx.lake.require("model", "events", ctx.ds)
    path = ctx.lake.abspath(m, next(f for f in m.files if f.path.endswith("model.pt")))
    data = bytearray(open(path, "rb").read())
    data[-30] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(IntegrityError, match=r"model.pt: sha256 .* does not match the manifest") as err:
        load_model(ctx.lake, m)
    assert err.value.problem == "sha256"
    open(path, "wb").write(bytes(data[:-1]))
    with pytest.raises(IntegrityError, match=r"model.pt: size .* does not match the manifest"):
        load_model(ctx.lake, m)


def test_load_model_refuses_pickled_payloads_and_missing_files(lf_home):
    """Only a plain state dict is loaded (weights_only); a missing file is named."""
    ctx = StepContext(dataset="events", ds="2026-11-08", params={"encrypt": False})
    split = make_split(ctx.lake, ds=ctx.ds, rows={"train": 500, "val": 100, "test": 100})
    stats = split.extra["feature_stats"]
    commit_model(ctx, stats, {"hidden": [4], "dropout": 0.0})
    m = ctx.lake.require("model", "events", ctx.ds)
    assert load_model(ctx.lake, m, stats).hparams == {"hidden": [4], "dropout": 0.0}
    blob = pickle.dumps({"w": _Evil()}, protocol=2)  # unpickling it would run code
    entry = m.entry("model.pt")
    ctx.lake.fs.pipe_file(ctx.lake.abspath(m, entry), blob)
    forged = Manifest("model", "events", ctx.ds, m.version, files=[
        FileEntry(entry.path, 0, len(blob), hashlib.sha256(blob).hexdigest()), m.entry("model_config.json")])
    ctx.lake.commit(forged)  # signed by the lake: only the weights_only load stands in the way
    with pytest.raises(IntegrityError, match=r"model.pt: not a plain state dict") as err:
        load_model(ctx.lake, ctx.lake.require("model", "events", ctx.ds))
    assert err.value.problem == "weights"
    ctx.lake.fs.rm(ctx.lake.abspath(m, entry))
    with pytest.raises(IntegrityError, match=r"model.pt: missing"):
        load_model(ctx.lake, ctx.lake.require("model", "events", ctx.ds))


class _Evil:
    """Runs code when unpickled: torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (print, ("pwned",))
