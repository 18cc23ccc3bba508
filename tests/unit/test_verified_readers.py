"""The steps after `secure` verify what they read: a split file swapped for another interval's encrypted file
(manifest untouched) fails train, evaluate and compress, naming the file; bytes are hashed as they are read."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from tasks.context import StepContext
from tasks.errors import IntegrityError
from tasks.io import verified
from tasks.io.lake import FileEntry, Manifest
from tasks.security import crypto
from tasks.training.model import build_model
from tasks.training.stream import StreamDataset
from tests.train_data import make_split

D1, D2 = "2026-11-05", "2026-11-06"
ROWS = {"train": 1200, "val": 300, "test": 300}


def _split(ds: str, seed: int, rows: dict[str, int] = ROWS) -> tuple[StepContext, Manifest]:
    ctx = StepContext(dataset="events", ds=ds, params={"encrypt": True, "epochs": 1, "train_nproc": 1})
    return ctx, make_split(ctx.lake, ds=ds, rows=rows, crypto=ctx.crypto(), seed=seed)


def _swap(ctx: StepContext, m: Manifest, group: str, other: Manifest) -> Path:
    """Replace the first `group` file of `m` (and its key material) by the other interval's: both are valid
    encrypted files of this lake's keyring, so only the manifest's sha256/size can tell."""
    victim = Path(ctx.lake.abspath(m, m.group_files(group)[0]))
    source = Path(ctx.lake.abspath(other, other.group_files(group)[0]))
    shutil.copyfile(source, victim)
    shutil.copyfile(crypto.key_material_url(str(source)), crypto.key_material_url(str(victim)))
    assert Path(crypto.key_material_url(str(victim))).exists()
    return victim


@pytest.fixture
def two_intervals(lf_home):
    ctx1, m1 = _split(D1, seed=7)
    _, m2 = _split(D2, seed=99)  # the same row counts, other rows: other bytes
    return ctx1, m1, m2


def _commit_model(ctx: StepContext, stats: dict) -> None:
    torch.manual_seed(1)
    hp = {"hidden": [8], "dropout": 0.0}
    model = build_model(stats, hp)
    version, vdir = ctx.lake.new_version("model", ctx.dataset, ctx.ds)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    files = []
    for name, data in (("model.pt", buf.getvalue()),
                       ("model_config.json", json.dumps({"hparams": hp, "feature_stats": stats}).encode())):
        ctx.lake.fs.pipe_file(f"{vdir}/{name}", data)
        files.append(FileEntry(f"v={version}/{name}", 0, len(data), hashlib.sha256(data).hexdigest()))
    ctx.lake.commit(Manifest("model", ctx.dataset, ctx.ds, version, files=files))


def test_a_swapped_split_file_fails_train_naming_it(two_intervals):
    from tasks.training import train

    ctx, m1, m2 = two_intervals
    victim = _swap(ctx, m1, "train", m2)
    with pytest.raises(IntegrityError, match=rf"{victim}: (size|sha256|\d+ rows)") as err:
        train.run(ctx)
    assert err.value.path == str(victim)
    assert not ctx.lake.manifest("model", "events", D1)  # nothing trained, nothing committed


def test_a_swapped_test_file_fails_evaluate_naming_it(two_intervals):
    from tasks.training import evaluate

    ctx, m1, m2 = two_intervals
    _commit_model(ctx, m1.extra["feature_stats"])
    victim = _swap(ctx, m1, "test", m2)
    with pytest.raises(IntegrityError, match=str(victim)):
        evaluate.run(ctx)
    assert ctx.lake.manifest("evaluation", "events", D1) is None


def test_a_swapped_val_file_fails_compress_naming_it(two_intervals):
    from tasks.compression import compress

    ctx, m1, m2 = two_intervals
    _commit_model(ctx, m1.extra["feature_stats"])
    victim = _swap(ctx, m1, "val", m2)
    with pytest.raises(IntegrityError, match=str(victim)):
        compress.run(ctx)
    assert ctx.lake.manifest("compressed", "events", D1) is None


def test_same_size_tampering_is_caught_by_the_hash_of_what_was_read(lf_home, tmp_path):
    ctx = StepContext(dataset="events", ds=D1, params={"encrypt": False})
    m = make_split(ctx.lake, ds=D1, rows=ROWS, crypto=None)
    entry = m.group_files("test")[0]
    url = verified.file_url(ctx.lake, m, entry)
    vp = verified.VerifiedParquet(url, entry)
    rows = sum(vp.read_row_group(i).num_rows for i in range(vp.num_row_groups))
    vp.finish()  # the untouched file passes
    assert rows == entry.rows and vp.file._hashed == entry.bytes
    data = bytearray(Path(url).read_bytes())
    data[4] ^= 0x01  # inside the first page: same size, same footer
    Path(url).write_bytes(bytes(data))
    vp = verified.VerifiedParquet(url, entry)
    with pytest.raises(IntegrityError, match=rf"{url}: sha256"):
        for i in range(vp.num_row_groups):
            try:
                vp.read_row_group(i)
            except Exception:  # noqa: BLE001 - the decoder may or may not notice; the hash always does
                break
        vp.finish()


def test_ranks_refuse_a_file_replaced_after_the_check(two_intervals):
    ctx, m1, m2 = two_intervals
    files = m1.group_files("train")
    rg = verified.row_group_rows(ctx.lake, m1, files, ctx.crypto())
    urls = [verified.file_url(ctx.lake, m1, f) for f in files]
    layouts = verified.layouts(ctx.lake, m1, files, ctx.crypto())  # what the step verified
    assert [lay.row_groups for lay in layouts] == rg
    victim = _swap(ctx, m1, "train", m2)  # replaced between the check and a rank's read
    stream = StreamDataset(urls, m1.extra["feature_stats"], 256, crypto=ctx.crypto(), rg_rows=rg, shuffle=False,
                           layouts=layouts)
    with pytest.raises(IntegrityError, match=rf"{victim}: not the file verified before training"):
        list(stream)
