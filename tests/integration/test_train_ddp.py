"""Distributed training on CPU: 2 gloo ranks (encrypted split) agree with 1 rank at the same global batch."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch

from tasks import params
from tasks.context import StepContext
from tasks.io.parquet import read_table
from tasks.steps import run_step
from tasks.training.model import parse_hidden
from tasks.training.predict import load_model, predict
from tasks.training.train import PROGRESS_RE, checkpoint_url
from tests.train_data import make_split


@pytest.fixture(autouse=True)
def one_thread_per_rank(monkeypatch):
    """Ranks inherit OMP_NUM_THREADS=1: OpenMP spin-waits crawl on a shared, oversubscribed CPU."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

PARAMS = {"epochs": 2, "batch_size": 256, "lr": 5e-3, "checkpoint_every": 10, "patience": 2, "seed": 3,
          "min_steps": 0}  # epochs only: a known step count


def train(ds: str, nproc: int, encrypt: bool, workers: int | None = None) -> tuple[StepContext, dict]:
    params = {**PARAMS, "train_nproc": nproc, "encrypt": encrypt, "train_workers": workers}
    ctx = StepContext(dataset="events", ds=ds, params=params)
    make_split(ctx.lake, ds=ds, crypto=ctx.crypto())
    return ctx, run_step("train", ctx)


def test_two_gloo_ranks_match_one_rank(lf_home, caplog):
    ctx1, r1 = train("2026-11-02", 1, encrypt=False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tasks.training.train"):  # the ranks' output, as launch() relays it
        ctx2, r2 = train("2026-11-03", 2, encrypt=True, workers=1)  # ranks' DataLoader workers decrypt
    # rank 0 (only) logs one progress line per epoch, with samples/s and the ETA of the rest
    progress = [r.getMessage() for r in caplog.records if "progress: epoch" in r.getMessage()]
    assert len(progress) == 2 and all("[rank 0/2]" in line for line in progress), progress
    found = [re.search(PROGRESS_RE, line) for line in progress]
    assert all(found), progress
    assert [m.group(1, 2, 3) for m in found] == [("1", "2", "50"), ("2", "2", "100")]
    assert all(int(m.group(4).replace(",", "")) > 0 for m in found) and found[-1].group(5) == "0s"
    assert (r1["workers"], r2["workers"], r1["device"], r2["device"]) == (1, 2, "cpu", "cpu")
    split2 = ctx2.lake.require("split", "events", "2026-11-03")
    assert all(f.key_id for f in split2.files)
    # same global batch over the same rows: the same number of optimizer steps
    assert r1["global_step"] == r2["global_step"] == 2 * (6000 // 256 + 1)
    assert r1["epochs_run"] == r2["epochs_run"] == 2
    assert r1["best_val_metric"] > 0.68 and r2["best_val_metric"] > 0.68
    assert abs(r1["best_val_metric"] - r2["best_val_metric"]) < 0.03

    # the committed artifacts: weights (weights_only), config, metrics, curves
    m = ctx2.lake.require("model", "events", "2026-11-03")
    names = sorted(f.path.rsplit("/", 1)[-1] for f in m.files)
    assert names == ["curves.png", "metrics.json", "model.pt", "model_config.json"]
    assert open(r2["curve_path"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    state = torch.load(r2["model_path"], weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    metrics = json.loads(ctx2.lake.fs.cat_file(r2["curve_path"].replace("curves.png", "metrics.json")))
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]

    # both models score the same test rows alike
    t1 = load_model(ctx1.lake, ctx1.lake.require("model", "events", "2026-11-02"))
    t2 = load_model(ctx2.lake, ctx2.lake.require("model", "events", "2026-11-03"))
    model1, stats1, cfg1 = t1.model, t1.stats, t1.config
    model2, stats2 = t2.model, t2.stats
    assert cfg1["hparams"]["hidden"] == parse_hidden(params.get("hidden").default)
    assert cfg1["spec_fingerprint"] == ctx1.spec.fingerprint()
    test = [ctx1.lake.abspath(ctx1.lake.require("split", "events", "2026-11-02"), f)
            for f in ctx1.lake.require("split", "events", "2026-11-02").group_files("test")]
    table = read_table(test[0])
    p1, p2 = predict(model1, stats1, table), predict(model2, stats2, table)
    assert p1.shape == (table.num_rows,) and np.all((p1 > 0) & (p1 < 1))
    assert np.mean(np.abs(p1 - p2)) < 0.05

    # committed: checkpoints are gone and a retry of the same interval is a cache hit
    assert not ctx1.lake.fs.exists(checkpoint_url(ctx1.lake, "events", "2026-11-02"))
    again = run_step("train", ctx1)
    assert again["cache_hit"] is True and again["best_val_metric"] == r1["best_val_metric"]
