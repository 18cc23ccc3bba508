"""Issue 21 item 0 with the real steps: on ~1,000 rows a day the DEFAULT settings beat the trivial predictor and
come within ``baseline_tolerance`` of the linear baseline (classification and a regression label in the
hundreds of thousands), and a broken model (weights zeroed) is refused by the publish gate.

clean (a Dask LocalCluster on loopback) -> split -> train (torchrun, CPU) -> evaluate -> compress -> publish, all
through :func:`tasks.steps.run_step`; encryption off to save time.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import torch
from distributed import LocalCluster

from tasks import params
from tasks.context import StepContext
from tasks.io import verified
from tasks.io.lake import Manifest
from tasks.steps import run_step
from tasks.training.baselines import BaselineGateError, error_of
from tests.small_data import write_events, write_houses, write_specs

log = logging.getLogger(__name__)
DS = "2026-11-01"
# compress quickly: the gate, not the compression search, is under test
COMPRESS = {"compress_ratios": [0.0], "compress_backends": ["fp32-onnx"], "compress_finetune_epochs": 0,
            "compress_latency_repeats": 2}
CASES = {  # dataset -> (raw writer, linear estimator)
    "events": (write_events, "LogisticRegression"),
    "houses": (write_houses, "Ridge"),
}


@pytest.fixture(autouse=True)
def one_thread_per_rank(monkeypatch):
    """Ranks inherit OMP_NUM_THREADS=1: OpenMP spin-waits crawl on a shared, oversubscribed CPU."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def dask_address():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0", protocol="tcp",
                      host="127.0.0.1") as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def specs(lf_home, tmp_path, monkeypatch) -> Path:
    """A specs folder with the houses (regression) spec next to events; the loader reads LEPTONFLOW_SPECS."""
    folder = write_specs(tmp_path / "specs")
    monkeypatch.setenv("LEPTONFLOW_SPECS", str(folder))
    return folder


def _zeroed_model(ctx: StepContext) -> Manifest:
    """Commit a new model version: the trained one with every weight zeroed (it predicts a constant)."""
    lake = ctx.lake
    m = lake.require("model", ctx.dataset, ctx.ds)
    state = torch.load(io.BytesIO(verified.read_bytes(lake, m, m.entry("model.pt"))), weights_only=True)
    buf = io.BytesIO()
    torch.save({k: torch.zeros_like(v) for k, v in state.items()}, buf)
    version, vdir = lake.new_version("model", ctx.dataset, ctx.ds)
    files = [lake.put_bytes(vdir, version, "model.pt", buf.getvalue()),
             lake.put_bytes(vdir, version, "model_config.json", verified.read_named(lake, m, "model_config.json"))]
    return lake.commit(Manifest("model", ctx.dataset, ctx.ds, version, files=files, extra=m.extra))


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_defaults_beat_the_baselines_and_a_broken_model_is_refused(dataset, specs, lf_home, dask_address):
    write, estimator = CASES[dataset]
    write(lf_home / "lake", DS, rows=1000, seed=1)
    ctx = StepContext(dataset, DS, params={"encrypt": False, **COMPRESS},
                      cluster={"backend": "address", "address": dask_address})
    assert ctx.spec.label.task == ("regression" if dataset == "houses" else "classification")
    res = {step: run_step(step, ctx) for step in ("clean", "split", "train", "evaluate")}

    # training was sized to the ~800 train rows: not 3 epochs of one step each
    train, ev = res["train"], res["evaluate"]
    rows = res["split"]["rows"]["train"]
    assert 700 <= rows <= 900 and train["input_rows"] == rows
    assert train["batch_size"] == rows // params.get("min_epoch_steps").default
    assert train["global_step"] >= params.get("min_steps").default
    assert train["sizing"]["schedule"] == "cosine" and train["sizing"]["warmup_steps"] > 0

    # the three predictors on the same test rows, in the step result and the evaluation manifest
    g, tol = ev["gate"], params.get("baseline_tolerance").default
    print(f"\n{dataset}: test {g['metric']} model {g['model']:.4f} | trivial {g['trivial']:.4f} | "
          f"linear {g['linear']:.4f} ({ev['rows']} test rows; {train['epochs_run']} epochs, "
          f"{train['global_step']} steps of {train['batch_size']})")
    assert g["passed"], g["reasons"]
    assert ev["baselines"]["linear"]["estimator"] == estimator and ev["baselines"]["linear"]["train_rows"] == rows
    assert error_of(g["task"], g["model"]) < error_of(g["task"], g["trivial"])
    assert error_of(g["task"], g["model"]) <= error_of(g["task"], g["linear"]) * (1 + tol)
    extra = ctx.lake.require("evaluation", dataset, DS).extra
    assert extra["comparison"] == ev["comparison"] and extra["gate"] == g
    assert set(extra["baselines"]) == {"model", "trivial", "linear"}
    if dataset == "houses":  # the label scale: a price in the hundreds of thousands, errors in the thousands
        assert g["trivial"] > 50_000 and g["model"] < 0.2 * g["trivial"]

    # the gate passed: compress and publish; the card shows the three side by side
    run_step("compress", ctx)
    pub = run_step("publish", ctx)
    card = (Path(pub["artifact_url"]) / "MODEL_CARD.md").read_text()
    assert f"model {g['model']:.4f} | trivial {g['trivial']:.4f} | linear {g['linear']:.4f}" in card

    # a broken model: evaluated, recorded as failing, and refused by publish with the figures named
    _zeroed_model(ctx)
    bad = run_step("evaluate", ctx)
    assert not bad["gate"]["passed"] and bad["gate"]["model"] == pytest.approx(bad["gate"]["trivial"], rel=1e-6)
    print(f"{dataset} zeroed: test {bad['gate']['metric']} model {bad['gate']['model']:.4f} | trivial "
          f"{bad['gate']['trivial']:.4f} | linear {bad['gate']['linear']:.4f} -> refused")
    run_step("compress", ctx)
    with pytest.raises(BaselineGateError, match=rf"refusing to publish {dataset} ds={DS}: the model's "
                                                rf"{g['metric']} .* trivial predictor") as err:
        run_step("publish", ctx)
    assert f"test {g['metric']}: model" in str(err.value) and "linear" in str(err.value)
    latest = json.loads((Path(pub["artifact_url"]).parent / "latest.json").read_text())
    assert latest["version"] == pub["version"]  # nothing new was published
