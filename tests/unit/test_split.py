"""The split step: group-aware deterministic hash split, derived columns, train-only feature statistics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from distributed import LocalCluster

from tasks.context import StepContext
from tasks.io.parquet import read_table
from tasks.prep import clean, datagen, features, split
from tasks.prep import split as split_assign
from tasks.spec import spec_for
from tests.keys import keyring_at

SPEC = spec_for("events")
DS = "2026-11-01"


@pytest.fixture(scope="module")
def dask_address():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0", protocol="tcp",
                      host="127.0.0.1") as cluster:
        yield cluster.scheduler_address


def _ctx(tmp_path: Path, address: str, **params) -> StepContext:
    return StepContext("events", DS, lake_url=str(tmp_path / "lake"), keyring_path=keyring_at(tmp_path / "keys.json"),
                       params={"encrypt": False, **params}, cluster={"backend": "address", "address": address})


@pytest.fixture
def cleaned(tmp_path, dask_address, monkeypatch) -> StepContext:
    monkeypatch.setenv("LEPTONFLOW_GC_GRACE_S", "0")
    datagen.generate(str(tmp_path / "lake"), SPEC, DS, 1, 40_000, seed=21, files_per_day=3)
    ctx = _ctx(tmp_path, dask_address, partitions=3)
    clean.run(ctx)
    return ctx


def _group_tables(ctx: StepContext) -> dict[str, pa.Table]:
    m = ctx.lake.require("split", "events", DS)
    return {g: pa.concat_tables([read_table(ctx.lake.abspath(m, f)) for f in m.group_files(g)])
            for g in split_assign.GROUPS}


def test_assignment_is_md5_of_salt_and_group_and_ratios_hold_at_200k_groups():
    users = pa.array([f"user-{i}" for i in range(200_000)])
    code = split_assign.assign(users, SPEC)
    share = np.bincount(code, minlength=3) / len(code)
    assert abs(share[0] - 0.8) < 0.005 and abs(share[1] - 0.1) < 0.005 and abs(share[2] - 0.1) < 0.005
    # the definition, in plain Python, for a few values (what any other engine must reproduce)
    for i in (0, 1, 12345, 199_999):
        u = int(hashlib.md5(f"leptonflow-v1:user-{i}".encode()).hexdigest()[:8], 16) / 2**32
        assert code[i] == (0 if u < 0.8 else 1 if u < 0.9 else 2)
    # the same group always gets the same split, wherever it appears
    shuffled = pa.array([f"user-{i}" for i in (5, 5, 17, 5, 17)])
    c = split_assign.assign(shuffled, SPEC)
    assert c[0] == c[1] == c[3] == code[5] and c[2] == c[4] == code[17]


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()])
def test_vectorized_md5_equals_hashlib_on_every_length_and_alphabet(typ):
    """The numpy md5 lanes must equal hashlib byte for byte: empty, multi-byte UTF-8, values at the one-block
    boundary (55 message bytes) and beyond it (hashlib fallback), sliced arrays, nulls (the group "")."""
    rng = np.random.default_rng(3)
    alphabet = list("ab9_-é€𝄞")
    values = ["", "a", "x" * 40, "y" * 41, "z" * 42, "w" * 200, None]
    values += ["".join(rng.choice(alphabet, size=int(rng.integers(0, 60)))) for _ in range(3000)]
    arr = pa.array(values, typ)
    for salt in ("s", "leptonflow-v1", "a-salt-long-enough-to-push-values-over-one-block"):
        for a in (arr, arr.slice(5)):
            got = split_assign.unit_interval(a, salt)
            want = [int(hashlib.md5(f"{salt}:{v or ''}".encode()).hexdigest()[:8], 16) / 2**32 for v in a.to_pylist()]
            assert got.tolist() == want

def test_split_is_group_disjoint_complete_and_deterministic(cleaned, dask_address, tmp_path):
    r = split.run(cleaned)
    clean_rows = cleaned.lake.require("clean", "events", DS).rows
    assert sum(r["rows"].values()) == clean_rows and r["cache_hit"] is False
    tables = _group_tables(cleaned)
    users = {g: set(t.column("user_id").to_pylist()) for g, t in tables.items()}
    assert not users["train"] & users["val"] and not users["train"] & users["test"] and not users["val"] & users["test"]
    assert {g: t.num_rows for g, t in tables.items()} == r["rows"]
    assert 0.7 < r["rows"]["train"] / clean_rows < 0.9
    # split files are the clean files (schema of the spec, no rewrite): derived columns are added on read
    t = tables["val"]
    assert t.schema.names == SPEC.arrow_schema().names
    derived = features.add_derived(t, SPEC.features.derived)
    assert derived.column("hour").to_pylist() == pc.hour(t.column("event_ts")).cast(pa.int64()).to_pylist()
    clean_m = cleaned.lake.require("clean", "events", DS)
    split_m = cleaned.lake.require("split", "events", DS)
    assert [(f.path.split("/", 1)[1], f.sha256, f.group) for f in clean_m.files] == [
        (f.path.split("/", 1)[1], f.sha256, f.group) for f in split_m.files]
    for cf, sf in zip(clean_m.files, split_m.files, strict=True):  # local lake: hard links, no bytes copied
        ino = Path(cleaned.lake.abspath(clean_m, cf)).stat().st_ino
        assert Path(cleaned.lake.abspath(split_m, sf)).stat().st_ino == ino
    # cache hit, then a forced rerun gives byte-identical files
    assert split.run(cleaned)["cache_hit"] is True
    m1 = cleaned.lake.require("split", "events", DS)
    d1 = {f.path.split("/", 1)[1]: f.sha256 for f in m1.files}
    r2 = split.run(_ctx(tmp_path, dask_address, partitions=3, rerun=1))
    m2 = cleaned.lake.require("split", "events", DS)
    assert r2["cache_hit"] is False and m2.version != m1.version
    assert {f.path.split("/", 1)[1]: f.sha256 for f in m2.files} == d1
    assert m2.extra["feature_stats"] == m1.extra["feature_stats"]


def test_feature_stats_are_fitted_on_train_only(cleaned):
    split.run(cleaned)
    stats = cleaned.lake.require("split", "events", DS).extra["feature_stats"]
    tables = _group_tables(cleaned)
    train, everything = tables["train"], pa.concat_tables(tables.values())
    assert stats["rows"] == train.num_rows
    price = train.column("price").to_numpy()
    assert stats["numeric"]["price"]["count"] == train.num_rows
    assert stats["numeric"]["price"]["mean"] == pytest.approx(price.mean(), rel=1e-9)
    assert stats["numeric"]["price"]["std"] == pytest.approx(price.std(), rel=1e-9)
    assert stats["numeric"]["price"]["mean"] != pytest.approx(everything.column("price").to_numpy().mean(), rel=1e-9)
    dev = dict(zip(*np.unique(train.column("device").to_numpy(zero_copy_only=False), return_counts=True),
                   strict=True))
    assert stats["categorical"]["device"]["counts"] == {k: int(v) for k, v in dev.items()}
    # contract shape and the transform works on the split files
    for key in ("label", "task", "numeric_features", "categorical_features"):
        assert key in stats
    x_num, x_cat, y = features.transform(tables["test"], stats)
    assert x_num.shape == (tables["test"].num_rows, 4) and x_cat.min() >= 0 and set(np.unique(y)) <= {0.0, 1.0}


def test_split_without_clean_rows_fails_clearly(tmp_path, dask_address):
    with pytest.raises(Exception, match="no committed clean output"):
        split.run(_ctx(tmp_path, dask_address))


def test_split_of_an_all_rejected_interval_says_there_is_nothing_to_split(tmp_path, dask_address):
    none = datagen.FaultRates.none()
    datagen.generate(str(tmp_path / "lake"), SPEC, DS, 1, 500, seed=1, files_per_day=1, faults=none)
    ctx = _ctx(tmp_path, dask_address)
    ctx.interval_start = ctx.interval_start.replace(year=2025)  # every row is now out of the interval
    ctx.interval_end = ctx.interval_end.replace(year=2025)
    r = clean.run(ctx)
    assert r["output_rows"] == 0 and r["rejected_by_reason"] == {"out_of_interval": 500}
    with pytest.raises(split.SplitError, match="has no rows"):
        split.run(ctx)


def test_clean_and_split_write_encrypted_files_inside_tasks(tmp_path, dask_address, monkeypatch):
    import pickle

    import pyarrow.parquet as pq

    monkeypatch.setenv("LEPTONFLOW_KEYRING", str(tmp_path / "keys.json"))
    monkeypatch.delenv("LEPTONFLOW_KEYRING_JSON", raising=False)
    datagen.generate(str(tmp_path / "lake"), SPEC, DS, 1, 6_000, seed=8, files_per_day=2)
    plain = StepContext("events", DS, lake_url=str(tmp_path / "plain"), keyring_path=keyring_at(tmp_path / "keys.json"),
                        params={"encrypt": False}, cluster={"backend": "address", "address": dask_address})
    (tmp_path / "plain" / "raw").mkdir(parents=True)
    (tmp_path / "plain" / "raw" / "events").symlink_to(tmp_path / "lake" / "raw" / "events")
    enc = StepContext("events", DS, lake_url=str(tmp_path / "lake"), keyring_path=keyring_at(tmp_path / "keys.json"),
                      params={}, cluster={"backend": "address", "address": dask_address})
    crypto = enc.crypto()
    assert crypto is not None and pickle.loads(pickle.dumps(crypto)) == crypto  # travels to workers
    r_enc, r_plain = clean.run(enc), clean.run(plain)
    assert r_enc["accounting"]["rejected_by_reason"] == r_plain["accounting"]["rejected_by_reason"]
    s_enc, s_plain = split.run(enc), split.run(plain)
    assert s_enc["rows"] == s_plain["rows"]
    for stage in ("clean", "quarantine", "split"):
        m = enc.lake.require(stage, "events", DS)
        for f in m.files:
            path = enc.lake.abspath(m, f)
            assert f.key_id == crypto.key_id
            with pytest.raises(Exception):  # noqa: B017 - any Arrow error: the footer is encrypted
                pq.read_table(path)
            assert read_table(path, crypto).num_rows == f.rows
    m_enc = enc.lake.require("split", "events", DS)
    m_plain = plain.lake.require("split", "events", DS)
    assert m_enc.extra["feature_stats"] == m_plain.extra["feature_stats"]


def test_heavy_steps_report_every_canonical_metric_and_history_records_them(tmp_path, dask_address):
    """validate_raw, clean, split and validate_clean run through ``run_step``: each real result holds
    every StepMetrics field under its canonical name, and the run history records those numbers."""
    from tasks import steps
    from tasks.resources import history
    from tasks.resources.step_metrics import StepMetrics

    datagen.generate(str(tmp_path / "lake"), SPEC, DS, 1, 4_000, seed=5, files_per_day=2)
    ctx = _ctx(tmp_path, dask_address, partitions=2, validation_policy="warn")
    ctx.history_url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    try:
        results = {s: steps.run_step(s, ctx) for s in ("validate_raw", "clean", "split", "validate_clean")}
        for step, r in results.items():
            assert not r.get("cache_hit")
            assert set(StepMetrics.names()) <= set(r), (step, sorted(set(StepMetrics.names()) - set(r)))
            m = StepMetrics.from_result(r, step)
            assert m.input_bytes > 0 and m.input_rows > 0 and m.partitions > 0, (step, m)
            (run,) = history.runs(ctx.history_url, step, "events")
            assert isinstance(run, history.StepRun) and run.success and run.ds == DS
            assert (run.input_bytes, run.input_rows, run.partitions) == (m.input_bytes, m.input_rows, m.partitions)
            assert (run.peak_memory_per_worker, run.spilled_bytes) == (m.peak_memory_per_worker, m.spilled_bytes)
        c, s = (StepMetrics.from_result(results[k]) for k in ("clean", "split"))
        assert c.input_rows == 4_000 == results["validate_raw"]["input_rows"] and c.bytes_read == c.input_bytes
        assert c.bytes_written > 0 and c.bytes_shuffled > 0 and (c.workers, c.threads_per_worker) == (2, 1)
        assert s.input_rows == s.output_rows == c.output_rows == results["validate_clean"]["input_rows"]
        assert (s.bytes_read, s.bytes_written, s.workers) == (0, 0, 0)  # hard links, no cluster
        (crun,) = history.runs(ctx.history_url, "clean")
        assert (crun.workers, crun.threads, crun.memory_limit) == (2, 1, c.memory_limit)
        assert results["validate_raw"]["workers"] == 2 and results["validate_raw"]["rows_validated"] == 4_000
    finally:
        history.dispose(ctx.history_url)
