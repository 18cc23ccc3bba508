"""Poisoned-data detection on real encrypted lake history with a real scikit-learn IsolationForest."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from tasks.context import StepContext
from tasks.security import anomaly
from tests.unit.secure_data import commit_table, events

HISTORY = ["2026-11-01", "2026-11-02", "2026-11-03"]
DS = "2026-11-04"
N = 4000


@pytest.fixture
def lake_with_history(lf_home):
    for i, ds in enumerate(HISTORY):
        ctx = StepContext(dataset="events", ds=ds)
        commit_table(ctx, "clean", {"": events(N, ds, seed=i), "b": events(N // 2, ds, seed=100 + i)}, ctx.crypto())
    return lf_home


def _ctx(**params) -> StepContext:
    return StepContext(dataset="events", ds=DS, params=params)


def test_normal_interval_is_not_alerted(lake_with_history):
    ctx = _ctx()
    out = anomaly.score_interval(ctx, events(N, DS, seed=7))
    assert not out["alert"]
    assert out["rate"] <= 0.05 and out["rows"] == N
    assert out["history_intervals"] == HISTORY and out["history_rows"] >= 500


def test_poisoned_interval_is_detected_and_its_rows_flagged(lake_with_history):
    poison = 300  # 7.5% of the interval: a tight in-range cluster
    table = events(N, DS, seed=8, poison=poison)
    with pytest.raises(anomaly.AnomalyAlert, match=r"events ds=2026-11-04: anomaly rate .* exceeds"):
        anomaly.score_interval(_ctx(), table)
    model = anomaly.fit_for_context(_ctx())
    flags = model.flags(table)
    assert flags[-poison:].mean() >= 0.95  # the cluster is caught
    assert flags[:-poison].mean() <= 0.05  # and the rest mostly is not
    warned = anomaly.score_interval(_ctx(anomaly_policy="warn"), table, model=model)
    assert warned["alert"] and warned["anomalies"] >= poison
    lenient = anomaly.score_interval(_ctx(anomaly_max_rate=0.5), table, model=model)
    assert not lenient["alert"]


def test_clean_step_partition_split_routes_anomalies(lake_with_history):
    model = pickle.loads(pickle.dumps(anomaly.fit_for_context(_ctx())))  # what a Dask worker receives
    df = events(1000, DS, seed=9, poison=50).to_pandas()
    kept, bad = anomaly.split_partition(df, model)
    assert len(kept) + len(bad) == len(df)
    assert set(bad["_reason"]) == {"anomaly"}
    assert bad["event_id"].isin(df["event_id"].iloc[-50:]).sum() >= 48
    assert list(kept.columns) == list(df.columns)
    none_kept, none_bad = anomaly.split_partition(df, None)
    assert len(none_kept) == len(df) and len(none_bad) == 0
    table = events(1000, DS, seed=9, poison=50)  # the Arrow form the clean step works on
    kept_t, bad_t = anomaly.split_table(table, model)
    assert kept_t.num_rows + bad_t.num_rows == 1000 and kept_t.schema == table.schema
    assert sorted(bad_t.column("event_id").to_pylist()) == sorted(bad["event_id"])


def test_committed_interval_is_scored_from_the_lake(lake_with_history):
    ctx = _ctx()
    commit_table(ctx, "clean", {"": events(N, DS, seed=10, poison=400)}, ctx.crypto())
    with pytest.raises(anomaly.AnomalyAlert):
        anomaly.score_committed(ctx)


def test_history_sample_is_bounded(lake_with_history):
    ctx = _ctx(anomaly_history_rows=900, anomaly_history_intervals=2, anomaly_min_history_rows=100)
    hist, intervals = anomaly.history_sample(ctx)
    assert intervals == HISTORY[-2:]
    assert 0 < len(hist) <= 900
    assert set(hist.columns) == {"price", "quantity", "session_events", "event_type", "category", "device",
                                 "country", "event_ts"}


def test_no_history_means_no_model(lf_home):
    out = anomaly.score_interval(StepContext(dataset="events", ds=HISTORY[0]), events(100, HISTORY[0]))
    assert out["skipped"] == "no history" and not out["alert"]


def test_bad_params_and_inputs_are_named(lake_with_history):
    with pytest.raises(ValueError, match="anomaly_policy"):
        anomaly.score_interval(_ctx(anomaly_policy="maybe"), events(100, DS))
    model = anomaly.fit_for_context(_ctx())
    with pytest.raises(ValueError, match=r"partition: anomaly features need column\(s\) \['price'\]"):
        anomaly.split_partition(pd.DataFrame({"x": np.arange(3)}).assign(
            **{c: 1 for c in model.columns if c != "price"}), model)


def test_secure_step_gates_a_poisoned_interval_before_training(lake_with_history):
    from tasks.security import secure
    ctx = _ctx()
    commit_table(ctx, "clean", {"": events(N, DS, seed=11, poison=400)}, ctx.crypto())
    with pytest.raises(anomaly.AnomalyAlert, match="2026-11-04"):
        secure.run(ctx)
    assert ctx.lake.manifest("secure", "events", DS) is None  # nothing sealed
    warned = secure.run(_ctx(anomaly_policy="warn"))
    assert warned["anomaly"]["source"] == "secure-sample" and warned["anomaly"]["alert"]
    assert ctx.lake.require("secure", "events", DS).extra["anomaly"]["alert"]


def test_secure_step_passes_a_normal_interval_and_prefers_the_clean_steps_result(lake_with_history):
    from tasks.io.lake import Manifest
    from tasks.security import secure

    ctx = _ctx()
    m = commit_table(ctx, "clean", {"": events(N, DS, seed=12)}, ctx.crypto())
    out = secure.run(ctx)
    assert out["anomaly"]["source"] == "secure-sample" and not out["anomaly"]["alert"]
    assert out["anomaly"]["rows"] == N and out["anomaly"]["history_intervals"] == HISTORY
    # when clean scored every row itself, its result is what the gate reports
    scored = anomaly.score_interval(ctx, events(N, DS, seed=12))
    ctx.lake.commit(Manifest("clean", "events", DS, m.version, files=m.files, extra={"anomaly": scored}))
    out = secure.run(_ctx())
    assert out["anomaly"]["source"] == "clean" and out["anomaly"]["rows"] == N
