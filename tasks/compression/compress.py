"""Compression step: structured pruning x int8 quantization x serving runtime, under an accuracy budget.

For every grid point (prune ratio x backend) the candidate is built (prune -> short
fine-tune on train -> quantize -> export) and then *measured on the exported artifact*
as it will be served: serialized size in bytes, CPU latency at batch 1 and 256 (p50 and p99
of repeated runs on one intra-op thread, so numbers are comparable), and the metric on
val (AUC for classification, RMSE for regression). The kept candidate is the smallest
(then fastest) served one whose metric drop vs the uncompressed model stays within the
``compress_budget`` setting (AUC drop for classification, RMSE increase for regression).

Every gain is measured against the reference ``p00-fp32-torch``: the uncompressed float model
as PyTorch runs it, loaded from its ``state_dict`` bytes. It is measured, never served. The
uncompressed model exported to ONNX (``p00-fp32-onnx``) is always a candidate, so when nothing
compressed fits it is what gets published, and the result says so.

Backends (the small :class:`Backend` interface, ``BACKENDS``; one more entry adds another runtime):

- ``fp32-torch``       reference: float PyTorch model from its ``state_dict`` (not served)
- ``fp32-onnx``        float model, torch.export-based ONNX export, run by onnxruntime
- ``int8-onnx``        onnxruntime dynamic quantization of that graph (int8 weights, activations per batch)
- ``int8-static-onnx`` onnxruntime static quantization, activation ranges calibrated on a sample of
  ``compress_calibration_rows`` train rows

torchao (0.18, the pinned torch's release) was measured as the torch-native int8 path and left
out: on CPU its int8 dynamic Linear was slower than the float model (bench/compress.py).
Serving is ONNX only: TorchScript (``torch.jit``) is deprecated in the pinned torch.

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
DEFAULT_BACKENDS = ("fp32-onnx", "int8-onnx", "int8-static-onnx")
DEFAULT_CALIBRATION_ROWS = 2048


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
    """A candidate as built: the artifact bytes, its file name, and a runner loaded from those bytes."""

    artifact: bytes
    filename: str  # model.onnx (served) | model.pt (the PyTorch reference)
    runner: export.Runner
    reference: nn.Module  # the float PyTorch module the artifact was made from (parity reference)
    exact: bool  # True when the artifact must reproduce `reference` to float tolerance


@dataclass
class Inputs:
    """What a backend builds from besides the model: a sample batch and a calibration sample of train.

    :meth:`float_onnx` exports a model once: the float and both int8 backends start from the same graph.
    """

    x_num: torch.Tensor
    x_cat: torch.Tensor
    calib_num: np.ndarray
    calib_cat: np.ndarray
    _onnx: dict[int, tuple[nn.Module, bytes]] = field(default_factory=dict, repr=False)

    def float_onnx(self, model: nn.Module) -> bytes:
        key = id(model)
        if key not in self._onnx or self._onnx[key][0] is not model:
            self._onnx[key] = (model, export.to_onnx(model, self.x_num, self.x_cat))
        return self._onnx[key][1]


class Backend(Protocol):
    """One way to quantize and serve a (pruned) float model; measured, never assumed, by :func:`search`."""

    name: str
    quantized: bool
    served: bool  # False: measured as the reference only, never published

    def build(self, model: nn.Module, inputs: Inputs) -> Built: ...


class TorchFloat:
    """The reference: the float model as PyTorch runs it, reloaded from its state_dict bytes."""

    name, quantized, served = "fp32-torch", False, False

    def build(self, model: nn.Module, inputs: Inputs) -> Built:
        data = export.state_dict_bytes(model)
        return Built(data, "model.pt", export.torch_runner(export.load_state_dict_bytes(model, data)), model, True)


class OnnxFloat:
    name, quantized, served = "fp32-onnx", False, True

    def build(self, model: nn.Module, inputs: Inputs) -> Built:
        data = inputs.float_onnx(model)
        return Built(data, "model.onnx", export.onnx_runner(data), model, True)


class OnnxDynamicInt8:
    """onnxruntime dynamic quantization of the float ONNX graph (int8 MatMul kernels of onnxruntime)."""

    name, quantized, served = "int8-onnx", True, True

    def build(self, model: nn.Module, inputs: Inputs) -> Built:
        data = export.onnx_int8_dynamic(inputs.float_onnx(model))
        return Built(data, "model.onnx", export.onnx_runner(data), model, False)


class OnnxStaticInt8:
    """onnxruntime static quantization, activation ranges calibrated on the train sample (QGemm kernels)."""

    name, quantized, served = "int8-static-onnx", True, True

    def build(self, model: nn.Module, inputs: Inputs) -> Built:
        data = export.onnx_int8_static(inputs.float_onnx(model), inputs.calib_num, inputs.calib_cat)
        return Built(data, "model.onnx", export.onnx_runner(data), model, False)


BACKENDS: dict[str, Backend] = {b.name: b for b in (TorchFloat(), OnnxFloat(), OnnxDynamicInt8(), OnnxStaticInt8())}
REFERENCE = "fp32-torch"  # the uncompressed model as PyTorch runs it: what every gain is measured against
FALLBACK = "fp32-onnx"  # the uncompressed model as served: always built, published when nothing compressed fits


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown compression backend {name!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[name]


def calibration_sample(train: TabularData, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`rows` train rows drawn without replacement (all of them when train is smaller), for static int8."""
    if rows < 1:
        raise ValueError(f"compress_calibration_rows must be >= 1, got {rows}")
    if len(train) == 0:
        raise ValueError("train split is empty: no calibration sample for static int8 quantization")
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:rows].sort().values
    return train.x_num[idx].numpy(), train.x_cat[idx].numpy()


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


@dataclass(frozen=True)
class Latency:
    """Wall time of one call in milliseconds: median (p50) and 99th percentile of the timed repeats."""

    p50_ms: float
    p99_ms: float


def latency(run: export.Runner, x_num: np.ndarray, x_cat: np.ndarray, repeats: int = 30, warmup: int = 5) -> Latency:
    """p50/p99 of `repeats` timed calls after `warmup`, torch on one intra-op thread (onnxruntime runners too)."""
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
        return Latency(float(statistics.median(times)), float(np.percentile(times, 99)))
    finally:
        torch.set_num_threads(threads)


B1_REPEATS_FACTOR = 10  # batch-1 calls are ~100x cheaper than batch 256: more samples for a meaningful p99


@dataclass
class Candidate:
    name: str
    prune_ratio: float
    backend: str
    quantized: bool
    format: str
    parameters: int
    size_bytes: int
    latency_b1_ms: float  # p50
    latency_b1_p99_ms: float
    latency_b256_ms: float  # p50
    latency_b256_p99_ms: float
    metric: float
    metric_drop: float
    within_budget: bool
    served: bool = True  # False for the PyTorch reference: measured, never published
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
    calibration_rows: int = DEFAULT_CALIBRATION_ROWS,
) -> SearchResult:
    """Build, export and measure every candidate; mark the smallest, fastest served one within budget.

    The PyTorch reference and the float ONNX export are built at every ratio whatever `backends`
    says: the first is what gains are measured against, the second the fallback when nothing
    compressed fits.
    """
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
    inputs = Inputs(*b256, *calibration_sample(train, calibration_rows, seed))
    ratios = sorted({0.0, *map(float, ratios)})  # the uncompressed model is always a candidate
    names = list(dict.fromkeys([REFERENCE, FALLBACK, *backends]))
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
            b = be.build(pruned, inputs)
            name = f"p{int(round(ratio * 100)):02d}-{bname}"
            value = metric_value(task, val.y.numpy(), predict(b.runner, val), split="val")  # what is served
            drop = metric_drop(task, baseline, value)
            lat1 = latency(b.runner, *b1_np, repeats=repeats * B1_REPEATS_FACTOR)
            lat256 = latency(b.runner, *b256_np, repeats=repeats)
            cand = Candidate(
                name=name, prune_ratio=ratio, backend=bname, quantized=be.quantized,
                format=b.filename.rsplit(".", 1)[-1], parameters=prune.count_parameters(pruned),
                size_bytes=len(b.artifact), latency_b1_ms=lat1.p50_ms, latency_b1_p99_ms=lat1.p99_ms,
                latency_b256_ms=lat256.p50_ms, latency_b256_p99_ms=lat256.p99_ms,
                metric=value, metric_drop=drop, within_budget=drop <= budget + 1e-12, served=be.served,
                widths=dict(widths),
            )
            log.info("candidate %s: %d bytes, b1 %.3f ms (p99 %.3f), b256 %.3f ms, %s %.5f (drop %.5f)", name,
                     cand.size_bytes, cand.latency_b1_ms, cand.latency_b1_p99_ms, cand.latency_b256_ms, mname,
                     value, drop)
            cands.append(cand)
            built[name] = b
    fits = [c for c in cands if c.served and c.within_budget]
    if fits:
        best = min(fits, key=lambda c: (c.size_bytes, c.latency_b256_ms))
    else:  # even the float export misses a zero budget by rounding: publish the uncompressed model
        best = next(c for c in cands if c.name == f"p00-{FALLBACK}")
    best.chosen = True
    return SearchResult(task, mname, budget, baseline, cands, built)


# ---- reports ------------------------------------------------------------------------
def markdown_table(result: SearchResult) -> str:
    base = result.baseline
    m = result.metric_name
    lines = [
        f"| candidate | prune | backend | params | size (bytes) | x smaller | b1 p50 ms | b1 p99 ms | b256 ms "
        f"| x faster b256 | {m} (val) | drop | within budget {result.budget:g} | chosen |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result.candidates:
        mark = "**yes**" if c.chosen else "" if c.served else "reference (not served)"
        lines.append(
            f"| {c.name} | {c.prune_ratio:.2f} | {c.backend} | {c.parameters} | {c.size_bytes} "
            f"| {base.size_bytes / c.size_bytes:.2f} | {c.latency_b1_ms:.3f} | {c.latency_b1_p99_ms:.3f} "
            f"| {c.latency_b256_ms:.3f} | {base.latency_b256_ms / c.latency_b256_ms:.2f} | {c.metric:.5f} "
            f"| {c.metric_drop:+.5f} | {'yes' if c.within_budget else 'no'} | {mark} |"
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
    ax.set_xlabel("serialized size (bytes: ONNX; state_dict for fp32-torch)")
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
    """One split of the split manifest through the shared feature transform (row groups, capped).

    Each file read is verified against the manifest (size and rows on opening, sha256 of what is
    read plus the rest of the file once done with it), so a replaced file fails here, naming it.
    """
    import pyarrow as pa

    from tasks.io import verified
    from tasks.prep.features import transform

    tables: list[pa.Table] = []
    n = 0
    for f in split_m.group_files(group):
        if max_rows is not None and n >= max_rows:
            break
        vp = verified.VerifiedParquet(verified.file_url(lake, split_m, f), f, crypto)
        for i in range(vp.num_row_groups):
            rg = vp.read_row_group(i)
            tables.append(rg)
            n += rg.num_rows
            if max_rows is not None and n >= max_rows:
                break
        vp.finish()
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
        "compress_calibration_rows": ctx.param("compress_calibration_rows"),
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
        seed=params["seed"], calibration_rows=params["compress_calibration_rows"],
    )
    chosen = result.chosen
    built = result.built[chosen.name]
    reference = built.reference
    test = data["test"]
    x_num, x_cat, y = test.x_num.numpy(), test.x_cat.numpy(), test.y.numpy()

    def metric(yy: np.ndarray, logits: np.ndarray) -> float:
        return metric_value(task, yy, logits, split="test")

    files: dict[str, bytes] = {built.filename: built.artifact}
    served = export.onnx_runner(files[built.filename])  # reloaded from the bytes being committed
    if built.exact:
        parity = export.check_parity("onnx", export.torch_runner(reference), served, x_num, x_cat, y, metric)
    else:  # int8 made after export: it cannot match the float model bit for bit, only within the budget
        parity = export.check_parity("onnx", export.torch_runner(reference), served, x_num, x_cat, y, metric,
                                     atol=float("inf"), metric_tol=result.budget)
    if not parity.ok:
        raise export.ExportError(f"export parity failed on the test split for {built.filename} "
                                 f"({chosen.name}): {parity.to_dict()}")
    files["model.pt"] = export.state_dict_bytes(reference)  # float weights, loadable after prune.resize
    note = (f"chose {chosen.name}" if result.compressed else
            "no compressed candidate stayed within the budget: publishing the uncompressed model")
    structure = {
        "candidate": chosen.name, "prune_ratio": chosen.prune_ratio, "backend": chosen.backend,
        "quantized": chosen.quantized, "widths": chosen.widths, "hparams": hparams, "task": task,
        "metric": result.metric_name, "formats": sorted(files), "serving_format": built.filename,
        "state_dict": "float",
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
    summary = {
        "compressed": result.compressed, "note": note, "chosen": chosen.to_dict(), "task": task,
        "metric_name": result.metric_name, "baseline_metric": result.baseline_metric, "budget": result.budget,
        "baseline": base.name,
        "size_ratio": base.size_bytes / chosen.size_bytes,
        "speedup_b256": base.latency_b256_ms / chosen.latency_b256_ms,
        "speedup_b1": base.latency_b1_ms / chosen.latency_b1_ms,
        "latency_b1_p50_ms": chosen.latency_b1_ms, "latency_b1_p99_ms": chosen.latency_b1_p99_ms,
        "serving_format": built.filename, "test_metric": parity.metric_export,
        "parity": [parity.to_dict()],
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
