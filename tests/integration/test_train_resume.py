"""Kill a training rank after a checkpoint, rerun the step: it resumes there and matches an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tasks.context import StepContext
from tasks.steps import run_step
from tasks.training.checkpoint import CheckpointStore
from tasks.training.train import checkpoint_url
from tests.train_data import make_split


@pytest.fixture(autouse=True)
def one_thread_per_rank(monkeypatch):
    """Ranks inherit OMP_NUM_THREADS=1: OpenMP spin-waits crawl on a shared, oversubscribed CPU."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"epochs": 2, "batch_size": 64, "lr": 3e-3, "checkpoint_every": 20, "patience": 3, "seed": 11,
          "train_nproc": 1, "train_workers": 1, "encrypt": False, "min_steps": 0}  # epochs only: a known step count
ROWS = {"train": 6000, "val": 1000, "test": 200}
STEPS_PER_EPOCH = 6000 // 64 + 1


def rank_processes(launcher: psutil.Process) -> list[psutil.Process]:
    """The rank processes under the step's process (not torchrun's launcher, not DataLoader workers)."""
    out = []
    for p in launcher.children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "tasks.training.train" in cmd and "torch.distributed.run" not in cmd and p.parent().cmdline() != cmd:
            out.append(p)
    return out


def test_killed_training_resumes_from_its_checkpoint(lf_home, tmp_path):
    ds = "2026-11-04"
    ctx = StepContext(dataset="events", ds=ds, params=PARAMS)
    make_split(ctx.lake, ds=ds, rows=ROWS, row_group_rows=1024)
    store = CheckpointStore(checkpoint_url(ctx.lake, "events", ds))

    cmd = [sys.executable, "-m", "tasks", "train", "--dataset", "events", "--ds", ds]
    cmd += [arg for k, v in PARAMS.items() for arg in ("--param", f"{k}={json.dumps(v)}")]
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        step = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300  # a guard against a hung child, not a speed bound
            while (store.latest_step() or 0) < 20:
                assert step.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint appeared"
                time.sleep(0.02)
            ranks = rank_processes(psutil.Process(step.pid))
            assert len(ranks) == 1, [r.cmdline() for r in ranks]
            os.kill(ranks[0].pid, signal.SIGKILL)
            rc = step.wait(timeout=120)
        finally:
            if step.poll() is None:
                step.kill()
    assert rc != 0
    assert "training ranks failed" in log_path.read_text()
    killed_at = store.latest_step()
    assert killed_at is not None and 20 <= killed_at < STEPS_PER_EPOCH  # mid first epoch
    assert not ctx.lake.manifest("model", "events", ds)  # nothing committed by the failed attempt

    resumed = run_step("train", ctx)  # the Airflow retry: same interval, same params
    assert resumed["resumed_from_step"] == killed_at
    assert resumed["global_step"] == 2 * STEPS_PER_EPOCH
    assert resumed["epochs_run"] == 2

    # the same training without the interruption, on an identical split
    ds2 = "2026-11-05"
    ctx2 = StepContext(dataset="events", ds=ds2, params=PARAMS)
    make_split(ctx2.lake, ds=ds2, rows=ROWS, row_group_rows=1024)
    whole = run_step("train", ctx2)
    assert whole["resumed_from_step"] is None and whole["global_step"] == resumed["global_step"]
    assert whole["best_val_metric"] > 0.68
    # exact data position + optimizer + RNG state restored: the resumed run retraces the uninterrupted one
    assert abs(resumed["best_val_metric"] - whole["best_val_metric"]) < 1e-3
