"""Item 0 of issue 21, the parts that need no training run: training sized to the rows, label statistics and
the standardized regression target, the publish gate's rule and its refusals, the summary line."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from tasks import params
from tasks.context import StepContext
from tasks.io.lake import Manifest
from tasks.prep import features
from tasks.publishing import publish, report
from tasks.spec import spec_for
from tasks.training import baselines, sizing
from tasks.training.baselines import BaselineGateError
from tasks.training.model import build_model, init_output, loss_fn
from tests.evaluated import commit_evaluation
from tests.train_data import fit_stats, make_events

HP = {k: params.get(k).default for k in ("epochs", "batch_size", "min_steps", "min_epoch_steps", "lr",
                                         "lr_schedule", "warmup_fraction")}


# ---- sizing ------------------------------------------------------------------------------------
def test_batch_is_bounded_by_the_rows_and_min_steps_add_epochs():
    # ~1,000 rows a day (800 train) with the default batch 1024: not one step per epoch
    b = sizing.batch_for(800, HP["batch_size"], HP["min_epoch_steps"])
    assert b == 800 // HP["min_epoch_steps"] == 50
    assert sizing.batch_for(10_000_000, 1024, 16) == 1024  # big splits keep the setting
    assert sizing.batch_for(100, 1024, 16) == 32  # never below 32 rows...
    assert sizing.batch_for(20, 1024, 16) == 20  # ...unless the split is smaller
    assert sizing.batch_for(800, 16, 16) == 16  # batch_size stays the upper bound
    s = sizing.plan(800, b, 16, HP)
    assert s.epochs == math.ceil(HP["min_steps"] / 16) and s.total_steps >= HP["min_steps"]
    assert sizing.plan(10**7, 1024, 9766, HP).epochs == HP["epochs"]  # enough steps already: the setting's epochs
    assert sizing.plan(800, b, 16, {**HP, "min_steps": 0}).epochs == HP["epochs"]


def test_learning_rate_warms_up_then_decays_to_zero():
    s = sizing.plan(800, 50, 16, HP)
    lrs = [sizing.lr_at(i, s) for i in range(s.total_steps)]
    assert s.warmup_steps == round(HP["warmup_fraction"] * s.total_steps) > 0
    assert lrs[0] == pytest.approx(HP["lr"] / s.warmup_steps)
    assert max(lrs) == pytest.approx(HP["lr"]) == lrs[s.warmup_steps]
    assert all(a >= b for a, b in zip(lrs[s.warmup_steps:], lrs[s.warmup_steps + 1:], strict=False))
    assert lrs[-1] < 1e-3 * HP["lr"]
    flat = sizing.plan(800, 50, 16, {**HP, "lr_schedule": "constant", "warmup_fraction": 0.0})
    assert {sizing.lr_at(i, flat) for i in (0, 500, flat.total_steps - 1)} == {HP["lr"]}


# ---- label statistics and the standardized regression target -------------------------------------
def test_feature_stats_carry_the_train_label_mean_and_std_mergeably():
    spec = spec_for("events")
    table = make_events(3000, 5).drop_columns(["hour"])
    y = table.column("purchased").to_numpy(zero_copy_only=False).astype(float)
    whole = features.fit(table, spec)["target"]
    assert whole["count"] == 3000 and whole["mean"] == pytest.approx(y.mean()) and whole["std"] == pytest.approx(
        y.std())
    parts = [features.partial_fit(table.slice(1000 * i, 1000), spec, seed=i) for i in range(3)]
    merged = features.finalize(features.merge(*parts), spec)["target"]
    assert merged["mean"] == pytest.approx(y.mean()) and merged["std"] == pytest.approx(y.std())
    assert spec.label.column in features.source_columns(spec)  # clean hands the label to partial_fit


def test_regression_trains_standardized_and_predicts_on_the_label_scale():
    stats = {**fit_stats(make_events(500, 1)), "task": "regression", "target": {"mean": 150_000.0, "std": 40_000.0,
                                                                                "count": 500}}
    model = build_model(stats, {"hidden": [8]}).eval()
    assert model.arch["target"] == {"loc": 150_000.0, "scale": 40_000.0}
    init_output(model, stats)
    x_num, x_cat = torch.randn(4, 4), torch.zeros(4, 4, dtype=torch.long)
    with torch.no_grad():
        z = model.head(model.mlp(torch.cat([x_num] + [e(x_cat[:, i]) for i, e in enumerate(model.embeddings)], 1)))
        out = model(x_num, x_cat)
    assert torch.allclose(out, z.squeeze(-1) * 40_000 + 150_000)  # de-standardized in the graph
    y = torch.tensor([100_000.0, 200_000.0, 150_000.0, 190_000.0])
    loss = loss_fn("regression", model.arch["target"])(out, y)
    assert loss.item() == pytest.approx(torch.mean((out - y) ** 2).item() / 40_000**2, rel=1e-4)  # ~1, not ~1e9
    # an older model_config (no target): identity, as before
    assert build_model({k: v for k, v in stats.items() if k != "target"}).arch["target"] == {"loc": 0.0, "scale": 1.0}
    cls = {**fit_stats(make_events(500, 1)), "target": {"mean": 0.2, "std": 0.4, "count": 500}}
    m = build_model(cls, {"hidden": [8]})
    init_output(m, cls)
    assert m.head.bias.item() == pytest.approx(math.log(0.2 / 0.8))  # starts at the train prior


# ---- the gate ------------------------------------------------------------------------------------
def test_gate_rule_for_both_tasks():
    ok = baselines.gate("classification", 0.79, 0.5, 0.80, 0.15)
    assert ok.passed and not ok.reasons
    assert not baselines.gate("classification", 0.5, 0.5, 0.80, 0.15).passed  # not better than the prior
    far = baselines.gate("classification", 0.70, 0.5, 0.80, 0.15)  # 1 - AUC 0.30 vs 0.20 * 1.15
    assert not far.passed and "linear baseline" in far.reasons[0]
    assert baselines.gate("regression", 9_500.0, 95_000.0, 9_000.0, 0.15).passed
    worse = baselines.gate("regression", 43_887.0, 23_200.0, 8_200.0, 0.15)  # issue 21's regression figures
    assert not worse.passed and len(worse.reasons) == 2 and "23200.0000" in worse.reasons[0]
    assert not baselines.gate("regression", 11_000.0, 95_000.0, 9_000.0, 0.15).passed
    assert not baselines.gate("regression", 9_000.0, 95_000.0, None, 0.15).passed  # no linear fit: no publish


def test_enforce_refuses_missing_stale_and_failed_evaluations(lf_home):
    ctx = StepContext(dataset="events", ds="2026-11-04")
    with pytest.raises(BaselineGateError, match="not evaluated against the baselines"):
        baselines.enforce(None, None, 0.15)
    passed = commit_evaluation(ctx.lake, "events", ctx.ds, "model-v1")
    assert baselines.enforce(passed, Manifest("model", "events", ctx.ds, "model-v1"), 0.15).passed
    with pytest.raises(BaselineGateError, match="scored model version model-v1, not the current model-v2"):
        baselines.enforce(passed, Manifest("model", "events", ctx.ds, "model-v2"), 0.15)
    failed = commit_evaluation(ctx.lake, "events", ctx.ds, task="regression", model=43_887.0, trivial=23_200.0,
                               linear=8_200.0)
    with pytest.raises(BaselineGateError, match=r"test rmse: model 43887.0000, trivial 23200.0000, linear "
                                                r"8200.0000 \(tolerance 0.15\)"):
        baselines.enforce(failed, None, 0.15)


def test_publish_refuses_before_uploading_when_the_gate_fails(lf_home):
    ctx = StepContext(dataset="events", ds="2026-11-05")
    version, _ = ctx.lake.new_version("compressed", "events", ctx.ds)
    ctx.lake.commit(Manifest("compressed", "events", ctx.ds, version, extra={"summary": {}}))
    commit_evaluation(ctx.lake, "events", ctx.ds, model=0.5, trivial=0.5, linear=0.8)
    with pytest.raises(BaselineGateError, match="does not beat the trivial predictor"):
        publish.run(ctx)
    assert not (lf_home / "artifacts").exists() or not any((lf_home / "artifacts").rglob("*"))


def test_linear_baseline_on_the_transformed_features():
    stats = fit_stats(make_events(4000, 2))
    x_num, x_cat, y = features.transform(make_events(4000, 2), stats)
    lin = baselines.fit_linear("classification", stats, x_num, x_cat, y)
    xt, ct, yt = features.transform(make_events(2000, 3), stats)
    metrics = baselines.predictor_metrics("classification", yt, lin.predict(xt, ct))
    assert lin.name == "LogisticRegression" and metrics["auc"] > 0.75
    assert lin.design(xt, ct).shape == (2000, x_num.shape[1] + sum(len(stats["categorical"][c]["vocab"]) + 1
                                                                   for c in stats["categorical_features"]))


def test_summary_shows_model_trivial_and_linear_side_by_side():
    g = baselines.gate("regression", 9_312.5, 98_673.9, 9_340.8, 0.15).to_json()
    d = {"dataset": "houses", "ds": "2026-11-01", "lake": "/l", "artifacts": "/a",
         "stages": {"evaluation": {"extra": {"metrics": {"rmse": 9_312.5}, "gate": g}}}}
    line = next(x for x in report.summary_lines(d) if x.startswith("baselines:"))
    assert line == ("baselines: test rmse model 9312.5000 | trivial 98673.9000 | linear 9340.8000  gate PASSED "
                    "(tolerance 0.15)")
    bad = {**d, "stages": {"evaluation": {"extra": {"gate": baselines.gate("regression", 2e5, 1e5, 9e3, 0.15)
                                                   .to_json()}}}}
    text = "\n".join(report.summary_lines(bad))
    assert "gate FAILED (tolerance 0.15): the model's rmse 200000.0000 is not below" in text


def test_train_sample_is_bounded_and_verified(lf_home):
    from tasks.io.parquet import write_table

    ctx = StepContext(dataset="events", ds="2026-11-06", params={"encrypt": False})
    lake = ctx.lake
    tables = [make_events(700, s) for s in range(4)]
    stats = fit_stats(pa.concat_tables(tables))
    version, vdir = lake.new_version("split", "events", ctx.ds)
    entries = [write_table(f"{vdir}/train/part-{i}.parquet", t, f"v={version}/train/part-{i}.parquet", group="train")
               for i, t in enumerate(tables)]
    split = lake.commit(Manifest("split", "events", ctx.ds, version, files=entries, extra={"feature_stats": stats}))
    x_num, x_cat, y = baselines.train_sample(lake, split, stats, None, max_rows=1000, seed=1)
    assert x_num.shape == (1000, 4) and x_cat.shape == (1000, 4) and len(y) == 1000
    assert 0.05 < float(np.mean(y)) < 0.95
    everything = baselines.train_sample(lake, split, stats, None, max_rows=10_000)[2]
    assert len(everything) == 2800
