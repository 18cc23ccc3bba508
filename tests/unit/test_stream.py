"""The streaming dataset: exact sharding, deterministic shuffle, arithmetic resume, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from torch.utils.data import DataLoader

from tasks.io.parquet import write_table
from tasks.training.stream import FeatureError, StreamDataset, feature_columns, plan_shards, resume_point, worker_skips

REPO = Path(__file__).resolve().parents[2]

# one numeric feature that is the row id itself (mean 0, std 1), so batches name their rows
ID_STATS = {
    "numeric": {"rid": {"mean": 0.0, "std": 1.0}},
    "categorical": {"c": {"vocab": ["a", "b"]}},
    "label": "y",
    "task": "classification",
    "numeric_features": ["rid"],
    "categorical_features": ["c"],
}


def write_id_files(tmp_path: Path, sizes: list[int], row_group_rows: int) -> list[str]:
    urls, start = [], 0
    for k, n in enumerate(sizes):
        rid = np.arange(start, start + n)
        t = pa.table({"rid": rid, "c": pa.array(["a", "b", "zz"] * (n // 3) + ["a"] * (n % 3)), "y": rid % 2 == 0})
        url = str(tmp_path / f"part-{k}.parquet")
        write_table(url, t, f"part-{k}.parquet", row_group_rows=row_group_rows)
        urls.append(url)
        start += n
    return urls


def rows_of(batches) -> list[int]:
    return [int(v) for x_num, _, _ in batches for v in x_num[:, 0].tolist()]


def rank_batches(ds: StreamDataset) -> list:
    loader = DataLoader(ds, batch_size=None, num_workers=ds.num_workers)
    return list(loader)


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (3, 0), (2, 2)])
def test_every_row_exactly_once_across_ranks_and_workers(tmp_path, world, workers):
    urls = write_id_files(tmp_path, [1000, 37, 2500], row_group_rows=300)
    n = 3537
    seen: list[int] = []
    for rank in range(world):
        ds = StreamDataset(urls, ID_STATS, batch_size=64, rank=rank, world_size=world, num_workers=workers,
                           seed=3, epoch=1, shuffle_rows=700)
        got = rows_of(rank_batches(ds))
        # a rank's share is within one row per shard of an equal split
        assert abs(len(got) - n / world) <= max(1, workers)
        seen += got
    assert sorted(seen) == list(range(n))


def test_plan_shards_balanced_and_disjoint():
    shards = plan_shards([[300, 300, 17], [5], [1000]], 7, seed=1, epoch=0, shuffle=True)
    sizes = [sum(p.rows for p in s) for s in shards]
    assert sum(sizes) == 1622 and max(sizes) - min(sizes) <= 1
    covered = sorted((p.file, p.row_group, r) for s in shards for p in s for r in range(p.start, p.stop))
    assert len(covered) == len(set(covered)) == 1622


def test_shuffle_is_deterministic_per_seed_and_epoch(tmp_path):
    urls = write_id_files(tmp_path, [2000], row_group_rows=250)

    def order(seed: int, epoch: int) -> list[int]:
        return rows_of(StreamDataset(urls, ID_STATS, 100, seed=seed, epoch=epoch, shuffle_rows=500))

    a = order(5, 0)
    assert a == order(5, 0)
    assert a != order(5, 1) and a != order(6, 0)
    assert a != sorted(a) and sorted(a) == list(range(2000))
    unshuffled = rows_of(StreamDataset(urls, ID_STATS, 100, shuffle=False))
    assert unshuffled == list(range(2000))


@pytest.mark.parametrize("workers,skip", [(0, 7), (2, 5), (2, 12)])
def test_skip_batches_resumes_exactly_where_the_loader_was(tmp_path, workers, skip):
    urls = write_id_files(tmp_path, [900, 1300], row_group_rows=200)
    kw = dict(batch_size=50, rank=1, world_size=2, num_workers=workers, seed=9, epoch=2, shuffle_rows=300)
    full = [b[0][:, 0].tolist() for b in rank_batches(StreamDataset(urls, ID_STATS, **kw))]
    ds = StreamDataset(urls, ID_STATS, skip_batches=skip, **kw)
    resumed = [b[0][:, 0].tolist() for b in rank_batches(ds)][ds.leading_discard():]
    assert resumed == full[skip:]
    assert ds.leading_discard() < max(1, workers)


def test_resume_point_follows_round_robin():
    assert resume_point([3, 1], 3) == (2, 0)  # order w0 w1 w0 | w0
    assert resume_point([1, 3], 3) == (2, 0)  # w0 w1 w1 | w1
    assert resume_point([2, 2, 2], 4) == (1, 1)  # w0 w1 w2 w0 | w1 ...: restart round 1, drop w0's
    assert worker_skips([2, 2, 2], 4) == [1, 1, 1]
    assert worker_skips([4], 10) == [4]


def test_steps_per_epoch_is_the_same_on_every_rank(tmp_path):
    urls = write_id_files(tmp_path, [1001], row_group_rows=128)
    steps = {StreamDataset(urls, ID_STATS, 32, rank=r, world_size=3, num_workers=2).steps_per_epoch()
             for r in range(3)}
    assert len(steps) == 1
    (n_steps,) = steps
    for r in range(3):  # no rank runs out before that count
        assert len(rank_batches(StreamDataset(urls, ID_STATS, 32, rank=r, world_size=3, num_workers=2))) >= n_steps


def test_transform_errors_name_the_file_and_derived_sources_are_read(tmp_path):
    urls = write_id_files(tmp_path, [10], row_group_rows=10)
    stats = {**ID_STATS, "numeric_features": ["rid", "missing"], "numeric": {**ID_STATS["numeric"],
             "missing": {"mean": 0.0, "std": 1.0}}}
    with pytest.raises(FeatureError, match=r"part-0.parquet row group 0: .*'missing'"):
        list(StreamDataset(urls, stats, 4))
    derived = {**ID_STATS, "derived": {"hour": {"from": "ts", "op": "hour"}}}
    assert feature_columns(derived, ["rid", "c", "y", "ts", "other"]) == ["rid", "c", "y", "ts"]
    assert feature_columns(derived, ["rid", "c", "y", "hour", "ts"]) == ["rid", "c", "y"]


def test_null_labels_are_refused(tmp_path):
    t = pa.table({"rid": [1, 2], "c": ["a", "b"], "y": pa.array([True, None])})
    url = str(tmp_path / "nulls.parquet")
    write_table(url, t, "nulls.parquet")
    with pytest.raises(FeatureError, match="nulls.parquet.*label column 'y'"):
        list(StreamDataset([url], ID_STATS, 4))


def test_memory_stays_bounded_when_the_split_is_larger(tmp_path):
    """Peak Arrow memory while streaming a split is a small fraction of the split's decoded size."""
    n, cols = 400_000, 8
    rng = np.random.default_rng(0)
    columns = {f"f{i}": rng.normal(size=n) for i in range(cols)}
    t = pa.table(columns | {"c": pa.array(["a"] * n), "y": rng.random(n) > 0.5})
    url = str(tmp_path / "big.parquet")
    write_table(url, t, "big.parquet", row_group_rows=16384)
    data_bytes = t.nbytes
    stats = {"numeric": {f"f{i}": {"mean": 0.0, "std": 1.0} for i in range(cols)},
             "categorical": {"c": {"vocab": ["a"]}}, "label": "y", "task": "classification",
             "numeric_features": [f"f{i}" for i in range(cols)], "categorical_features": ["c"]}
    code = textwrap.dedent(f"""
        import json, resource, pyarrow as pa
        from tasks.training.stream import StreamDataset
        ds = StreamDataset([{url!r}], json.loads({json.dumps(json.dumps(stats))}), 512, shuffle_rows=20000)
        rows = sum(len(b[2]) for b in ds)
        print(json.dumps({{"rows": rows, "arrow_peak": pa.default_memory_pool().max_memory()}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["rows"] == n
    assert res["arrow_peak"] < 0.25 * data_bytes, (res, data_bytes)
