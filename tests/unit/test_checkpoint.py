"""Checkpoints: atomic and verified; missing -> fresh, corrupt -> moved aside and fall back, other run -> fresh."""

from __future__ import annotations

import json
import logging

import torch

from tasks.training.checkpoint import LATEST, CheckpointStore, rng_state, set_rng_state
from tasks.training.model import build_model
from tests.train_data import fit_stats, make_events


def payload(step: int) -> dict:
    torch.manual_seed(step)
    model = build_model(fit_stats(make_events(300, 1)), {"hidden": [8]})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.long)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": [rng_state()],
            "state": {"epoch": 1, "step_in_epoch": step % 7, "global_step": step, "best_metric": 0.7,
                      "history": [{"epoch": 0, "val_metric": 0.7}]}}


def test_roundtrip_keeps_two_newest_and_loads_weights_only(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"))
    for step in (10, 20, 30):
        store.save(payload(step), step, run_key="k1")
    files = sorted(p.name for p in (tmp_path / "ck").glob("ckpt-*.pt"))
    assert files == ["ckpt-000000020.pt", "ckpt-000000030.pt"]
    assert not list((tmp_path / "ck").glob("*.tmp-*"))  # temporary files renamed away
    got = store.load("k1")
    assert got["state"]["global_step"] == 30 and store.latest_step() == 30
    ref = payload(30)
    for k, v in ref["model"].items():
        assert torch.equal(got["model"][k], v)
    assert got["optimizer"]["state"][0]["step"] == ref["optimizer"]["state"][0]["step"]


def test_missing_checkpoint_starts_fresh_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert CheckpointStore(str(tmp_path / "none")).load("k") is None
    assert "no checkpoint" in caplog.text


def test_corrupt_newest_is_moved_aside_and_the_previous_one_used(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path / "ck"))
    store.save(payload(10), 10, run_key="k")
    store.save(payload(20), 20, run_key="k")
    newest = tmp_path / "ck" / "ckpt-000000020.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):
        got = store.load("k")
    assert got["state"]["global_step"] == 10
    assert "ckpt-000000020.pt is corrupt" in caplog.text
    assert (tmp_path / "ck" / "ckpt-000000020.pt.corrupt").exists() and not newest.exists()


def test_truncated_only_checkpoint_restarts_fresh(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path / "ck"))
    store.save(payload(10), 10, run_key="k")
    path = tmp_path / "ck" / "ckpt-000000010.pt"
    path.write_bytes(path.read_bytes()[:100])
    index = json.loads((tmp_path / "ck" / LATEST).read_text())
    import hashlib

    index["checkpoints"][0]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()  # a valid hash of junk
    (tmp_path / "ck" / LATEST).write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING):
        assert store.load("k") is None
    assert "cannot be loaded" in caplog.text and "starts fresh" in caplog.text


def test_unreadable_index_and_other_run_key_start_fresh(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path / "ck"))
    store.save(payload(10), 10, run_key="old-params")
    assert store.load("new-params") is None
    assert not (tmp_path / "ck").exists()  # stale checkpoints of another input/params are removed
    store.save(payload(10), 10, run_key="k")
    (tmp_path / "ck" / LATEST).write_text("{not json")
    with caplog.at_level(logging.ERROR):
        assert store.load("k") is None
    assert "unreadable" in caplog.text


def test_pickled_objects_are_refused(tmp_path, caplog):
    """A checkpoint that needs unpickling of arbitrary objects is not loaded (weights_only)."""
    store = CheckpointStore(str(tmp_path / "ck"))
    store.save({"model": {}, "evil": logging.getLogger("x")}, 5, run_key="k")
    with caplog.at_level(logging.ERROR):
        assert store.load("k") is None
    assert "cannot be loaded" in caplog.text


def test_rng_state_roundtrip():
    s = rng_state()
    a = torch.rand(3)
    set_rng_state(s)
    assert torch.equal(torch.rand(3), a)
