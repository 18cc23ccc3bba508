"""Serving exports: TorchScript for every candidate, ONNX (onnxruntime) for float ones, parity checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.compression import compress, export, prune
from tasks.training.metrics import metric_value
from tests.unit.tabular_toy import ToyTabular, make_data, train_toy


@pytest.fixture(scope="module")
def setup():
    x_num, x_cat, y = make_data(2000, 0)
    model = train_toy(ToyTabular(hidden=(48, 24)), x_num, x_cat, y, epochs=3)
    test = make_data(600, 1)
    return model, test


def _auc(y: np.ndarray, logits: np.ndarray) -> float:
    return metric_value("classification", y, logits, split="test")


def test_torchscript_and_onnx_match_pytorch_on_a_pruned_float_model(setup):
    model, (x_num, x_cat, y) = setup
    pruned, _ = prune.prune_model(model, 0.5)
    pruned.eval()
    xn, xc = torch.from_numpy(x_num), torch.from_numpy(x_cat)
    ref = export.torch_runner(pruned)
    ts = export.load_torchscript(export.to_torchscript(pruned, xn, xc))
    p_ts = export.check_parity("torchscript", ref, export.torch_runner(ts), x_num, x_cat, y, _auc, batch=250)
    assert p_ts.ok and p_ts.rows == 600 and p_ts.max_abs_diff <= 1e-6
    onnx_bytes = export.to_onnx(pruned, xn, xc)
    p_onnx = export.check_parity("onnx", ref, export.onnx_runner(onnx_bytes), x_num, x_cat, y, _auc)
    assert p_onnx.ok and p_onnx.max_abs_diff < 1e-4
    assert p_onnx.metric_export == pytest.approx(p_onnx.metric_model, abs=1e-4)
    # the ONNX graph has a dynamic batch: one row works as well as 600
    assert export.onnx_runner(onnx_bytes)(x_num[:1], x_cat[:1]).shape == (1,)


def test_quantized_model_exports_to_torchscript_only(setup):
    model, (x_num, x_cat, y) = setup
    q = compress.torch_int8(model)
    xn, xc = torch.from_numpy(x_num), torch.from_numpy(x_cat)
    ts = export.load_torchscript(export.to_torchscript(q, xn, xc))
    p = export.check_parity("torchscript", export.torch_runner(q), export.torch_runner(ts), x_num, x_cat, y, _auc)
    assert p.ok and p.max_abs_diff == 0.0  # same int8 kernels in both runtimes
    with pytest.raises(export.ExportError, match="ONNX export"):
        export.to_onnx(q, xn, xc)


def test_onnx_int8_is_smaller_and_close_to_the_float_model(setup):
    _, (x_num, x_cat, y) = setup
    wide = train_toy(ToyTabular(hidden=(256, 128)), *make_data(1500, 3), epochs=2)
    xn, xc = torch.from_numpy(x_num), torch.from_numpy(x_cat)
    f32 = export.to_onnx(wide, xn, xc)
    i8 = export.onnx_int8(f32)
    assert len(i8) * 3 < len(f32)
    p = export.check_parity("onnx", export.torch_runner(wide), export.onnx_runner(i8), x_num, x_cat, y, _auc,
                            atol=float("inf"), metric_tol=0.01)
    assert p.ok and 0 < p.max_abs_diff < 1.0  # int8 rounding: close, never identical
    module = export.OnnxModule(i8)
    assert torch.allclose(module(xn[:5], xc[:5]), torch.from_numpy(export.onnx_runner(i8)(x_num[:5], x_cat[:5])))


def test_parity_detects_a_different_model(setup):
    model, (x_num, x_cat, y) = setup
    other = ToyTabular(hidden=(48, 24)).eval()  # untrained: different logits and AUC
    p = export.check_parity("torchscript", export.torch_runner(model), export.torch_runner(other), x_num, x_cat, y,
                            _auc)
    assert not p.ok and p.max_abs_diff > 1e-3
    with pytest.raises(export.ExportError, match="empty"):
        export.check_parity("onnx", export.torch_runner(model), export.torch_runner(other), x_num[:0], x_cat[:0],
                            y[:0], _auc)


_EXPORT_SCRIPT = """
import hashlib, sys, threading, torch
from tests.unit.tabular_toy import ToyTabular, make_data
from tasks.compression import export
torch.manual_seed(0)
x_num, x_cat, _ = make_data(64, 0)
model = ToyTabular(hidden=(8,))
xn, xc = torch.as_tensor(x_num), torch.as_tensor(x_cat)
def nested(depth):
    return export.to_torchscript(model, xn, xc) if depth == 0 else nested(depth - 1)
box = []
if sys.argv[1] == "thread":
    t = threading.Thread(target=lambda: box.append(nested(7)))
    t.start()
    t.join()
else:
    box.append(export.to_torchscript(model, xn, xc))
sys.stdout.write(box[0].hex())
"""


def test_torchscript_bytes_do_not_depend_on_the_caller():
    """The same model exports to the same bytes whoever calls (CLI, an Airflow task, a thread): no call stacks."""
    import io
    import os
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = [bytes.fromhex(subprocess.run([sys.executable, "-c", _EXPORT_SCRIPT, how], cwd=repo, env=env, check=True,
                                        capture_output=True, text=True).stdout) for how in ("direct", "thread")]
    assert out[0] == out[1]
    names = zipfile.ZipFile(io.BytesIO(out[0])).namelist()
    assert not any(n.endswith(".debug_pkl") for n in names) and str(repo).encode() not in out[0]
    loaded = export.load_torchscript(out[0])
    assert loaded is not None
