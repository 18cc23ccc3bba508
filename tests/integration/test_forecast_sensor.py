"""ResourceForecastSensor + ClusterReadyTrigger against real Dask schedulers on loopback.

The sensor runs as Airflow runs it: it reads the ``dask_default`` Connection (an ``AIRFLOW_CONN_*``
variable, resolved by Airflow's own secrets lookup), execute() either returns the plan (the XCom) or
raises TaskDeferred with a trigger; the trigger is rebuilt from its serialized form (as the triggerer
does), its async run() is driven to its event, and execute_complete() turns the event into the XCom.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk.exceptions import TaskDeferred
from distributed import LocalCluster
from leptonflow_airflow.context import context_from_airflow
from leptonflow_airflow.sensors import ResourceForecastSensor
from leptonflow_airflow.triggers import ClusterReadyTrigger

from tasks.resources import history


def _airflow_context(ds="2026-11-10", **params):
    start = datetime.fromisoformat(ds).replace(tzinfo=UTC)
    return {"params": params, "ds": ds, "data_interval_start": start, "data_interval_end": start + timedelta(days=1),
            "run_id": "scheduled__" + ds}


def _dask_connection(monkeypatch, **extra) -> None:
    """Define the dask_default Connection as Airflow reads it from the environment."""
    monkeypatch.setenv("AIRFLOW_CONN_DASK_DEFAULT", json.dumps({"conn_type": "generic", "extra": extra}))


@pytest.fixture(autouse=True)
def _no_dask_connection(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_DASK_DEFAULT", raising=False)


def _rebuild(trigger: ClusterReadyTrigger) -> ClusterReadyTrigger:
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    return cls(**kwargs)


async def _first_event(trigger):
    async for event in trigger.run():
        return event.payload
    raise AssertionError("trigger ended without an event")


@pytest.mark.parametrize("connection", [None, {"backend": "local"}], ids=["absent", "local"])
def test_local_backend_returns_plan_without_deferring(lf_home, monkeypatch, connection):
    if connection is not None:
        _dask_connection(monkeypatch, **connection)
    ctx = context_from_airflow(_airflow_context(max_workers=6, deadline_s=300), "events", "plan_clean")
    raw = ctx.lake.interval_dir("raw", "events", ctx.ds)
    ctx.lake.fs.makedirs(raw, exist_ok=True)
    pq.write_table(pa.table({"x": np.arange(50_000)}), f"{raw}/part-0.parquet")
    sensor = ResourceForecastSensor(task_id="plan_clean", dataset="events")
    plan = sensor.execute(_airflow_context(max_workers=6, deadline_s=300))
    assert plan["stage"] == "clean" and plan["source"] == "heuristic" and 1 <= plan["workers"] <= 6
    assert plan["input_bytes"] == ctx.lake.fs.size(f"{raw}/part-0.parquet")
    (row,) = history.plan_rows(ctx.history_url, "clean", "events")
    assert row["workers"] == plan["workers"] and row["run_id"] == "scheduled__2026-11-10"
    history.dispose()


def test_train_plan_has_device_and_nproc(lf_home):
    sensor = ResourceForecastSensor(task_id="plan_train", dataset="events", stage="train")
    plan = sensor.execute(_airflow_context(train_nproc=2))
    assert plan["nproc"] == 2 and plan["device"] in {"cpu", "cuda"}
    history.dispose()


@pytest.fixture
def empty_cluster():
    """A real scheduler with no workers yet (an 'address' backend cluster)."""
    cluster = LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=":0")
    yield cluster
    cluster.close()


def test_address_backend_defers_until_workers_join(lf_home, empty_cluster, monkeypatch):
    _dask_connection(monkeypatch, backend="address", address=empty_cluster.scheduler_address)
    sensor = ResourceForecastSensor(task_id="plan_clean", dataset="events", poll_interval=0.2, ready_timeout=120)
    context = _airflow_context(min_workers=2, max_workers=2)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context)
    assert deferred.value.method_name == "execute_complete"
    trigger = _rebuild(deferred.value.trigger)
    assert trigger.conn_id == "dask_default" and trigger.workers == 2 and trigger.plan["workers"] == 2

    # workers join a second later, while the trigger is polling
    joiner = threading.Timer(1.0, empty_cluster.scale, args=(2,))
    joiner.start()
    event = asyncio.run(_first_event(trigger))
    joiner.join()
    assert event["status"] == "ready" and event["workers"] >= 2 and event["waited_s"] > 0.5
    plan = sensor.execute_complete(context, event)
    assert plan["workers"] == 2 and plan["stage"] == "clean"

    # once the workers are there, a rerun does not defer at all
    assert sensor.execute(context)["workers"] == 2
    history.dispose()


def test_trigger_times_out_with_a_clear_error(lf_home, empty_cluster, monkeypatch):
    _dask_connection(monkeypatch, backend="address", address=empty_cluster.scheduler_address)
    trigger = ClusterReadyTrigger(conn_id="dask_default", workers=3, plan={"workers": 3}, poll_interval=0.1,
                                  timeout=0.5)
    event = asyncio.run(_first_event(_rebuild(trigger)))
    assert event["status"] == "timeout" and event["workers"] == 0 and event["wanted"] == 3
    sensor = ResourceForecastSensor(task_id="plan_clean", dataset="events")
    with pytest.raises(RuntimeError, match="did not reach 3 workers"):
        sensor.execute_complete({}, event)


def test_trigger_reports_unreachable_scheduler(monkeypatch):
    _dask_connection(monkeypatch, backend="address", address="tcp://127.0.0.1:9", timeout=0.3)
    trigger = ClusterReadyTrigger(conn_id="dask_default", workers=1, poll_interval=0.1, timeout=0.5)
    event = asyncio.run(_first_event(trigger))
    assert event["status"] == "timeout" and event["workers"] == 0
    assert event["error"], "the last connection error must be reported"


def test_unknown_stage_is_rejected():
    with pytest.raises(ValueError, match="stage 'bogus'"):
        ResourceForecastSensor(task_id="x", dataset="events", stage="bogus")


def test_sensor_fails_on_a_broken_dask_connection(lf_home, monkeypatch):
    _dask_connection(monkeypatch, backend="yarn")
    sensor = ResourceForecastSensor(task_id="plan_clean", dataset="events")
    with pytest.raises(ValueError, match="'dask_default'.*unknown Dask cluster backend 'yarn'"):
        sensor.execute(_airflow_context())


def test_sensor_reads_the_connection_it_is_given(lf_home, empty_cluster, monkeypatch):
    """`cluster_conn_id` picks the Connection; the trigger waits on that same one."""
    monkeypatch.setenv("AIRFLOW_CONN_BATCH_CLUSTER", json.dumps(
        {"conn_type": "generic", "extra": {"backend": "address", "address": empty_cluster.scheduler_address}}))
    sensor = ResourceForecastSensor(task_id="plan_clean", dataset="events", cluster_conn_id="batch_cluster")
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(_airflow_context(min_workers=1, max_workers=1))
    assert deferred.value.trigger.conn_id == "batch_cluster"
    history.dispose()
