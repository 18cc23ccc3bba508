"""Compression step: structured pruning x int8 quantization x serving runtime, under an accuracy budget.

For every grid point (prune ratio x backend) the candidate is built (prune -> short
fine-tune on train -> quantize -> export) and then *measured on the exported artifact*
as it will be served: serialized size in bytes, CPU latency at batch 1 and 256 (median
of repeated runs on one intra-op thread, so numbers are comparable), and the metric on
val (AUC for classification, RMSE for regression). The kept candidate is the smallest
(then fastest) one whose metric drop vs the uncompressed model stays within the
``compress_budget`` setting (AUC drop for classification, RMSE increase for regression). The uncompressed model
(``p00-fp32-ts``: float, TorchScript) is itself a candidate with drop 0 and the baseline
of every ratio, so when nothing compressed fits it is what gets published, and the
result says so.

Backends (the small :class:`Backend` interface, ``BACKENDS``; one more entry adds e.g. torchao):

- ``fp32-ts``   float model, TorchScript
- ``int8-ts``   ``torch.ao.quantization.quantize_dynamic`` (deprecated upstream for torchao,
  still the fastest torch CPU path for small MLPs), TorchScript (it has no ONNX export)
- ``fp32-onnx`` float model, ONNX run by onnxruntime
- ``int8-onnx`` onnxruntime dynamic quantization of the float ONNX graph

Measured on the demo-sized models (bench/compress.py): onnxruntime has far less per-call
overhead than TorchScript for small MLPs, and int8 only pays off once Linear weights
dominate the artifact, which is why the choice is measured per run and not fixed.

Settings: the Compression section of :mod:`tasks.params` (``python -m tasks params``); the
fine-tune streams the first ``compress_max_train_rows`` of train, and val/test are capped at
``compress_max_eval_rows`` rows in memory.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from tasks.compression import export, prune
from tasks.errors import ManifestError
from tasks.io.code_version import code_version
from tasks.io.lake import Lake, Manifest
from tasks.training.metrics import metric_value, primary_metric
from tasks.training.predict import load_model

log = logging.getLogger(__name__)

STAGE = "compressed"
DEFAULT_BUDGET = 0.01
DEFAULT_RATIOS = (0.0, 0.25, 0.5, 0.75)
DEFAULT_BACKENDS = ("fp32-ts", "int8-ts", "fp32-onnx", "int8-onnx")


# ---- data ------------------------------------------------------------------------
@dataclass
class TabularData:
    """One split as model inputs: x_num float32 [n, k], x_cat int64 [n, m], y float32 [n]."""

    x_num: torch.Tensor
    x_cat: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.y)
        if len(self.x_num) != n or len(self.x_cat) != n:
            raise ValueError(f"inputs disagree on row count: x_num {len(self.x_num)}, x_cat {len(self.x_cat)}, y {n}")

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def from_numpy(cls, x_num: Any, x_cat: Any, y: Any) -> TabularData:
        return cls(
            torch.as_tensor(np.ascontiguousarray(x_num), dtype=torch.float32),
            torch.as_tensor(np.ascontiguousarray(x_cat), dtype=torch.int64),
            torch.as_tensor(np.ascontiguousarray(y), dtype=torch.float32).reshape(-1),
        )

    def rows(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exactly `n` input rows (cycled when the split is smaller): a fixed latency batch."""
        idx = torch.arange(n) % len(self)
        return self.x_num[idx].contiguous(), self.x_cat[idx].contiguous()


# ---- metric ----------------------------------------------------------------------
def metric_drop(task: str, baseline: float, value: float) -> float:
    """How much worse `value` is than `baseline` (AUC lost, or RMSE gained); <= 0 is no loss."""
    return baseline - value if task == "classification" else value - baseline


# ---- backends: quantization + serving format ---------------------------------------
@dataclass
class Built:
    """A candidate as served: the artifact bytes, its file name, and a runner loaded from those bytes."""

    artifact: bytes
    filename: str  # model.ts | model.onnx
    runner: export.Runner
    reference: nn.Module  # the PyTorch module the artifact was made from (parity reference)
    exact: bool  # True when the artifact must reproduce `reference` to float tolerance


class Backend(Protocol):
    """One way to quantize and serve a (pruned) float model; measured, never assumed, by :func:`search`."""

    name: str
    quantized: bool

    def build(self, model: nn.Module, x_num: torch.Tensor, x_cat: torch.Tensor) -> Built: ...


class TorchScriptFloat:
    name, quantized = "fp32-ts", False

    def build(self, model: nn.Module, x_num: torch.Tensor, x_cat: torch.Tensor) -> Built:
        ts = export.to_torchscript(model, x_num, x_cat)
        return Built(ts, "model.ts", export.torch_runner(export.load_torchscript(ts)), model, True)


class TorchDynamicInt8:
    """torch.ao ``quantize_dynamic``: int8 Linear weights, activations quantized per batch (fbgemm/x86).

    Deprecated upstream in favour of torchao, but measured as the fastest torch CPU path for
    small MLPs; the result only exports to TorchScript.
    """

    name, quantized = "int8-ts", True

    def build(self, model: nn.Module, x_num: torch.Tensor, x_cat: torch.Tensor) -> Built:
        from torch.ao.quantization import quantize_dynamic

        with export.quiet():
            q = quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
        ts = export.to_torchscript(q, x_num, x_cat)
        return Built(ts, "model.ts", export.torch_runner(export.load_torchscript(ts)), q, True)


class OnnxFloat:
    name, quantized = "fp32-onnx", False

    def build(self, model: nn.Module, x_num: torch.Tensor, x_cat: torch.Tensor) -> Built:
        data = export.to_onnx(model, x_num, x_cat)
        return Built(data, "model.onnx", export.onnx_runner(data), model, True)


class OnnxDynamicInt8:
    """onnxruntime dynamic quantization of the float ONNX graph (int8 MatMul kernels of onnxruntime)."""

    name, quantized = "int8-onnx", True

    def build(self, model: nn.Module, x_num: torch.Tensor, x_cat: torch.Tensor) -> Built:
        data = export.onnx_int8(export.to_onnx(model, x_num, x_cat))
        return Built(data, "model.onnx", export.onnx_runner(data), model, False)


BACKENDS: dict[str, Backend] = {b.name: b for b in (TorchScriptFloat(), TorchDynamicInt8(), OnnxFloat(),
                                                    OnnxDynamicInt8())}
BASELINE = "fp32-ts"  # the uncompressed model as PyTorch serves it: what every gain is measured against


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown compression backend {name!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[name]


def torch_int8(model: nn.Module) -> nn.Module:
    """The torch dynamic-int8 version of `model` (eager), e.g. to load a published int8 state_dict into."""
    from torch.ao.quantization import quantize_dynamic

    with export.quiet():
        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


# ---- training and measuring -------------------------------------------------------
def predict(model: nn.Module | export.Runner, data: TabularData, batch: int = 8192) -> np.ndarray:
    """Logits of a module or a runner over a split, batch by batch."""
    run = export.torch_runner(model) if isinstance(model, nn.Module) else model
    if isinstance(model, nn.Module):
        model.eval()
    xn, xc = data.x_num.numpy(), data.x_cat.numpy()
    out = [run(xn[s:s + batch], xc[s:s + batch]).reshape(-1) for s in range(0, len(data), batch)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def fine_tune(
    model: nn.Module, train: TabularData, task: str, epochs: int = 2, lr: float = 1e-3,
    batch_size: int = 512, seed: int = 0,
) -> nn.Module:
    """A few epochs on train to recover what pruning removed (in place; returns the model)."""
    if epochs <= 0 or len(train) == 0:
        return model.eval()
    gen = torch.Generator().manual_seed(seed)
    loss_fn: nn.Module = nn.BCEWithLogitsLoss() if task == "classification" else nn.MSELoss()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=gen)
        for s in range(0, len(train), batch_size):
            idx = order[s:s + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(train.x_num[idx], train.x_cat[idx]).reshape(-1), train.y[idx])
            loss.backward()
            opt.step()
    return model.eval()


def latency_ms(run: export.Runner, x_num: np.ndarray, x_cat: np.ndarray, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of one call in milliseconds, torch on one intra-op thread (onnxruntime runners too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # stable, comparable numbers on a shared machine
    try:
        times = []
        with torch.no_grad():
            for i in range(warmup + repeats):
                t0 = time.perf_counter()
                run(x_num, x_cat)
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1000.0)
        return float(statistics.median(times))
    finally:
        torch.set_num_threads(threads)


@dataclass
class Candidate:
    name: str
    prune_ratio: float
    backend: str
    quantized: bool
    format: str
    parameters: int
    size_bytes: int
    latency_b1_ms: float
    latency_b256_ms: float
    metric: float
    metric_drop: float
    within_budget: bool
    widths: dict[str, int] = field(default_factory=dict)
    chosen: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    task: str
    metric_name: str
    budget: float
    baseline_metric: float
    candidates: list[Candidate]
    built: dict[str, Built]  # candidate name -> artifact, runner, PyTorch reference

    @property
    def chosen(self) -> Candidate:
        return next(c for c in self.candidates if c.chosen)

    @property
    def baseline(self) -> Candidate:
        return self.candidates[0]

    @property
    def compressed(self) -> bool:
        c = self.chosen
        return c.prune_ratio > 0 or c.quantized


def search(
    model: nn.Module,
    train: TabularData,
    val: TabularData,
    task: str,
    budget: float = DEFAULT_BUDGET,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    backends: Sequence[str] = DEFAULT_BACKENDS,
    finetune_epochs: int = 2,
    repeats: int = 30,
    seed: int = 0,
) -> SearchResult:
    """Build, export and measure every candidate; mark the smallest, fastest one within budget."""
    if len(val) == 0:
        raise ValueError("val split is empty: cannot measure the metric drop of compression")
    if budget < 0:
        raise ValueError(f"compress_budget must be >= 0, got {budget}")
    model = model.eval()
    mname, _ = primary_metric(task)
    baseline = metric_value(task, val.y.numpy(), predict(model, val), split="val")
    b1 = val.rows(1)
    b256 = val.rows(256)
    b1_np, b256_np = (b1[0].numpy(), b1[1].numpy()), (b256[0].numpy(), b256[1].numpy())
    ratios = sorted({0.0, *map(float, ratios)})  # the uncompressed model is always a candidate
    names = [BASELINE, *[b for b in dict.fromkeys(backends) if b != BASELINE]]
    cands: list[Candidate] = []
    built: dict[str, Built] = {}
    for ratio in ratios:
        torch.manual_seed(seed)
        if ratio > 0:
            pruned, widths = prune.prune_model(model, ratio)
            fine_tune(pruned, train, task, epochs=finetune_epochs, seed=seed)
        else:
            pruned, widths = copy.deepcopy(model).eval(), {}
        for bname in names:
            be = backend(bname)
            b = be.build(pruned, *b256)
            name = f"p{int(round(ratio * 100)):02d}-{bname}"
            value = metric_value(task, val.y.numpy(), predict(b.runner, val), split="val")  # what is served
            drop = metric_drop(task, baseline, value)
            cand = Candidate(
                name=name, prune_ratio=ratio, backend=bname, quantized=be.quantized,
                format=b.filename.rsplit(".", 1)[-1], parameters=prune.count_parameters(pruned),
                size_bytes=len(b.artifact), latency_b1_ms=latency_ms(b.runner, *b1_np, repeats=repeats),
                latency_b256_ms=latency_ms(b.runner, *b256_np, repeats=repeats),
                metric=value, metric_drop=drop, within_budget=drop <= budget + 1e-12, widths=dict(widths),
            )
            log.info("candidate %s: %d bytes, b1 %.3f ms, b256 %.3f ms, %s %.5f (drop %.5f)", name,
                     cand.size_bytes, cand.latency_b1_ms, cand.latency_b256_ms, mname, value, drop)
            cands.append(cand)
            built[name] = b
    fits = [c for c in cands if c.within_budget]
    best = min(fits, key=lambda c: (c.size_bytes, c.latency_b256_ms))
    best.chosen = True
    return SearchResult(task, mname, budget, baseline, cands, built)


# ---- reports ------------------------------------------------------------------------
def markdown_table(result: SearchResult) -> str:
    base = result.baseline
    m = result.metric_name
    lines = [
        f"| candidate | prune | backend | params | size (bytes) | x smaller | b1 ms | b256 ms | x faster b256 "
        f"| {m} (val) | drop | within budget {result.budget:g} | chosen |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result.candidates:
        lines.append(
            f"| {c.name} | {c.prune_ratio:.2f} | {c.backend} | {c.parameters} | {c.size_bytes} "
            f"| {base.size_bytes / c.size_bytes:.2f} | {c.latency_b1_ms:.3f} | {c.latency_b256_ms:.3f} "
            f"| {base.latency_b256_ms / c.latency_b256_ms:.2f} | {c.metric:.5f} | {c.metric_drop:+.5f} "
            f"| {'yes' if c.within_budget else 'no'} | {'**yes**' if c.chosen else ''} |"
        )
    return "\n".join(lines) + "\n"


def plot_png(result: SearchResult) -> bytes:
    """Size (x, log) vs batch-256 latency (y), colour = val metric; the chosen one is ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = result.candidates
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sc = ax.scatter([c.size_bytes for c in cs], [c.latency_b256_ms for c in cs], c=[c.metric for c in cs],
                    cmap="viridis", s=60, marker="o")
    for c in cs:
        ax.annotate(c.name, (c.size_bytes, c.latency_b256_ms), fontsize=7, xytext=(4, 3), textcoords="offset points")
        if c.chosen:
            ax.scatter([c.size_bytes], [c.latency_b256_ms], s=220, facecolors="none", edgecolors="red")
    ax.set_xscale("log")
    ax.set_xlabel("serialized size (bytes, TorchScript)")
    ax.set_ylabel("CPU latency, batch 256 (ms, median)")
    ax.set_title(f"compression candidates (budget {result.budget:g} {result.metric_name})")
    fig.colorbar(sc, ax=ax, label=f"{result.metric_name} (val)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# ---- the pipeline step -----------------------------------------------------------------
def load_split(lake: Lake, split_m: Manifest, group: str, stats: dict[str, Any], crypto: Any,
               max_rows: int | None = None) -> TabularData:
    """One split of the split manifest through the shared feature transform (row groups, capped)."""
    import pyarrow as pa

    from tasks.io.parquet import iter_row_groups
    from tasks.prep.features import transform

    tables: list[pa.Table] = []
    n = 0
    for f in split_m.group_files(group):
        for rg in iter_row_groups(lake.full_url(lake.abspath(split_m, f)), crypto):
            tables.append(rg)
            n += rg.num_rows
            if max_rows is not None and n >= max_rows:
                break
        if max_rows is not None and n >= max_rows:
            break
    if not tables:
        raise ManifestError(f"split manifest of {split_m.dataset} ds={split_m.ds} has no {group!r} rows")
    table = pa.concat_tables(tables)
    if max_rows is not None:
        table = table.slice(0, max_rows)
    return TabularData.from_numpy(*transform(table, stats))


def _params(ctx: Any) -> dict[str, Any]:
    """The compress step's settings (all of them change its output, so they are its cache key too)."""
    return {
        **ctx.cache_params(__name__),
        "compress_budget": ctx.param("compress_budget"),
        "compress_ratios": ctx.param("compress_ratios"),
        "compress_backends": ctx.param("compress_backends"),
        "compress_finetune_epochs": ctx.param("compress_finetune_epochs"),
        "compress_max_train_rows": ctx.param("compress_max_train_rows"),
        "compress_max_eval_rows": ctx.param("compress_max_eval_rows"),
        "compress_latency_repeats": ctx.param("compress_latency_repeats"),
        "seed": ctx.param("seed"),
    }


def _summary(m: Manifest) -> dict[str, Any]:
    return dict(m.extra.get("summary", {}), version=m.version)


def compress_and_commit(
    lake: Lake, dataset: str, ds: str, model: nn.Module, hparams: dict[str, Any], stats: dict[str, Any],
    data: dict[str, TabularData], params: dict[str, Any], input_fingerprint: str, code: str,
) -> Manifest:
    """Search, export the chosen candidate with a parity check on test, and commit the `compressed` stage."""
    task = stats.get("task", "classification")
    result = search(
        model, data["train"], data["val"], task, budget=params["compress_budget"],
        ratios=params["compress_ratios"], backends=params["compress_backends"],
        finetune_epochs=params["compress_finetune_epochs"], repeats=params["compress_latency_repeats"],
        seed=params["seed"],
    )
    chosen = result.chosen
    built = result.built[chosen.name]
    reference = built.reference
    test = data["test"]
    x_num, x_cat, y = test.x_num.numpy(), test.x_cat.numpy(), test.y.numpy()

    def metric(yy: np.ndarray, logits: np.ndarray) -> float:
        return metric_value(task, yy, logits, split="test")

    def served(filename: str, blob: bytes) -> export.Runner:  # reloaded from the bytes being committed
        if filename.endswith(".ts"):
            return export.torch_runner(export.load_torchscript(blob))
        return export.onnx_runner(blob)

    files: dict[str, bytes] = {built.filename: built.artifact}
    if not chosen.quantized:  # a float model also ships its other float format
        other = "model.onnx" if built.filename == "model.ts" else "model.ts"
        files[other] = (export.to_onnx if other == "model.onnx" else export.to_torchscript)(
            reference, test.x_num, test.x_cat)
    parity = []
    for filename in [f for f in ("model.ts", "model.onnx") if f in files]:
        fmt = "torchscript" if filename.endswith(".ts") else "onnx"
        if built.exact or filename != built.filename:
            p = export.check_parity(fmt, export.torch_runner(reference), served(filename, files[filename]),
                                    x_num, x_cat, y, metric)
        else:  # int8 made after export: it cannot match the float model bit for bit, only within the budget
            p = export.check_parity(fmt, export.torch_runner(reference), served(filename, files[filename]),
                                    x_num, x_cat, y, metric, atol=float("inf"), metric_tol=result.budget)
        parity.append(p)
    bad = [p.format for p in parity if not p.ok]
    if bad:
        raise export.ExportError(f"export parity failed on the test split for {bad}: {[p.to_dict() for p in parity]}")
    state = io.BytesIO()
    torch.save(reference.state_dict(), state)
    files["model.pt"] = state.getvalue()  # weights-only loadable after prune.resize (+ torch_int8 for int8-ts)
    note = (f"chose {chosen.name}" if result.compressed else
            "no compressed candidate stayed within the budget: publishing the uncompressed model")
    structure = {
        "candidate": chosen.name, "prune_ratio": chosen.prune_ratio, "backend": chosen.backend,
        "quantized": chosen.quantized, "widths": chosen.widths, "hparams": hparams, "task": task,
        "metric": result.metric_name, "formats": sorted(files), "serving_format": built.filename,
        "state_dict": "torch-int8" if chosen.backend == "int8-ts" else "float",
    }
    files["compression.json"] = json.dumps(structure, indent=1, sort_keys=True).encode()
    files["compression.md"] = (f"# Compression of {dataset} ds={ds}\n\n{note}.\n\n" + markdown_table(result)).encode()
    files["compression.png"] = plot_png(result)
    files["candidates.json"] = json.dumps([c.to_dict() for c in result.candidates], indent=1).encode()

    version, vdir = lake.new_version(STAGE, dataset, ds)
    entries = []
    for name, blob in files.items():
        entries.append(lake.put_bytes(vdir, version, name, blob))
    base = result.baseline
    serving_parity = next(p for p in parity if ("model.ts" if p.format == "torchscript" else "model.onnx")
                          == built.filename)
    summary = {
        "compressed": result.compressed, "note": note, "chosen": chosen.to_dict(), "task": task,
        "metric_name": result.metric_name, "baseline_metric": result.baseline_metric, "budget": result.budget,
        "size_ratio": base.size_bytes / chosen.size_bytes,
        "speedup_b256": base.latency_b256_ms / chosen.latency_b256_ms,
        "serving_format": built.filename, "test_metric": serving_parity.metric_export,
        "parity": [p.to_dict() for p in parity],
        "table_path": f"v={version}/compression.md", "plot_path": f"v={version}/compression.png",
    }
    manifest = Manifest(
        STAGE, dataset, ds, version, files=entries, input_fingerprint=input_fingerprint, code_version=code,
        params=params, extra={"summary": summary, "candidates": [c.to_dict() for c in result.candidates]},
    )
    lake.commit(manifest)
    log.info("compressed %s ds=%s: %s", dataset, ds, note)
    return manifest


def run(ctx: Any) -> dict[str, Any]:
    """Pipeline step: compress the interval's trained model and commit the `compressed` stage."""
    lake: Lake = ctx.lake
    split_m = lake.require("split", ctx.dataset, ctx.ds)
    model_m = lake.require("model", ctx.dataset, ctx.ds)
    params = _params(ctx)
    code = code_version(__name__)
    fp = Lake.manifests_fingerprint(split_m, model_m)
    hit = lake.cache_hit(STAGE, ctx.dataset, ctx.ds, fp, code, params)
    if hit is not None:
        return {"cache_hit": True, **_summary(hit)}
    stats = split_m.extra.get("feature_stats")
    if not stats:
        raise ManifestError(f"split manifest of {ctx.dataset} ds={ctx.ds} has no extra['feature_stats']")
    crypto = ctx.crypto()
    data = {
        "train": load_split(lake, split_m, "train", stats, crypto, params["compress_max_train_rows"]),
        "val": load_split(lake, split_m, "val", stats, crypto, params["compress_max_eval_rows"]),
        "test": load_split(lake, split_m, "test", stats, crypto, params["compress_max_eval_rows"]),
    }
    trained = load_model(lake, model_m, stats)
    m = compress_and_commit(lake, ctx.dataset, ctx.ds, trained.model, trained.hparams, stats, data, params, fp, code)
    return {"cache_hit": False, **_summary(m)}
