"""Serving exports of a tabular model (ONNX, run by onnxruntime) and their parity check against PyTorch.

Every candidate is served as ONNX (``model.onnx``):

- float: exported with the torch.export-based ONNX exporter (``torch.onnx.export(..., dynamo=True)``,
  a dynamic batch dimension), see :func:`to_onnx`;
- int8, dynamic: onnxruntime's ``quantize_dynamic`` of that graph (int8 weights, activations
  quantized per batch at run time), :func:`onnx_int8_dynamic`;
- int8, static: onnxruntime's ``quantize_static`` with activation ranges calibrated on a
  sample of train rows (a ``CalibrationDataReader``), :func:`onnx_int8_static`.

Both quantizations start from onnxruntime's recommended pre-processing (``quant_pre_process``:
shape inference and graph optimization). The uncompressed PyTorch model is measured from its
``state_dict`` bytes (:func:`state_dict_bytes` / :func:`load_state_dict_bytes`, weights only).

Exported bytes do not depend on who exports them: the exporter records, per node, the Python
call stack and module path of the exporting process (``metadata_props``), which are dropped
(:func:`_reproducible`), so the CLI, an Airflow task or a test publish the same bytes and no
host path.

A model takes ``forward(x_num: float32[n, k], x_cat: int64[n, m]) -> logits[n]``.
Parity = max |logit difference| on the test split within ``atol`` and the same metric
(to ``metric_tol``); an export that fails parity is an error, never published.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.errors import LeptonflowError

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x_num, x_cat) -> logits
INPUTS = ("x_num", "x_cat")
OUTPUT = "logits"
BATCH_DIM = "n"  # the name of the dynamic batch dimension in every exported graph

# torch.export deep-copies its own pytree specs, and torch 2.13's deprecated ``LeafSpec`` class warns
# on every copy (pytorch/ao#4109): raised inside torch, about no API this module calls.
_TORCH_INTERNAL_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# INFO chatter of the exporter's optimizer passes and one WARNING per process about torchvision ops
_NOISY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx._internal.exporter._registration")


class ExportError(LeptonflowError, RuntimeError):
    """An export failed or does not reproduce the PyTorch model; the message names the format."""


class _DropInfo(logging.Filter):
    """Drops records below WARNING logged directly on the root logger (onnxruntime.quantization does)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Scope of an export or quantization: the known torch-internal warning ignored, progress logs hushed.

    Only the one warning raised inside torch (``_TORCH_INTERNAL_WARNING``) is ignored; any other
    warning, deprecations included, reaches the caller.
    """
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    root_filter = _DropInfo()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCH_INTERNAL_WARNING, category=FutureWarning)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        logging.getLogger().addFilter(root_filter)
        try:
            yield
        finally:
            logging.getLogger().removeFilter(root_filter)
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


# ---- float export ------------------------------------------------------------------
def to_onnx(model: nn.Module, x_num: torch.Tensor, x_cat: torch.Tensor) -> bytes:
    """ONNX model of a float `model` (eval mode) with a dynamic batch dimension, via torch.export."""
    model = model.eval()
    dyn = torch.export.Dim.DYNAMIC
    try:
        with quiet(), torch.no_grad():
            program = torch.onnx.export(
                model, (x_num[:8], x_cat[:8]), None, input_names=list(INPUTS), output_names=[OUTPUT],
                dynamic_shapes=({0: dyn}, {0: dyn}), dynamo=True, external_data=False, optimize=True,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {exc}") from exc
    if program is None:
        raise ExportError(f"ONNX export of {type(model).__name__} returned no program")
    return _reproducible(program.model_proto)


def _reproducible(proto: Any) -> bytes:
    """The serialized model without what depends on who exported it.

    The exporter attaches to nodes, values and the graph the stack trace, module path and FX node
    of the exporting process (``metadata_props``, e.g. the Airflow task runner's paths); none is
    needed to run the model. The batch dimension is named :data:`BATCH_DIM` (the exporter's own
    symbol name is an implementation detail).
    """
    graph = proto.graph
    del proto.metadata_props[:]
    del graph.metadata_props[:]
    proto.doc_string = ""
    graph.doc_string = ""
    for items in (graph.node, graph.value_info, graph.initializer, graph.input, graph.output):
        for item in items:
            del item.metadata_props[:]
            item.doc_string = ""
    batch = {v.type.tensor_type.shape.dim[0].dim_param for v in graph.input if v.type.tensor_type.shape.dim}
    for v in (*graph.input, *graph.output, *graph.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param and d.dim_param in batch:
                d.dim_param = BATCH_DIM
    return proto.SerializeToString(deterministic=True)


# ---- int8 (onnxruntime quantization) --------------------------------------------------
def _pre_process(data: bytes, tmp: Path) -> Path:
    """onnxruntime's recommended step before quantization: shape inference + graph optimization."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    src, out = tmp / "float.onnx", tmp / "pre.onnx"
    onnx.save_model(onnx.load_from_string(data), src)
    quant_pre_process(str(src), str(out))
    return out


def onnx_int8_dynamic(data: bytes) -> bytes:
    """onnxruntime dynamic quantization of a float ONNX model: int8 weights, activations quantized per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="lf-onnx-") as tmp, quiet():
        out = Path(tmp) / "int8.onnx"
        try:
            quantize_dynamic(_pre_process(data, Path(tmp)), out, weight_type=QuantType.QInt8)
        except Exception as exc:
            raise ExportError(f"ONNX dynamic int8 quantization failed: {exc}") from exc
        return _canonical(out.read_bytes())


def onnx_int8_static(data: bytes, x_num: np.ndarray, x_cat: np.ndarray, batch: int = 256) -> bytes:
    """onnxruntime static quantization: int8 weights and activations, ranges calibrated on (x_num, x_cat).

    QOperator format (QGemm / QLinearConcat kernels), uint8 activations and int8 weights (the x86
    CPU pairing), MinMax calibration over `batch`-row batches of the calibration sample.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if len(x_num) == 0:
        raise ExportError("ONNX static int8 quantization: the calibration sample is empty")
    with tempfile.TemporaryDirectory(prefix="lf-onnx-") as tmp, quiet():
        out = Path(tmp) / "int8.onnx"
        try:
            quantize_static(
                _pre_process(data, Path(tmp)), out, calibration_reader(x_num, x_cat, batch),
                quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as exc:
            raise ExportError(f"ONNX static int8 quantization failed: {exc}") from exc
        return _canonical(out.read_bytes())


def _canonical(data: bytes) -> bytes:
    import onnx

    return _reproducible(onnx.load_from_string(data))


def calibration_reader(x_num: np.ndarray, x_cat: np.ndarray, batch: int = 256) -> Any:
    """An onnxruntime ``CalibrationDataReader`` over the calibration sample, `batch` rows at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    if len(x_num) != len(x_cat):
        raise ValueError(f"calibration inputs disagree on row count: {len(x_num)} vs {len(x_cat)}")
    batches = [
        {"x_num": np.ascontiguousarray(x_num[s:s + batch], dtype=np.float32),
         "x_cat": np.ascontiguousarray(x_cat[s:s + batch], dtype=np.int64)}
        for s in range(0, len(x_num), batch)
    ]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.position = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position >= len(batches):
                return None
            self.position += 1
            return batches[self.position - 1]

        def rewind(self) -> None:
            self.position = 0

    return Reader()


# ---- PyTorch reference ------------------------------------------------------------
def state_dict_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def load_state_dict_bytes(template: nn.Module, data: bytes) -> nn.Module:
    """A copy of `template` (same architecture) with the weights in `data` (loaded weights-only)."""
    model = copy.deepcopy(template)
    model.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
    return model.eval()


# ---- runners ------------------------------------------------------------------------
class OnnxModule(nn.Module):
    """An ONNX model run by onnxruntime behind the usual ``forward(x_num, x_cat) -> logits`` interface."""

    def __init__(self, data: bytes, threads: int = 1):
        super().__init__()
        self.run = onnx_runner(data, threads)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(x_num.numpy(), x_cat.numpy()))


def torch_runner(model: nn.Module) -> Runner:
    def run(x_num: np.ndarray, x_cat: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x_num), torch.from_numpy(x_cat)).reshape(-1).numpy()

    return run


def onnx_runner(data: bytes, threads: int = 1) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])

    def run(x_num: np.ndarray, x_cat: np.ndarray) -> np.ndarray:
        return sess.run(None, {"x_num": x_num, "x_cat": x_cat})[0].reshape(-1)

    return run


# ---- parity ---------------------------------------------------------------------------
@dataclass
class Parity:
    format: str
    rows: int
    max_abs_diff: float
    metric_model: float
    metric_export: float
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(
    fmt: str,
    reference: Runner,
    exported: Runner,
    x_num: np.ndarray,
    x_cat: np.ndarray,
    y: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    atol: float = 1e-4,
    metric_tol: float = 1e-4,
    batch: int = 8192,
) -> Parity:
    """Compare an export with the PyTorch model on (x_num, x_cat, y), batch by batch; `atol` and `metric_tol`
    are relative to the magnitude of the outputs and of the metric (at least 1)."""
    if len(y) == 0:
        raise ExportError(f"{fmt} parity: the test split is empty")
    ref, got = [], []
    for s in range(0, len(y), batch):
        ref.append(reference(x_num[s:s + batch], x_cat[s:s + batch]))
        got.append(exported(x_num[s:s + batch], x_cat[s:s + batch]))
    a, b = np.concatenate(ref), np.concatenate(got)
    diff = float(np.max(np.abs(a - b)))
    m_ref, m_exp = float(metric(y, a)), float(metric(y, b))
    # relative to the outputs' and the metric's magnitude: a regression model outputs the label's own scale
    # (prices in the hundreds of thousands, where float32 steps are ~0.02), classification logits ~1
    ok = (diff <= atol * max(1.0, float(np.max(np.abs(a)))) and
          abs(m_ref - m_exp) <= metric_tol * max(1.0, abs(m_ref)))
    result = Parity(fmt, len(y), diff, m_ref, m_exp, ok)
    log.info("parity %s: rows=%d max|diff|=%.3g metric %.6f vs %.6f -> %s", fmt, len(y), diff, m_ref, m_exp,
             "ok" if ok else "FAILED")
    return result
