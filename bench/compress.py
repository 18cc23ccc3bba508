"""Compression benchmark: leptonflow's search vs its peers on the demo model, same data, one run.

Data: one day of synthetic events from ``tasks.prep.datagen`` (no faults), features from
``tasks.prep.features`` (fit on train only), a group split by user, and the demo network
``tasks.training.model.build_model`` trained briefly in-process. Models: the DAG's default
(``hidden=128``: one hidden layer), the training step's default (``64,32``) and a wider
production-size one (``512,256``).

Peers, all measured the same way (serialized size, median CPU latency at batch 1 and
256 on one thread, val AUC): the uncompressed fp32 TorchScript model (the baseline),
every backend of ``tasks.compression.compress`` (torch int8, onnxruntime fp32/int8) with and
without structured pruning, and unstructured L1 magnitude pruning
(``torch.nn.utils.prune``, 50%), the usual alternative to structured pruning.

Target: the chosen candidate >= 4x smaller and >= 2x faster at batch 256 than the fp32
baseline, metric drop within the budget (0.01 AUC).

Run: ``PYTHONPATH=. .venv/bin/python bench/compress.py [--rows 60000] [--models 128 64,32 512,256]``
Writes bench/results/compress.json (one object per candidate) and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.compression import (
    compress,
    export,
    prune,
)
from tasks.prep import datagen, features
from tasks.spec import spec_for
from tasks.training.metrics import metric_value
from tasks.training.model import build_model

log = logging.getLogger("bench.compress")
BUDGET = 0.01


def make_splits(rows: int, seed: int) -> tuple[dict[str, compress.TabularData], dict[str, Any]]:
    spec = spec_for("events")
    with tempfile.TemporaryDirectory(prefix="lf-bench-") as tmp:
        summary = datagen.generate(tmp, spec, days=1, rows_per_day=rows, seed=seed,
                                   faults=datagen.FaultRates.none(), files_per_day=1)
        files = next(iter(summary["intervals"].values()))["files"]
        table = pa.concat_tables([pq.read_table(f) for f in files])
    # group split by user (like tasks.prep.split): a user's events never straddle two splits
    users = table.column("user_id").to_pylist()
    bucket = np.array([int(hashlib.sha256(u.encode()).hexdigest()[:8], 16) % 10 for u in users])
    groups = {"train": bucket < 8, "val": bucket == 8, "test": bucket == 9}
    parts = {g: table.filter(pa.array(mask)) for g, mask in groups.items()}
    stats = features.fit(parts["train"], spec)
    data = {g: compress.TabularData.from_numpy(*features.transform(t, stats)) for g, t in parts.items()}
    pos = float(pc.mean(table.column("purchased").cast(pa.float64())).as_py())
    log.info("data: %s rows, positive rate %.3f, splits %s", table.num_rows, pos, {g: len(d) for g, d in data.items()})
    return data, stats


def train(model: nn.Module, data: compress.TabularData, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data))
        for s in range(0, len(data), 512):
            idx = order[s:s + 512]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(data.x_num[idx], data.x_cat[idx]), data.y[idx]).backward()
            opt.step()
    return model.eval()


def unstructured_peer(model: nn.Module, val: compress.TabularData, base_metric: float, repeats: int) -> dict[str, Any]:
    """torch.nn.utils.prune L1 (50% of each Linear's weights zeroed), made permanent, served as TorchScript."""
    import torch.nn.utils.prune as tprune

    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, nn.Linear):
            tprune.l1_unstructured(mod, "weight", amount=0.5)
            tprune.remove(mod, "weight")
    m.eval()
    b1, b256 = val.rows(1), val.rows(256)
    ts = export.to_torchscript(m, *b256)
    run = export.torch_runner(export.load_torchscript(ts))
    metric = metric_value("classification", val.y.numpy(), compress.predict(run, val))
    return {
        "name": "unstructured-l1-50-fp32-ts", "prune_ratio": 0.5, "backend": "torch.nn.utils.prune (peer)",
        "quantized": False, "format": "ts", "parameters": prune.count_parameters(m), "size_bytes": len(ts),
        "latency_b1_ms": compress.latency_ms(run, b1[0].numpy(), b1[1].numpy(), repeats=repeats),
        "latency_b256_ms": compress.latency_ms(run, b256[0].numpy(), b256[1].numpy(), repeats=repeats),
        "metric": metric, "metric_drop": base_metric - metric, "within_budget": base_metric - metric <= BUDGET,
        "widths": {}, "chosen": False, "peer": True,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("tasks.compression.compress", "tasks.compression.prune", "tasks.compression.export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    p = argparse.ArgumentParser(prog="bench/compress.py")
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--models", nargs="+", default=["128", "64,32", "512,256"], help="hidden widths per model")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "compress.json"))
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    data, stats = make_splits(args.rows, args.seed)
    rows: list[dict[str, Any]] = []
    for hidden in args.models:
        model = train(build_model(stats, {"hidden": hidden, "dropout": 0.1}), data["train"], args.epochs, args.seed)
        t = time.perf_counter()
        result = compress.search(model, data["train"], data["val"], "classification", budget=BUDGET,
                                 repeats=args.repeats, seed=args.seed)
        search_s = time.perf_counter() - t
        base, chosen = result.baseline, result.chosen
        cands = [c.to_dict() for c in result.candidates] + [
            unstructured_peer(model, data["val"], result.baseline_metric, args.repeats)]
        for c in cands:
            c.update(model=f"hidden={hidden}", x_smaller=base.size_bytes / c["size_bytes"],
                     x_faster_b256=base.latency_b256_ms / c["latency_b256_ms"],
                     x_faster_b1=base.latency_b1_ms / c["latency_b1_ms"], search_s=round(search_s, 2))
            c.setdefault("peer", False)
            c["meets_target"] = bool(c["within_budget"] and c["x_smaller"] >= 4 and c["x_faster_b256"] >= 2)
        rows.extend(cands)
        print(f"\n## hidden={hidden}: baseline {base.size_bytes} bytes, {base.latency_b256_ms:.3f} ms @256, "
              f"AUC {result.baseline_metric:.4f}; chosen {chosen.name}: {base.size_bytes / chosen.size_bytes:.1f}x "
              f"smaller, {base.latency_b256_ms / chosen.latency_b256_ms:.1f}x faster @256, "
              f"{base.latency_b1_ms / chosen.latency_b1_ms:.1f}x @1, drop {chosen.metric_drop:+.4f} "
              f"(search {search_s:.1f}s)\n")
        print("| candidate | size (bytes) | x smaller | b1 ms | b256 ms | x faster b256 | AUC val | drop | fits "
              "| chosen |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for c in cands:
            print(f"| {c['name']} | {c['size_bytes']} | {c['x_smaller']:.2f} | {c['latency_b1_ms']:.4f} "
                  f"| {c['latency_b256_ms']:.4f} | {c['x_faster_b256']:.2f} | {c['metric']:.4f} "
                  f"| {c['metric_drop']:+.4f} | {'yes' if c['within_budget'] else 'no'} "
                  f"| {'**yes**' if c['chosen'] else ''} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"\nwrote {args.out} ({len(rows)} candidates) in {time.perf_counter() - t0:.0f}s; "
          f"torch {torch.__version__}, threads=1 for latency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
