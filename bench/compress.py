"""Compression benchmark: leptonflow's search vs its peers on the demo model, same data, one run.

Data: one day of synthetic events from ``tasks.prep.datagen`` (no faults), features from
``tasks.prep.features`` (fit on train only), a group split by user, and the demo network
``tasks.training.model.build_model`` trained briefly in-process. Models: the DAG's default
(``hidden=128``: one hidden layer), the training step's default (``64,32``) and a wider
production-size one (``512,256``).

Peers, all measured the same way (serialized size, p50/p99 CPU latency at batch 1 and
256 on one thread, val AUC): the reference, the uncompressed fp32 model as PyTorch runs it
(eager, from its ``state_dict``: the baseline of every ratio), every backend of
``tasks.compression.compress`` (onnxruntime fp32, int8 dynamic, int8 static) with and without
structured pruning, unstructured L1 magnitude pruning (``torch.nn.utils.prune``, 50%), the
usual alternative to structured pruning, and, when ``torchao`` is installed (it is not a
pipeline dependency: ``pip install torchao==0.18.0 --no-deps``), torchao's int8 dynamic
quantization in eager PyTorch.

Fairness on a shared machine: after the search, the baseline, the float ONNX export and the
chosen candidate are timed again ``--rounds`` times, interleaved (baseline, ONNX, chosen, baseline,
...) so a change of load hits all three alike; the reported latencies and speedups are the
medians over rounds of each round's p50/p99, with the spread of the speedup over rounds. Gains
are also given against the float ONNX export (``vs_fp32_onnx``), which separates what the
runtime gives from what pruning and int8 give.

Target: the chosen candidate >= 4x smaller and >= 2x faster at batch 256 than the fp32
baseline, metric drop within the budget (0.01 AUC).

Run: ``PYTHONPATH=. .venv/bin/python bench/compress.py [--rows 60000] [--models 128 64,32 512,256] [--rounds 5]``
Writes bench/results/compress.json (per model: the chosen candidate's figures, the rounds, every
candidate) and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
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


def _peer(name: str, backend: str, model: nn.Module, val: compress.TabularData, base_metric: float,
          repeats: int, prune_ratio: float, quantized: bool) -> dict[str, Any]:
    """A PyTorch-eager peer measured like the candidates: state_dict size, p50/p99 latency, val AUC."""
    b1, b256 = val.rows(1), val.rows(256)
    run = export.torch_runner(model.eval())
    metric = metric_value("classification", val.y.numpy(), compress.predict(run, val))
    lat1 = compress.latency(run, b1[0].numpy(), b1[1].numpy(), repeats=repeats * compress.B1_REPEATS_FACTOR)
    lat256 = compress.latency(run, b256[0].numpy(), b256[1].numpy(), repeats=repeats)
    return {
        "name": name, "prune_ratio": prune_ratio, "backend": backend, "quantized": quantized, "format": "pt",
        "parameters": prune.count_parameters(model), "size_bytes": len(export.state_dict_bytes(model)),
        "latency_b1_ms": lat1.p50_ms, "latency_b1_p99_ms": lat1.p99_ms,
        "latency_b256_ms": lat256.p50_ms, "latency_b256_p99_ms": lat256.p99_ms,
        "metric": metric, "metric_drop": base_metric - metric, "within_budget": base_metric - metric <= BUDGET,
        "served": False, "widths": {}, "chosen": False, "peer": True,
    }


def unstructured_peer(model: nn.Module, val: compress.TabularData, base_metric: float, repeats: int) -> dict[str, Any]:
    """torch.nn.utils.prune L1 (50% of each Linear's weights zeroed), made permanent, run by PyTorch."""
    import torch.nn.utils.prune as tprune

    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, nn.Linear):
            tprune.l1_unstructured(mod, "weight", amount=0.5)
            tprune.remove(mod, "weight")
    return _peer("unstructured-l1-50-fp32-torch", "torch.nn.utils.prune (peer)", m, val, base_metric, repeats,
                 0.5, False)


def torchao_peer(model: nn.Module, val: compress.TabularData, base_metric: float,
                 repeats: int) -> dict[str, Any] | None:
    """torchao int8 dynamic activations x int8 weights on every Linear, eager PyTorch (None: not installed)."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        log.info("torchao is not installed: no torchao peer")
        return None
    q = copy.deepcopy(model).eval()
    quantize_(q, Int8DynamicActivationInt8WeightConfig())
    return _peer("torchao-int8-dynamic-torch", "torchao Int8DynamicActivationInt8Weight (peer)", q, val,
                 base_metric, repeats, 0.0, True)


def interleaved_rounds(result: compress.SearchResult, val: compress.TabularData, rounds: int,
                       repeats: int) -> dict[str, Any]:
    """Baseline, float ONNX and chosen timed `rounds` times, interleaved; medians over rounds and the spread."""
    who = {"baseline": result.baseline.name, "fp32_onnx": f"p00-{compress.FALLBACK}", "chosen": result.chosen.name}
    b1, b256 = val.rows(1), val.rows(256)
    b1_np, b256_np = (b1[0].numpy(), b1[1].numpy()), (b256[0].numpy(), b256[1].numpy())
    per: dict[str, list[dict[str, float]]] = {k: [] for k in who}
    for _ in range(rounds):
        for key, name in who.items():
            run = result.built[name].runner
            l1 = compress.latency(run, *b1_np, repeats=repeats * compress.B1_REPEATS_FACTOR)
            l256 = compress.latency(run, *b256_np, repeats=repeats)
            per[key].append({"b1_p50": l1.p50_ms, "b1_p99": l1.p99_ms, "b256_p50": l256.p50_ms,
                             "b256_p99": l256.p99_ms})

    def med(key: str, field: str) -> float:
        return float(np.median([r[field] for r in per[key]]))

    def speedups(vs: str, field: str) -> list[float]:
        return [a[field] / b[field] for a, b in zip(per[vs], per["chosen"], strict=True)]

    out: dict[str, Any] = {"rounds": rounds, "names": who, "per_round": per}
    for key in who:
        out[key] = {f: med(key, f) for f in ("b1_p50", "b1_p99", "b256_p50", "b256_p99")}
    for vs in ("baseline", "fp32_onnx"):
        for field in ("b1_p50", "b256_p50"):
            s = speedups(vs, field)
            out[f"speedup_{field}_vs_{vs}"] = {"median": float(np.median(s)), "min": min(s), "max": max(s)}
    return out


def chosen_summary(result: compress.SearchResult, timing: dict[str, Any], hidden: str) -> dict[str, Any]:
    base, chosen = result.baseline, result.chosen
    onnx32 = next(c for c in result.candidates if c.name == f"p00-{compress.FALLBACK}")
    speed256 = timing["speedup_b256_p50_vs_baseline"]["median"]
    size_ratio = base.size_bytes / chosen.size_bytes
    return {
        "model": f"hidden={hidden}", "baseline": base.name, "chosen": chosen.name,
        "size_bytes": chosen.size_bytes, "baseline_size_bytes": base.size_bytes,
        "size_ratio": size_ratio, "speedup_b256": speed256,
        "speedup_b256_range": [timing["speedup_b256_p50_vs_baseline"]["min"],
                               timing["speedup_b256_p50_vs_baseline"]["max"]],
        "speedup_b1": timing["speedup_b1_p50_vs_baseline"]["median"],
        "metric_drop": chosen.metric_drop, "budget": result.budget,
        "latency_b1_p50_ms": timing["chosen"]["b1_p50"], "latency_b1_p99_ms": timing["chosen"]["b1_p99"],
        "latency_b256_p50_ms": timing["chosen"]["b256_p50"], "latency_b256_p99_ms": timing["chosen"]["b256_p99"],
        "baseline_latency_b1_p50_ms": timing["baseline"]["b1_p50"],
        "baseline_latency_b1_p99_ms": timing["baseline"]["b1_p99"],
        "baseline_latency_b256_p50_ms": timing["baseline"]["b256_p50"],
        "vs_fp32_onnx": {"size_ratio": onnx32.size_bytes / chosen.size_bytes,
                         "speedup_b256": timing["speedup_b256_p50_vs_fp32_onnx"]["median"],
                         "speedup_b1": timing["speedup_b1_p50_vs_fp32_onnx"]["median"]},
        "targets": {"size_ratio": 4.0, "speedup_b256": 2.0, "metric_drop_max": result.budget},
        "meets_size": size_ratio >= 4, "meets_speed_b256": speed256 >= 2,
        "meets_budget": chosen.metric_drop <= result.budget + 1e-12,
    }


def _print_model(hidden: str, summary: dict[str, Any], cands: list[dict[str, Any]], search_s: float) -> None:
    print(f"\n## hidden={hidden}: baseline {summary['baseline']} {summary['baseline_size_bytes']} bytes; chosen "
          f"{summary['chosen']}: {summary['size_ratio']:.1f}x smaller, {summary['speedup_b256']:.2f}x faster @256 "
          f"(rounds {summary['speedup_b256_range'][0]:.2f}-{summary['speedup_b256_range'][1]:.2f}), "
          f"{summary['speedup_b1']:.2f}x @1, b1 p50 {summary['latency_b1_p50_ms']:.4f} ms / p99 "
          f"{summary['latency_b1_p99_ms']:.4f} ms, drop {summary['metric_drop']:+.4f} (search {search_s:.1f}s)\n")
    print("| candidate | size (bytes) | x smaller | b1 p50 ms | b1 p99 ms | b256 ms | x faster b256 | AUC val | drop "
          "| fits | chosen |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in cands:
        mark = "**yes**" if c["chosen"] else "" if c["served"] else "(not served)"
        print(f"| {c['name']} | {c['size_bytes']} | {c['x_smaller']:.2f} | {c['latency_b1_ms']:.4f} "
              f"| {c['latency_b1_p99_ms']:.4f} | {c['latency_b256_ms']:.4f} | {c['x_faster_b256']:.2f} "
              f"| {c['metric']:.4f} | {c['metric_drop']:+.4f} | {'yes' if c['within_budget'] else 'no'} | {mark} |")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("tasks.compression.compress", "tasks.compression.prune", "tasks.compression.export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    p = argparse.ArgumentParser(prog="bench/compress.py")
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=50, help="timed calls at batch 256 (batch 1: 10x as many)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved re-timings of baseline, fp32 ONNX, chosen")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--models", nargs="+", default=["128", "64,32", "512,256"], help="hidden widths per model")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "compress.json"))
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    data, stats = make_splits(args.rows, args.seed)
    models: list[dict[str, Any]] = []
    for hidden in args.models:
        model = train(build_model(stats, {"hidden": hidden, "dropout": 0.1}), data["train"], args.epochs, args.seed)
        t = time.perf_counter()
        result = compress.search(model, data["train"], data["val"], "classification", budget=BUDGET,
                                 repeats=args.repeats, seed=args.seed)
        search_s = time.perf_counter() - t
        timing = interleaved_rounds(result, data["val"], args.rounds, args.repeats)
        summary = chosen_summary(result, timing, hidden)
        base = result.baseline
        peers = [unstructured_peer(model, data["val"], result.baseline_metric, args.repeats),
                 torchao_peer(model, data["val"], result.baseline_metric, args.repeats)]
        cands = [c.to_dict() for c in result.candidates] + [x for x in peers if x is not None]
        for c in cands:
            c.update(model=f"hidden={hidden}", x_smaller=base.size_bytes / c["size_bytes"],
                     x_faster_b256=base.latency_b256_ms / c["latency_b256_ms"],
                     x_faster_b1=base.latency_b1_ms / c["latency_b1_ms"])
            c.setdefault("peer", False)
        models.append({"summary": summary, "search_s": round(search_s, 2), "timing": timing, "candidates": cands})
        _print_model(hidden, summary, cands, search_s)
    doc = {
        "meta": {"torch": torch.__version__, "onnxruntime": _version("onnxruntime"), "onnx": _version("onnx"),
                 "onnxscript": _version("onnxscript"), "torchao": _version("torchao"), "threads": 1,
                 "rows": args.rows, "repeats_b256": args.repeats,
                 "repeats_b1": args.repeats * compress.B1_REPEATS_FACTOR, "rounds": args.rounds,
                 "cpu_count": os.cpu_count(), "load_average_at_end": list(os.getloadavg()),
                 "wall_s": round(time.perf_counter() - t0, 1)},
        "models": models,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {args.out} ({len(models)} models) in {time.perf_counter() - t0:.0f}s; torch {torch.__version__}, "
          f"threads=1 for latency, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
