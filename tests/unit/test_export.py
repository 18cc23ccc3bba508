"""Serving exports: ONNX via torch.export for every candidate, onnxruntime int8 (dynamic, static), parity checked."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tasks.compression import export, prune
from tasks.training.metrics import metric_value
from tests.unit.tabular_toy import ToyTabular, make_data, train_toy


@pytest.fixture(scope="module")
def setup():
    x_num, x_cat, y = make_data(2000, 0)
    model = train_toy(ToyTabular(hidden=(48, 24)), x_num, x_cat, y, epochs=3)
    test = make_data(600, 1)
    return model, test


@pytest.fixture(scope="module")
def wide():
    train = make_data(1500, 3)
    model = train_toy(ToyTabular(hidden=(256, 128)), *train, epochs=2)
    return model, train


def _auc(y: np.ndarray, logits: np.ndarray) -> float:
    return metric_value("classification", y, logits, split="test")


def test_onnx_matches_pytorch_on_a_pruned_float_model(setup):
    model, (x_num, x_cat, y) = setup
    pruned, _ = prune.prune_model(model, 0.5)
    pruned.eval()
    xn, xc = torch.from_numpy(x_num), torch.from_numpy(x_cat)
    onnx_bytes = export.to_onnx(pruned, xn, xc)
    p = export.check_parity("onnx", export.torch_runner(pruned), export.onnx_runner(onnx_bytes), x_num, x_cat, y,
                            _auc, batch=250)
    assert p.ok and p.rows == 600 and p.max_abs_diff < 1e-4
    assert p.metric_export == pytest.approx(p.metric_model, abs=1e-4)
    # the graph has a dynamic batch named n: one row works as well as 600
    assert export.onnx_runner(onnx_bytes)(x_num[:1], x_cat[:1]).shape == (1,)
    graph = onnx.load_from_string(onnx_bytes).graph
    assert [(v.name, v.type.tensor_type.shape.dim[0].dim_param) for v in (*graph.input, *graph.output)] == [
        ("x_num", "n"), ("x_cat", "n"), ("logits", "n")]
    assert not any(n.metadata_props for n in graph.node)  # no call stacks of the exporting process


def test_onnx_int8_dynamic_and_static_are_smaller_and_close(setup, wide):
    _, (x_num, x_cat, y) = setup
    model, (tr_num, tr_cat, _) = wide
    xn, xc = torch.from_numpy(x_num), torch.from_numpy(x_cat)
    f32 = export.to_onnx(model, xn, xc)
    dynamic = export.onnx_int8_dynamic(f32)
    static = export.onnx_int8_static(f32, tr_num[:512], tr_cat[:512], batch=128)
    ops = {name: {n.op_type for n in onnx.load_from_string(b).graph.node}
           for name, b in (("dynamic", dynamic), ("static", static))}
    assert "MatMulInteger" in ops["dynamic"] and "DynamicQuantizeLinear" in ops["dynamic"]
    assert "QGemm" in ops["static"] and "DynamicQuantizeLinear" not in ops["static"]  # calibrated ranges
    for i8 in (dynamic, static):
        assert len(i8) * 3 < len(f32)
        p = export.check_parity("onnx", export.torch_runner(model), export.onnx_runner(i8), x_num, x_cat, y, _auc,
                                atol=float("inf"), metric_tol=0.01)
        assert p.ok and 0 < p.max_abs_diff  # int8 rounding: close, never identical
    module = export.OnnxModule(static)
    assert torch.allclose(module(xn[:5], xc[:5]), torch.from_numpy(export.onnx_runner(static)(x_num[:5], x_cat[:5])))
    # calibration is part of the result: another sample, other activation ranges
    assert export.onnx_int8_static(f32, tr_num[:512], tr_cat[:512], batch=128) == static
    assert export.onnx_int8_static(f32, tr_num[512:1024], tr_cat[512:1024], batch=128) != static
    with pytest.raises(export.ExportError, match="calibration sample is empty"):
        export.onnx_int8_static(f32, tr_num[:0], tr_cat[:0])


def test_parity_detects_a_different_model(setup):
    model, (x_num, x_cat, y) = setup
    other = ToyTabular(hidden=(48, 24)).eval()  # untrained: different logits and AUC
    p = export.check_parity("onnx", export.torch_runner(model), export.torch_runner(other), x_num, x_cat, y, _auc)
    assert not p.ok and p.max_abs_diff > 1e-3
    with pytest.raises(export.ExportError, match="empty"):
        export.check_parity("onnx", export.torch_runner(model), export.torch_runner(other), x_num[:0], x_cat[:0],
                            y[:0], _auc)


def test_state_dict_round_trip_is_weights_only(setup):
    model, (x_num, x_cat, _) = setup
    data = export.state_dict_bytes(model)
    fresh = export.load_state_dict_bytes(ToyTabular(hidden=(48, 24)), data)
    xn, xc = torch.from_numpy(x_num), torch.from_numpy(x_cat)
    with torch.no_grad():
        assert torch.equal(fresh(xn, xc), model(xn, xc))


_EXPORT_SCRIPT = """
import hashlib, sys, threading, torch
from tests.unit.tabular_toy import ToyTabular, make_data
from tasks.compression import export
torch.manual_seed(0)
x_num, x_cat, _ = make_data(64, 0)
model = ToyTabular(hidden=(8,))
xn, xc = torch.as_tensor(x_num), torch.as_tensor(x_cat)
def both():
    f32 = export.to_onnx(model, xn, xc)
    return f32.hex() + " " + export.onnx_int8_static(f32, x_num, x_cat, batch=16).hex()
def nested(depth):
    return both() if depth == 0 else nested(depth - 1)
box = []
if sys.argv[1] == "thread":
    torch.manual_seed(1)
    export.to_onnx(ToyTabular(hidden=(16, 4)), xn, xc)  # another export first: no counters leak into names
    t = threading.Thread(target=lambda: box.append(nested(7)))
    t.start()
    t.join()
else:
    box.append(both())
sys.stdout.write(box[0])
"""


def test_onnx_bytes_do_not_depend_on_the_caller():
    """The same model exports to the same bytes whoever calls (CLI, an Airflow task, a thread): no call stacks."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = [[bytes.fromhex(h) for h in subprocess.run([sys.executable, "-c", _EXPORT_SCRIPT, how], cwd=repo, env=env,
                                                     check=True, capture_output=True, text=True).stdout.split()]
           for how in ("direct", "thread")]
    assert out[0] == out[1]  # float and static int8 alike
    x_num, x_cat, _ = make_data(4, 0)
    for blob in out[0]:
        assert str(repo).encode() not in blob and b"tabular_toy" not in blob
        assert export.onnx_runner(blob)(x_num, x_cat).shape == (4,)
