"""Train benchmark: our streaming data path + loop vs bare torch loops over in-memory tensors.

Same model, batch size, optimizer and rows for every contender, in one run:

* ``leptonflow_workers<N>``: the real train step (``tasks.steps.run_step("train")``): torchrun-launched
  rank, StreamDataset over the *encrypted* split (decrypt + transform in the rank or its DataLoader workers),
  DDP-ready loop with checkpoints; samples/s is the step's own measure over its training loops
  (launch, validation and checkpoints at epoch ends excluded, periodic checkpoints included),
  once per ``--workers`` value (DataLoader workers per rank).
* ``bare_tensors``: the whole train split decoded and transformed up front, then a loop that
  slices shuffled in-memory tensors (no I/O at all): the upper bound, run before and after ours.
* ``tensor_dataloader``: the common recipe, ``TensorDataset`` + ``DataLoader(shuffle=True)``.

Target: leptonflow >= 0.8x bare_tensors on CPU, checked on samples per CPU-second with in-process
loading (train_workers=0), because wall-clock speed on a shared machine swings with other jobs;
wall-clock medians of every contender are reported too. Every contender gets ``--threads`` torch threads
(default 1: on a small shared CPU, OpenMP spin-waits make multi-threaded timings erratic); with
train_workers=1 our rank also has a DataLoader worker process doing read + decrypt + transform. Writes
bench/results/train.json.

    PYTHONPATH=. .venv/bin/python bench/train.py [--rows 200000] [--epochs 4] [--batch-size 1024] [--workers 1,0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.context import StepContext
from tasks.io.parquet import read_table
from tasks.security import keyring
from tasks.steps import run_step
from tasks.training.model import build_model, loss_fn
from tasks.training.stream import StreamDataset, transform
from tests.train_data import make_split

log = logging.getLogger("bench.train")


def bare_loop(x_num, x_cat, y, stats, hp, epochs: int, batch: int, dataloader: bool) -> list[tuple[float, float]]:
    """(samples/s, samples per CPU-second) of each epoch of a plain loop over in-memory tensors."""
    torch.manual_seed(hp["seed"])
    model = build_model(stats, hp)
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"])
    crit = loss_fn(stats["task"])
    n, speeds = len(y), []
    for _ in range(epochs):
        t0, c0, samples = time.perf_counter(), time.process_time(), 0
        if dataloader:
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_num, x_cat, y), batch_size=batch,
                                                 shuffle=True)
            batches = iter(loader)
        else:
            perm = torch.randperm(n)
            batches = ((x_num[idx], x_cat[idx], y[idx]) for idx in perm.split(batch))
        for xn, xc, yy in batches:
            loss = crit(model(xn, xc), yy)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            samples += len(yy)
        speeds.append((samples / (time.perf_counter() - t0), samples / (time.process_time() - c0)))
    return speeds


def epoch_speeds(ctx: StepContext) -> list[tuple[float, float]]:
    """Per-epoch (samples/s, rank-0 samples per CPU-second) the train step recorded in its metrics.json."""
    m = ctx.lake.require("model", ctx.dataset, ctx.ds)
    entry = next(f for f in m.files if f.path.endswith("metrics.json"))
    history = json.loads(ctx.lake.fs.cat_file(ctx.lake.abspath(m, entry)))["history"]
    return [(h["samples_per_s"], h["rank0_samples_per_cpu_s"]) for h in history]


def summary(speeds: list[tuple[float, float]]) -> dict[str, Any]:
    wall, cpu = [v[0] for v in speeds], [v[1] for v in speeds]
    return {"median_epoch": round(float(np.median(wall)), 1), "best_epoch": round(max(wall), 1),
            "per_cpu_s_median": round(float(np.median(cpu)), 1), "epochs": [round(v, 1) for v in wall],
            "epochs_per_cpu_s": [round(v, 1) for v in cpu]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000, help="train rows (val/test get 5%% each)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--workers", default="1,0",
                    help="train_workers values to run (DataLoader workers per rank)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for every contender (OMP_NUM_THREADS of the ranks)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "train.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bench.train").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the training ranks

    with tempfile.TemporaryDirectory(prefix="lf-bench-train-") as home:
        os.environ.update(LEPTONFLOW_HOME=home, LEPTONFLOW_LAKE=f"{home}/lake",
                          LEPTONFLOW_KEYRING=f"{home}/keys/keyring.json",
                          LEPTONFLOW_HISTORY_URL=f"sqlite:///{home}/history.sqlite")
        os.environ.pop("LEPTONFLOW_KEYRING_JSON", None)
        keyring.generate(f"{home}/keys/keyring.json")  # explicitly: tasks never create a keyring
        params = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 2e-3, "hidden": "64,32",
                  "dropout": 0.0, "patience": args.epochs, "seed": 1, "checkpoint_every": 10**9,
                  "train_nproc": args.nproc, "encrypt": True, "min_steps": 0}  # the epochs asked for, no more
        split = None
        bare: list[tuple[float, float]] = []
        ours: dict[str, list[tuple[float, float]]] = {}
        results = {}
        for i, workers in enumerate(int(w) for w in args.workers.split(",")):
            ds = f"2026-11-{i + 2:02d}"  # one interval per setting: no cache hit between them
            ctx = StepContext(dataset="events", ds=ds, params={**params, "train_workers": workers})
            small = max(1000, args.rows // 20)
            t0 = time.perf_counter()
            split = make_split(ctx.lake, ds=ds, rows={"train": args.rows, "val": small, "test": small},
                               files_per_group=4, row_group_rows=32768, crypto=ctx.crypto())
            log.info("encrypted split of %d train rows written in %.1fs", args.rows, time.perf_counter() - t0)
            if not bare:  # peer epochs before and after ours: the shared machine's load drifts
                pre = [transform(read_table(ctx.lake.abspath(split, f), ctx.crypto()), split.extra["feature_stats"])
                       for f in split.group_files("train")]
                xs = [torch.from_numpy(np.concatenate([p[k] for p in pre])) for k in range(3)]
                bare += bare_loop(*xs, split.extra["feature_stats"], {"hidden": "64,32", "dropout": 0.0, "seed": 1,
                                  "lr": 2e-3}, args.epochs, args.batch_size, dataloader=False)
            res = run_step("train", ctx)
            results[workers] = res
            ours[f"leptonflow_workers{workers}"] = epoch_speeds(ctx)
            log.info("leptonflow step, %d DataLoader worker(s): %.0f samples/s (wall %.1fs incl. launch)", workers,
                     res["train_samples_per_s"], res["wall_s"])
        assert split is not None
        stats = split.extra["feature_stats"]
        res = next(iter(results.values()))

        crypto = ctx.crypto()
        urls = [ctx.lake.abspath(split, f) for f in split.group_files("train")]
        t0 = time.perf_counter()
        rows = sum(len(b[2]) for b in StreamDataset(urls, stats, args.batch_size, crypto=crypto, seed=1))
        data_only = rows / (time.perf_counter() - t0)
        log.info("data path alone (read + decrypt + transform + shuffle, one process): %.0f samples/s", data_only)
        parts = [transform(read_table(u, crypto), stats) for u in urls]
        x_num, x_cat, y = (torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in range(3))
        hp = {"hidden": "64,32", "dropout": 0.0, "seed": 1, "lr": 2e-3}
        bare += bare_loop(x_num, x_cat, y, stats, hp, args.epochs, args.batch_size, dataloader=False)
        log.info("bare tensors: %s samples/s per epoch", [round(v[0]) for v in bare])
        naive = bare_loop(x_num, x_cat, y, stats, hp, args.epochs, args.batch_size, dataloader=True)
        log.info("TensorDataset+DataLoader: %s samples/s per epoch", [round(v[0]) for v in naive])

    cli_args = sys.argv[1:] if argv is None else argv
    contenders = {**{k: summary(v) for k, v in ours.items()}, "bare_tensors": summary(bare),
                  "tensor_dataloader": summary(naive)}
    # Wall-clock speed on this shared 2-core machine swings by 4x within a minute (other jobs), so the
    # target is checked on samples per CPU-second of the training process: load-independent, and with
    # in-process loading (train_workers=0) it charges our whole data path (read, decrypt, transform,
    # shuffle) to our side. With train_workers>=1 that work runs in a worker process instead (not counted
    # in the rank's CPU), so only wall-clock figures are compared for those.
    in_process = "leptonflow_workers0" if "leptonflow_workers0" in contenders else None
    bare_cpu = contenders["bare_tensors"]["per_cpu_s_median"]
    ratio = contenders[in_process]["per_cpu_s_median"] / bare_cpu if in_process else None
    out = {
        "benchmark": "train",
        "command": " ".join(["PYTHONPATH=. .venv/bin/python bench/train.py", *cli_args]),
        "rows": args.rows, "epochs": args.epochs, "batch_size": args.batch_size, "nproc": args.nproc,
        "device": res["device"], "torch": torch.__version__, "threads": args.threads,
        "cpu_count": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0],
        "samples_per_s": contenders,
        "wall_ratio_vs_bare_median_epoch": {
            k: round(v["median_epoch"] / contenders["bare_tensors"]["median_epoch"], 3) for k, v in contenders.items()},
        "data_path_only_samples_per_s": round(data_only, 1),
        "cpu_ratio_vs_bare": round(ratio, 3) if ratio is not None else None,
        "target_ratio_vs_bare": 0.8, "meets_target_per_cpu_s": ratio is not None and ratio >= 0.8,
        "meets_target_wall_clock": {k: v["median_epoch"] / contenders["bare_tensors"]["median_epoch"] >= 0.8
                                    for k, v in contenders.items() if k.startswith("leptonflow")},
        "best_val_auc": res["best_val_metric"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{'contender':<22}{'median/s':>12}{'best/s':>10}{'wall vs bare':>14}{'per CPU-s':>12}")
    for name, v in contenders.items():
        print(f"{name:<22}{v['median_epoch']:>12.0f}{v['best_epoch']:>10.0f}"
              f"{out['wall_ratio_vs_bare_median_epoch'][name]:>14.2f}{v['per_cpu_s_median']:>12.0f}")
    print(f"samples per CPU-second, in-process data path vs bare tensors: {out['cpu_ratio_vs_bare']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
