"""Key rotation keeps sealed data valid: with or without re-wrap every earlier interval stays verifiable by
`secure` and readable by training, and the old key can be revoked after a re-wrap. A seal that no longer
holds stops the rotation before anything is re-wrapped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.context import StepContext
from tasks.io import verified
from tasks.security import crypto, keyring, rotation, secure
from tasks.security.crypto import CryptoError
from tasks.steps import run_step
from tests.train_data import make_split
from tests.unit.secure_data import commit_table, events

EARLIER = ("2026-11-01", "2026-11-02")
FAST = {"epochs": 1, "min_steps": 0, "batch_size": 512, "hidden": "16", "train_nproc": 1, "anomaly_check": False,
        "patience": 1}


@pytest.fixture(autouse=True)
def one_thread_per_rank(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _ctx(ds: str) -> StepContext:
    return StepContext(dataset="events", ds=ds, params=FAST)  # a fresh context sees the keyring as it is now


def _sealed(ds: str) -> None:
    ctx = _ctx(ds)
    commit_table(ctx, "clean", {"": events(1500, ds)}, ctx.crypto())
    make_split(ctx.lake, ds=ds, rows={"train": 1500, "val": 400, "test": 400}, crypto=ctx.crypto())
    assert secure.run(ctx)["checked"] == {"clean": 1, "split": 6}


def _readable_by_training(ds: str) -> int:
    """What the train step does before launching ranks (verified read), then the ranks' stream over train."""
    from tasks.training.stream import StreamDataset

    ctx = _ctx(ds)
    split = ctx.lake.require("split", "events", ds)
    files = split.group_files("train")
    rg = verified.row_group_rows(ctx.lake, split, files, ctx.crypto())
    urls = [verified.file_url(ctx.lake, split, f) for f in files]
    stream = StreamDataset(urls, split.extra["feature_stats"], 256, crypto=ctx.crypto(), rg_rows=rg, shuffle=False)
    return sum(len(b[2]) for b in stream)


@pytest.mark.parametrize("mode", ["rewrap", "rewrap-update-manifests", "no-rewrap"])
def test_rotation_leaves_every_earlier_interval_sealed_and_readable(lf_home, mode, capsys):
    for ds in EARLIER:
        _sealed(ds)
    old = _ctx(EARLIER[0]).keys.active
    path = _ctx(EARLIER[0]).keyring_path
    argv = ["--keyring", path]
    if mode != "no-rewrap":
        argv += ["--lake", _ctx(EARLIER[0]).lake_url]
    if mode == "rewrap-update-manifests":
        argv.append("--update-manifests")
    assert rotation.cli(argv) == 0
    out = json.loads(capsys.readouterr().out)
    new = keyring.load(path).active
    assert new != old
    if mode != "no-rewrap":
        assert out["seals_updated"] == len(EARLIER) and out["previous_key_ids"] == [old]
    for ds in EARLIER:
        ctx = _ctx(ds)
        assert secure.verify_seal(ctx)["sealed"] == ["clean", "split"]
        seal = ctx.lake.require("secure", "events", ds)
        wrapped_by = {k for info in seal.extra["checked"].values() for k in info["key_ids"]}
        assert wrapped_by == ({old} if mode == "no-rewrap" else {new})
        assert len(seal.extra.get("rotations", [])) == (0 if mode == "no-rewrap" else 1)
        assert secure.run(ctx)["verified"]  # a full re-check passes too
        assert _readable_by_training(ds) == 1500
    if mode == "no-rewrap":
        return
    ring = keyring.load(path)
    keyring.revoke(ring, old)  # after the re-wrap nothing needs the old key
    ring.save()
    for ds in EARLIER:
        ctx = _ctx(ds)
        assert secure.verify_seal(ctx) and secure.run(ctx)["key_ids"] == [new]
        assert _readable_by_training(ds) == 1500
    if mode == "rewrap":  # and the real train step (torchrun, one rank) trains on a rotated, revoked-key interval
        res = run_step("train", _ctx(EARLIER[1]))
        assert res["epochs_run"] >= 1 and res["input_rows"] == 1500


def test_revoking_without_rewrap_names_the_key_and_the_file(lf_home):
    _sealed(EARLIER[0])
    path = _ctx(EARLIER[0]).keyring_path
    old = keyring.load(path).active
    rotation.cli(["--keyring", path])
    ring = keyring.load(path)
    keyring.revoke(ring, old)
    ring.save()
    with pytest.raises(Exception, match=rf"{old}.*revoked"):
        _readable_by_training(EARLIER[0])


def test_a_seal_that_no_longer_holds_stops_the_rotation_before_any_rewrap(lf_home):
    for ds in EARLIER:
        _sealed(ds)
    ctx = _ctx(EARLIER[1])
    split = ctx.lake.require("split", "events", EARLIER[1])
    a, b = (Path(ctx.lake.abspath(split, e)) for e in split.files[:2])
    side_a = Path(crypto.key_material_url(str(a)))
    side_a.write_bytes(Path(crypto.key_material_url(str(b))).read_bytes())  # tampered after sealing
    sidecars = {p: p.read_bytes() for p in Path(ctx.lake_url).rglob("_KEY_MATERIAL_FOR_*")}
    with pytest.raises(CryptoError, match=rf"events ds={EARLIER[1]}: its seal does not hold.*{side_a}"):
        rotation.cli(["--keyring", ctx.keyring_path, "--rewrap-only", "--lake", ctx.lake_url])
    assert {p: p.read_bytes() for p in sidecars} == sidecars  # nothing re-wrapped, nothing re-sealed
