"""A real dask-gateway server (local backend, loopback) whose shared cluster the sensor resizes.

Flow, as in a DAG run: the forecast sensor plans the clean step and scales the shared cluster up
from its own process, the trigger waits for the workers, the clean step runs in ANOTHER process
on that cluster (``python -m tasks clean --cluster <gateway JSON>`` once tasks.prep.clean exists, else a
clean-like Dask workload through the same ``client_for`` path), then the cluster is scaled down.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from airflow.sdk.exceptions import TaskDeferred
from leptonflow_airflow.sensors import ResourceForecastSensor

from tasks.resources import cluster as clusters
from tasks.resources import history
from tasks.resources.cluster import gateway
from tasks.resources.cluster.gateway_local import local_gateway

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory):
    # workers unpickle the steps' functions: the repo must be importable in them
    with local_gateway(tmp_path_factory.mktemp("gateway"), env={"PYTHONPATH": str(REPO)}) as config:
        yield config


def _wait_workers(config, n, tries=240):
    for _ in range(tries):
        have = clusters.current_workers(config)
        if have == n:
            return have
        time.sleep(0.5)
    return clusters.current_workers(config)


async def _first_event(trigger):
    async for event in trigger.run():
        return event.payload
    raise AssertionError("trigger ended without an event")


CLEAN_LIKE = r"""
import json, sys
import dask.dataframe as dd
from tasks.resources.cluster import ClusterPlan, client_for, describe
cfg, plan, raw = json.loads(sys.argv[1]), ClusterPlan.from_dict(json.loads(sys.argv[2])), sys.argv[3]
with client_for(cfg, plan) as client:
    df = dd.read_parquet(raw, columns=["event_id", "price"])
    kept = df.dropna().drop_duplicates(subset=["event_id"])
    out = {"rows_in": int(df.shape[0].compute()), "rows_clean": int(kept.shape[0].compute()),
           "workers": describe(client)["workers"]}
print(json.dumps(out))
"""


def test_sensor_scales_gateway_cluster_for_clean_then_down(lf_home, gateway_config, monkeypatch):
    lake = str(lf_home / "lake")
    ds = "2026-11-01"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    gen = subprocess.run([PY, "-m", "tasks", "datagen", "--lake", lake, "--start", ds, "--rows", "20000",
                          "--files-per-day", "4"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert gen.returncode == 0, gen.stderr[-2000:]

    # 1. the sensor plans (min 2 workers) and resizes the shared cluster from this process
    start = datetime.fromisoformat(ds).replace(tzinfo=UTC)
    context = {"params": {"min_workers": 2, "max_workers": 3, "deadline_s": 600}, "ds": ds,
               "data_interval_start": start, "data_interval_end": start + timedelta(days=1)}
    # the gateway config (with its password) is the dask_default Connection, as Airflow reads it
    monkeypatch.setenv("AIRFLOW_CONN_DASK_DEFAULT", json.dumps({"conn_type": "generic", "extra": gateway_config}))
    sensor = ResourceForecastSensor(task_id="plan_clean", dataset="events", poll_interval=0.5, ready_timeout=180)
    try:
        plan = sensor.execute(context)  # returns at once only if the workers were already up
    except TaskDeferred as deferred:
        classpath, kwargs = deferred.trigger.serialize()
        assert classpath == "leptonflow_airflow.triggers.ClusterReadyTrigger"
        assert kwargs["conn_id"] == "dask_default" and kwargs["workers"] == 2
        assert gateway_config["password"] not in json.dumps(kwargs)  # the trigger's row holds no secret
        event = asyncio.run(_first_event(deferred.trigger))
        plan = sensor.execute_complete(context, event)
    assert plan["workers"] == 2 and plan["input_bytes"] > 0
    assert clusters.current_workers(gateway_config) == 2
    name = gateway.cluster_name(gateway_config)

    # 2. the clean step runs in another process on that same shared cluster
    if (REPO / "tasks" / "clean.py").exists():
        cmd = [PY, "-m", "tasks", "clean", "--dataset", "events", "--ds", ds, "--lake", lake,
               "--cluster", json.dumps(gateway_config), "--param", "encrypt=false"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout[proc.stdout.index("{"):])
        assert result["input_rows"] == 20000 == result["accounting"]["rows_in"]
    else:
        raw = f"{lake}/raw/events/ds={ds}"
        proc = subprocess.run([PY, "-c", CLEAN_LIKE, json.dumps(gateway_config), json.dumps(plan), raw],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["rows_in"] >= 20000 and 0 < result["rows_clean"] < result["rows_in"]
        assert result["workers"] == 2
    assert gateway.cluster_name(gateway_config) == name  # the same shared cluster, not a new one
    with gateway._open(gateway_config) as gw:
        cl = gw.connect(name)
        try:
            with cl.get_client(set_as_default=False) as client:
                prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
        finally:
            gateway._release(cl)
    # the clean work ran on the gateway cluster's scheduler (clean-* tasks, or read_parquet for the fallback)
    assert any("clean" in p or "parquet" in p for p in prefixes), prefixes

    # 3. scaled down afterwards
    clusters.resize(gateway_config, 0)
    assert _wait_workers(gateway_config, 0) == 0
    history.dispose()


def test_release_on_drain_scales_the_gateway_cluster_down(gateway_config):
    from distributed import Event

    from tasks.resources.cluster import ClusterPlan, drain

    def hold(event_name: str) -> int:  # local: pickled by value (the gateway's workers cannot import tests/)
        from distributed import Event

        Event(event_name).wait(120)
        return 7

    clusters.resize(gateway_config, 3)
    assert _wait_workers(gateway_config, 3) == 3
    with gateway.connect(gateway_config, ClusterPlan(workers=3)) as client:
        assert type(client.cluster).__module__.startswith("dask_gateway")
        release = Event("lf-gw-drain", client=client)
        busy = client.submit(hold, "lf-gw-drain", pure=False)
        for _ in range(200):
            if any(client.processing().values()):
                break
            time.sleep(0.1)
        busy_worker = next(a for a, keys in client.processing().items() if keys)
        assert drain.release_on_drain(client, 3) == []  # as much work left as workers
        assert len(drain.release_on_drain(client, 1)) == 2  # one task left: two idle workers go
        assert _wait_workers(gateway_config, 1) == 1
        assert list(client.nthreads()) == [busy_worker]  # the gateway retired the idle ones, not the busy one
        release.set()
        assert busy.result(timeout=60) == 7
    clusters.resize(gateway_config, 0)
    assert _wait_workers(gateway_config, 0) == 0


def _servers(config_file: str) -> list[int]:
    """Live dask-gateway-server processes started with this config file."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        if config_file in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(p.info["pid"])
    return out


def test_local_gateway_cli_serves_until_terminated(tmp_path):
    """``python -m tasks.resources.cluster.gateway_local DIR`` prints the backend config, serves the gateway API, and
    on SIGTERM stops the server it started (no dask-gateway-server left behind)."""
    proc = subprocess.Popen([PY, "-m", "tasks.resources.cluster.gateway_local", str(tmp_path / "gw")], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        config = json.loads(proc.stdout.readline())
        assert config["backend"] == "gateway" and config["proxy_address"].startswith("tcp://127.0.0.1:")
        assert gateway.cluster_name(config)  # the API answers and starts the shared cluster
        config_file = str(tmp_path / "gw" / "config.py")
        assert _servers(config_file)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert not _servers(config_file)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bench_times_worker_startups_through_the_gateway_backend(tmp_path, bench_forecast):
    startups = bench_forecast.measure_gateway_startups(tmp_path, n=2)
    assert len(startups) == 2 and all(0 < s < 120 for s in startups)
