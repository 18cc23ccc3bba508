"""Serving exports of a tabular model and their parity check against PyTorch.

Formats (chosen by what each model can be exported to, verified by parity):

- TorchScript (``model.ts``): every candidate, including int8 dynamic-quantized ones
  (their packed int8 Linear kernels only exist in the PyTorch runtime). This is the
  format :func:`tasks.publishing.publish.load_published` serves.
- ONNX (``model.onnx``, run by onnxruntime): float models, and int8 models made by
  onnxruntime's own dynamic quantization of the float ONNX graph (:func:`onnx_int8`).
  torch ``quantize_dynamic`` modules have no ONNX export, so a torch-int8 candidate
  ships TorchScript alone.

A model takes ``forward(x_num: float32[n, k], x_cat: int64[n, m]) -> logits[n]``.
Parity = max |logit difference| on the test split within ``atol`` and the same metric
(to ``metric_tol``); an export that fails parity is an error, never published.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import warnings
import zipfile
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


class ExportError(LeptonflowError, RuntimeError):
    """An export failed or does not reproduce the PyTorch model; the message names the format."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the deprecation warnings torch.jit / the TorchScript ONNX exporter emit on every call."""
    with warnings.catch_warnings():
        for cat in (DeprecationWarning, UserWarning, FutureWarning):
            warnings.simplefilter("ignore", cat)
        yield


def is_quantized(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def to_torchscript(model: nn.Module, x_num: torch.Tensor, x_cat: torch.Tensor) -> bytes:
    """Traced TorchScript archive of `model` (eval mode) as bytes."""
    model = model.eval()
    buf = io.BytesIO()
    try:
        with quiet(), torch.no_grad():
            traced = torch.jit.trace(model, (x_num[:8], x_cat[:8]), check_trace=False)
            torch.jit.save(traced, buf)
    except Exception as exc:
        raise ExportError(f"TorchScript export of {type(model).__name__} failed: {exc}") from exc
    return _reproducible_archive(buf.getvalue())


def _reproducible_archive(data: bytes) -> bytes:
    """The TorchScript zip without what depends on who exported it.

    Tracing records the Python call stack of every op (``*.debug_pkl``: absolute paths of the
    caller, e.g. the Airflow task runner) and ``torch.jit.save`` a random ``serialization_id``.
    Both are optional for loading; without them the same model gives the same bytes from the CLI,
    an Airflow task or a test, and no host path is published.
    """
    src = zipfile.ZipFile(io.BytesIO(data))
    kept = {i.filename: src.read(i.filename) for i in src.infolist() if not i.filename.endswith(".debug_pkl")}
    digest = hashlib.sha256()
    for name, payload in kept.items():
        if not name.endswith("/.data/serialization_id"):
            digest.update(name.encode() + b"\0" + payload)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for name, payload in kept.items():
            if name.endswith("/.data/serialization_id"):
                payload = digest.hexdigest()[:20].encode()
            dst.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), payload)
    return out.getvalue()


def load_torchscript(data: bytes) -> torch.jit.ScriptModule:
    with quiet():
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


def to_onnx(model: nn.Module, x_num: torch.Tensor, x_cat: torch.Tensor) -> bytes:
    """ONNX model of a float `model` with a dynamic batch dimension."""
    if is_quantized(model):
        raise ExportError("ONNX export: dynamic-quantized (int8) models have no ONNX export; use TorchScript")
    buf = io.BytesIO()
    try:
        with quiet(), torch.no_grad():
            torch.onnx.export(
                model.eval(), (x_num[:8], x_cat[:8]), buf,
                input_names=["x_num", "x_cat"], output_names=["logits"],
                dynamic_axes={"x_num": {0: "n"}, "x_cat": {0: "n"}, "logits": {0: "n"}},
                dynamo=False,  # the TorchScript-based exporter needs no onnxscript and handles embeddings
            )
    except Exception as exc:
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {exc}") from exc
    return buf.getvalue()


def onnx_int8(data: bytes) -> bytes:
    """onnxruntime dynamic quantization of a float ONNX model: int8 weights, int8 MatMul at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="lf-onnx-") as tmp:
        out = Path(tmp) / "int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # it logs a pre-processing hint on the root logger on every call
        try:
            quantize_dynamic(onnx.load_from_string(data), out, weight_type=QuantType.QInt8)
        except Exception as exc:
            raise ExportError(f"ONNX int8 quantization failed: {exc}") from exc
        finally:
            root.setLevel(level)
        return out.read_bytes()


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
    """Compare an export with the PyTorch model on (x_num, x_cat, y), batch by batch."""
    if len(y) == 0:
        raise ExportError(f"{fmt} parity: the test split is empty")
    ref, got = [], []
    for s in range(0, len(y), batch):
        ref.append(reference(x_num[s:s + batch], x_cat[s:s + batch]))
        got.append(exported(x_num[s:s + batch], x_cat[s:s + batch]))
    a, b = np.concatenate(ref), np.concatenate(got)
    diff = float(np.max(np.abs(a - b)))
    m_ref, m_exp = float(metric(y, a)), float(metric(y, b))
    ok = diff <= atol and abs(m_ref - m_exp) <= metric_tol
    result = Parity(fmt, len(y), diff, m_ref, m_exp, ok)
    log.info("parity %s: rows=%d max|diff|=%.3g metric %.6f vs %.6f -> %s", fmt, len(y), diff, m_ref, m_exp,
             "ok" if ok else "FAILED")
    return result
