"""Compression: structured pruning really shrinks layers, the search gates on the budget, the stage commits,
and the whole path runs on current torch / onnx APIs (no deprecation warning)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tasks.compression import compress, export, prune
from tasks.errors import IntegrityError
from tasks.io import verified
from tasks.io.lake import Lake
from tasks.security import signing
from tasks.security.keyring import generate
from tasks.training.metrics import metric_value
from tests.unit.tabular_toy import ToyTabular, make_data, train_toy


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, compress.TabularData, compress.TabularData, compress.TabularData]:
    tr, va, te = make_data(3000, 0), make_data(800, 1), make_data(800, 2)
    model = train_toy(ToyTabular(hidden=(64, 32)), *tr, epochs=4)
    return model, *(compress.TabularData.from_numpy(*d) for d in (tr, va, te))


def _linears(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def test_pairs_follow_dataflow_into_a_head_outside_the_sequential():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.GELU(), nn.Linear(16, 8), nn.ReLU())
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 1)
            self.skip = nn.Linear(6, 8)

        def forward(self, x_num, x_cat):
            h = self.body(x_num)
            return self.head(self.norm(h + self.skip(x_num))).squeeze(-1)

    pairs = prune.find_pairs(Net())
    # body.3 -> head passes a residual add and a LayerNorm: not prunable; skip feeds the add: not prunable
    assert pairs == [prune.PrunablePair("body.0", "body.3", ("body.1",))]


def test_pruning_removes_dead_units_exactly_and_shrinks_linears():
    torch.manual_seed(0)
    model = ToyTabular(hidden=(32, 16)).eval()
    first = model.mlp[0]
    with torch.no_grad():  # half of the first layer's units are dead (zero in, zero out): least important
        first.weight[::2] = 0.0
        first.bias[::2] = 0.0
    x_num, x_cat, _ = make_data(64, 3)
    xn, xc = torch.from_numpy(x_num), torch.from_numpy(x_cat)
    pruned, widths = prune.prune_model(model, 0.5)
    pruned.eval()
    assert widths == {"mlp.0": 16, "mlp.3": 8}
    assert _linears(pruned) == [(20, 16), (16, 8), (8, 1)]
    assert _linears(model) == [(20, 32), (32, 16), (16, 1)]  # the original is untouched
    assert prune.count_parameters(pruned) < prune.count_parameters(model) / 2
    # mlp.0: exactly the dead units went, so its output is unchanged; check that sub-network directly
    keep = torch.arange(1, 32, 2)
    torch.manual_seed(1)
    z = torch.randn(5, 20)
    assert torch.allclose(pruned.mlp[1](pruned.mlp[0](z)), model.mlp[1](model.mlp[0](z))[:, keep])
    with torch.no_grad():
        assert pruned(xn, xc).shape == (64,)


def test_resize_rebuilds_shapes_for_weights_only_loading(trained):
    model, _, val, _ = trained
    pruned, widths = prune.prune_model(model, 0.5)
    buf = io.BytesIO()
    torch.save(pruned.state_dict(), buf)
    fresh = prune.resize(ToyTabular(hidden=(64, 32)), widths)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert np.array_equal(compress.predict(fresh, val), compress.predict(pruned.eval(), val))
    with pytest.raises(ValueError, match="no.such"):
        prune.resize(ToyTabular(), {"no.such": 3})


def test_reference_is_measured_from_its_state_dict_and_calibration_sample_is_seeded(trained):
    model, train, val, _ = trained
    b = compress.backend("fp32-torch").build(model, compress.Inputs(val.x_num[:8], val.x_cat[:8],
                                                                     *compress.calibration_sample(train, 4)))
    assert b.filename == "model.pt" and not compress.backend("fp32-torch").served
    assert np.array_equal(compress.predict(b.runner, val), compress.predict(model, val))
    one, two = compress.calibration_sample(train, 100, seed=3), compress.calibration_sample(train, 100, seed=3)
    assert one[0].shape == (100, train.x_num.shape[1]) and np.array_equal(one[0], two[0])
    assert len(compress.calibration_sample(train, 10**6)[0]) == len(train)  # capped by the split
    with pytest.raises(ValueError, match="unknown compression backend"):
        compress.backend("int8-ts")  # TorchScript serving is gone
    with pytest.raises(ValueError, match="compress_calibration_rows must be >= 1"):
        compress.calibration_sample(train, 0)


def test_int8_makes_a_wide_model_several_times_smaller():
    x_num, x_cat, y = make_data(300, 4)
    data = compress.TabularData.from_numpy(x_num, x_cat, y)
    result = compress.search(ToyTabular(hidden=(512, 256)).eval(), data, data, "classification", budget=1.0,
                             ratios=[0.0], finetune_epochs=0, repeats=3)
    by = {c.name: c for c in result.candidates}
    assert list(by) == ["p00-fp32-torch", "p00-fp32-onnx", "p00-int8-onnx", "p00-int8-static-onnx"]
    assert by["p00-int8-onnx"].size_bytes * 3 < by["p00-fp32-onnx"].size_bytes  # measured, not assumed
    assert by["p00-int8-static-onnx"].size_bytes * 3 < by["p00-fp32-onnx"].size_bytes
    assert [c.format for c in by.values()] == ["pt", "onnx", "onnx", "onnx"]
    assert [c.served for c in by.values()] == [False, True, True, True]
    assert result.chosen.quantized  # budget 1.0: everything fits, the smallest (an int8 one) wins
    assert result.baseline.name == "p00-fp32-torch" and not result.baseline.chosen


def test_search_keeps_smallest_within_budget(trained):
    model, train, val, _ = trained
    result = compress.search(model, train, val, "classification", budget=0.01, ratios=[0.5, 0.9],
                             backends=["int8-onnx", "int8-static-onnx"], finetune_epochs=1, repeats=3,
                             calibration_rows=512)
    names = [c.name for c in result.candidates]
    backends = ("fp32-torch", "fp32-onnx", "int8-onnx", "int8-static-onnx")
    assert names == [f"p{r}-{b}" for r in ("00", "50", "90") for b in backends]
    for c in result.candidates:
        assert c.size_bytes > 0 and c.latency_b1_ms > 0 and c.latency_b256_ms > 0
        assert c.latency_b1_p99_ms >= c.latency_b1_ms and c.latency_b256_p99_ms >= c.latency_b256_ms
        assert c.within_budget == (c.metric_drop <= 0.01 + 1e-12)
    chosen = result.chosen
    assert chosen.within_budget and chosen.served
    fits = [c for c in result.candidates if c.within_budget and c.served]
    assert chosen.size_bytes == min(c.size_bytes for c in fits)
    assert sum(c.chosen for c in result.candidates) == 1
    base = result.candidates[0]
    assert base.metric == pytest.approx(result.baseline_metric) and base.metric_drop == pytest.approx(0.0)
    assert result.candidates[4].parameters < base.parameters
    # the float ONNX export serves the same model: same metric as PyTorch
    assert result.candidates[1].metric == pytest.approx(base.metric, abs=1e-4)
    table = compress.markdown_table(result)
    assert table.count("\n") == 2 + len(result.candidates) and "**yes**" in table
    assert table.count("reference (not served)") == 3
    assert compress.plot_png(result)[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_fits_publishes_uncompressed(trained):
    model, train, val, _ = trained
    result = compress.search(model, train, val, "classification", budget=0.0, ratios=[0.95],
                             backends=["fp32-onnx"], finetune_epochs=0, repeats=3)
    assert [c.name for c in result.candidates] == ["p00-fp32-torch", "p00-fp32-onnx", "p95-fp32-torch",
                                                   "p95-fp32-onnx"]
    assert result.candidates[3].metric_drop > 0  # 95% of units gone, no fine-tune: AUC falls
    assert result.chosen.name == "p00-fp32-onnx" and not result.compressed
    with pytest.raises(ValueError, match="compress_budget must be >= 0"):
        compress.search(model, train, val, "classification", budget=-0.1)


def test_regression_metric_is_rmse_increase():
    x_num, x_cat, y = make_data(1500, 5, task="regression")
    data = compress.TabularData.from_numpy(x_num, x_cat, y)
    model = train_toy(ToyTabular(hidden=(32, 16)), x_num, x_cat, y, epochs=3, task="regression")
    result = compress.search(model, data, data, "regression", budget=0.05, ratios=[0.5], finetune_epochs=1,
                             backends=["int8-static-onnx"], repeats=3)
    assert result.metric_name == "rmse"
    rmse = float(np.sqrt(np.mean((compress.predict(model, data) - y) ** 2)))
    assert result.baseline_metric == pytest.approx(rmse, rel=1e-5)
    for c in result.candidates:
        assert c.metric_drop == pytest.approx(c.metric - rmse, abs=1e-6)


def test_single_class_val_is_a_clear_error(trained):
    model, train, val, _ = trained
    one_class = compress.TabularData(val.x_num, val.x_cat, torch.zeros(len(val)))
    with pytest.raises(ValueError, match="val split has a single label class"):
        compress.search(model, train, one_class, "classification", repeats=1)
    with pytest.raises(ValueError, match="val split: 2 rows have no label value"):
        metric_value("classification", np.array([0.0, np.nan, 1.0, np.nan]), np.zeros(4))
    with pytest.raises(ValueError, match="row count"):
        compress.TabularData(val.x_num[:3], val.x_cat, val.y)


def test_compress_and_commit_writes_a_signed_stage(tmp_path, trained):
    model, train, val, test = trained
    ring = generate(tmp_path / "keys.json")
    lake = Lake(str(tmp_path / "lake"), signer=signing.signer_for(ring), verifier=signing.verifier_for(ring))
    params = {"compress_budget": 0.02, "compress_ratios": [0.5],
              "compress_backends": ["int8-onnx", "int8-static-onnx"], "compress_finetune_epochs": 1,
              "compress_max_train_rows": 1000, "compress_latency_repeats": 3, "compress_calibration_rows": 256,
              "seed": 0}
    m = compress.compress_and_commit(lake, "events", "2026-11-02", model, {"hidden": [64, 32]},
                                     {"task": "classification"}, {"train": train, "val": val, "test": test},
                                     params, "fp-1", "code-1")
    got = lake.require("compressed", "events", "2026-11-02")  # signature verified on read
    assert got.version == m.version
    names = {f.path.split("/", 1)[1] for f in got.files}
    assert {"model.pt", "compression.json", "compression.md", "compression.png",
            "candidates.json"} <= names
    summary = got.extra["summary"]
    structure = json.loads(verified.read_bytes(lake, got, next(f for f in got.files
                                                                  if f.path.endswith("compression.json"))))
    assert structure["candidate"] == summary["chosen"]["name"]
    assert structure["serving_format"] in names and summary["serving_format"] == structure["serving_format"]
    # every candidate is served as ONNX; model.pt holds the float weights it was made from
    assert structure["serving_format"] == "model.onnx" and "model.ts" not in names
    assert structure["backend"] != "fp32-torch" and structure["state_dict"] == "float"
    assert [p["format"] for p in summary["parity"]] == ["onnx"]
    assert all(p["ok"] and p["rows"] == len(test) for p in summary["parity"])
    assert summary["baseline"] == "p00-fp32-torch" and summary["size_ratio"] > 1
    assert summary["latency_b1_p99_ms"] >= summary["latency_b1_p50_ms"] > 0
    assert summary["chosen"]["within_budget"] and summary["chosen"]["chosen"]
    assert lake.cache_hit("compressed", "events", "2026-11-02", "fp-1", "code-1", params) is not None
    # a tampered file is refused by the sha256 check
    entry = next(f for f in got.files if f.path.endswith("model.pt"))
    path = lake.abspath(got, entry)
    with open(path, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(IntegrityError, match=r"model.pt: size .* does not match the manifest"):
        verified.read_bytes(lake, got, entry)


def test_run_step_on_pipeline_manifests_then_cache_hit(lf_home, tmp_path):
    """compress.run on real split/model manifests (datagen -> features -> build_model), then publish.run."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.context import StepContext
    from tasks.io.lake import FileEntry, Manifest
    from tasks.io.parquet import write_table
    from tasks.prep import datagen, features
    from tasks.publishing import publish
    from tasks.training.model import build_model

    ds = "2026-11-05"
    ctx = StepContext(dataset="events", ds=ds, params={"encrypt": False, "compress_ratios": [0.5],
                                                       "compress_finetune_epochs": 1, "compress_latency_repeats": 3})
    summary = datagen.generate(str(tmp_path / "raw"), ctx.spec, start_ds=ds, rows_per_day=3000, seed=3,
                               faults=datagen.FaultRates.none(), files_per_day=1)
    table = pq.read_table(summary["intervals"][ds]["files"][0])
    bucket = np.array([int(hashlib.sha256(u.encode()).hexdigest()[:4], 16) % 10
                       for u in table.column("user_id").to_pylist()])
    parts = {"train": table.filter(pa.array(bucket < 6)), "val": table.filter(pa.array((bucket >= 6) & (bucket < 8))),
             "test": table.filter(pa.array(bucket >= 8))}
    stats = features.fit(parts["train"], ctx.spec)
    lake = ctx.lake
    version, vdir = lake.new_version("split", "events", ds)
    entries = [write_table(f"{vdir}/{g}/part-0.parquet", t, f"v={version}/{g}/part-0.parquet", group=g)
               for g, t in parts.items()]
    lake.commit(Manifest("split", "events", ds, version, files=entries, extra={"feature_stats": stats}))

    x_num, x_cat, y = features.transform(parts["train"], stats)
    model = train_toy(build_model(stats, {"hidden": [32]}), x_num, x_cat, y, epochs=3)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    blobs = {"model.pt": buf.getvalue(), "model_config.json": json.dumps({"hparams": {"hidden": [32]}}).encode()}
    mversion, mdir = lake.new_version("model", "events", ds)
    mfiles = []
    for name, blob in blobs.items():
        lake.fs.pipe_file(f"{mdir}/{name}", blob)
        mfiles.append(FileEntry(f"v={mversion}/{name}", 0, len(blob), hashlib.sha256(blob).hexdigest()))
    lake.commit(Manifest("model", "events", ds, mversion, files=mfiles))
    from tests.evaluated import commit_evaluation

    commit_evaluation(lake, "events", ds, mversion)  # the publish gate's input

    first = compress.run(ctx)
    assert first["cache_hit"] is False and first["chosen"]["within_budget"]
    assert first["chosen"]["name"].startswith(("p00-", "p50-"))
    again = compress.run(ctx)
    assert again["cache_hit"] is True and again["version"] == first["version"]

    # an evaluation of this model that passed the baseline gate (tasks.training.baselines): publishing needs one
    eversion, _ = lake.new_version("evaluation", "events", ds)
    lake.commit(Manifest("evaluation", "events", ds, eversion, extra={
        "model_version": mversion, "metrics": {"auc": 0.8},
        "comparison": {"task": "classification", "metric": "auc", "model": 0.8, "trivial": 0.5, "linear": 0.79}}))
    res = publish.run(ctx)
    served = publish.load_published(res["artifact_url"], ctx.keys)
    assert isinstance(served, export.OnnxModule)
    test = compress.TabularData.from_numpy(*features.transform(parts["test"], stats))
    auc = metric_value("classification", test.y.numpy(), compress.predict(served, test))
    assert auc == pytest.approx(first["test_metric"], abs=1e-9)
    doc = json.loads((Path(res["artifact_url"]) / "manifest.json").read_text())
    assert doc["lineage"]["manifests"]["split"]["version"] == version
    assert doc["lineage"]["manifests"]["model"]["version"] == mversion


_DEPRECATION_SCRIPT = """
import json, sys, tempfile
from tasks.compression import compress, export
from tasks.io.lake import Lake
from tests.unit.tabular_toy import ToyTabular, make_data, train_toy
tr, va, te = make_data(1200, 0), make_data(400, 1), make_data(400, 2)
model = train_toy(ToyTabular(hidden=(32, 16)), *tr, epochs=2)
data = {g: compress.TabularData.from_numpy(*d) for g, d in (("train", tr), ("val", va), ("test", te))}
params = {"compress_budget": 1.0, "compress_ratios": [0.5], "compress_backends": list(compress.BACKENDS),
          "compress_finetune_epochs": 1, "compress_latency_repeats": 2, "compress_calibration_rows": 128, "seed": 0}
with tempfile.TemporaryDirectory() as tmp:
    m = compress.compress_and_commit(Lake(tmp), "events", "2026-11-02", model, {}, {"task": "classification"},
                                     data, params, "fp", "code")
    names = sorted(c["backend"] for c in m.extra["candidates"])
    served = export.OnnxModule(export.onnx_int8_static(export.to_onnx(model, data["val"].x_num, data["val"].x_cat),
                                                       tr[0][:64], tr[1][:64]))
    served(data["val"].x_num[:4], data["val"].x_cat[:4])
sys.stdout.write(json.dumps(names))
"""


def test_compress_path_emits_no_deprecation_warning():
    """Prune, fine-tune, every backend (torch.export ONNX export, onnxruntime dynamic and static int8),
    parity, commit and serving, in a fresh interpreter where any DeprecationWarning / FutureWarning is an
    error, imports included; nothing on stderr mentions a deprecation either (logged ones included)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    flags = [f"-Werror::{c}" for c in ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning")]
    proc = subprocess.run([sys.executable, *flags, "-c", _DEPRECATION_SCRIPT], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout) == sorted(list(compress.BACKENDS) * 2)  # ratios 0 and 0.5, all backends
    assert "deprecat" not in proc.stderr.lower(), proc.stderr[-4000:]


def test_quiet_ignores_only_the_torch_internal_warning():
    import warnings

    with pytest.warns(FutureWarning, match="some API is deprecated"), export.quiet():
        warnings.warn("some API is deprecated", FutureWarning, stacklevel=1)
    with pytest.warns(DeprecationWarning), export.quiet():
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", DeprecationWarning, stacklevel=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with export.quiet():  # raised inside torch.export on every export (pytorch/ao#4109): ignored
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
