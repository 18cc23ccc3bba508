"""A real dask-gateway server (local backend, loopback) whose shared cluster the sensor resizes.

Flow, as in a DAG run: the forecast sensor plans the clean step and scales the shared cluster up
from its own process, the trigger waits for the workers, the clean step runs in ANOTHER process
on that cluster (``python -m tasks clean --cluster <gateway JSON>`` once tasks.clean exists, else a
clean-like Dask workload through the same ``client_for`` path), then the cluster is scaled down.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred
from leptonflow_airflow.sensors import ResourceForecastSensor, _inline_context

from tasks import cluster as clusters
from tasks import history
from tasks.cluster import gateway

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway")
    api, proxy = _free_port(), _free_port()
    # the gateway's default commands are the removed dask-scheduler/dask-worker scripts
    (tmp / "config.py").write_text(textwrap.dedent(f"""
        c.DaskGateway.address = "127.0.0.1:{api}"
        c.Proxy.address = "127.0.0.1:{proxy}"
        c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
        c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
        c.SimpleAuthenticator.password = "test-secret"
        c.LocalClusterConfig.scheduler_cmd = [{PY!r}, "-m", "distributed.cli.dask_scheduler"]
        c.LocalClusterConfig.worker_cmd = [{PY!r}, "-m", "distributed.cli.dask_worker"]
        c.LocalClusterConfig.worker_memory = "1 G"
        c.LocalClusterConfig.worker_threads = 1
        c.LocalClusterConfig.idle_timeout = 0
        c.LocalBackend.clusters_directory = {str(tmp / "clusters")!r}
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp / "server.log", "wb") as logf:
        server = subprocess.Popen([str(Path(PY).parent / "dask-gateway-server"), "-f", str(tmp / "config.py")],
                                  cwd=tmp, stdout=logf, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{api}/api/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"dask-gateway-server exited: {(tmp / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
        config = {"backend": "gateway", "address": f"http://127.0.0.1:{api}", "proxy_address": f"tcp://127.0.0.1:{proxy}",
                  "auth": "simple", "password": "test-secret", "timeout": 120, "max_workers": 3,
                  "worker_memory": 1 << 30}
        yield config
        try:
            gateway.shutdown(config)
        except Exception:  # the server may already be gone; its own shutdown stops clusters too
            pass
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


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
from tasks.cluster import ClusterPlan, client_for, describe
cfg, plan, raw = json.loads(sys.argv[1]), ClusterPlan.from_dict(json.loads(sys.argv[2])), sys.argv[3]
with client_for(cfg, plan) as client:
    df = dd.read_parquet(raw, columns=["event_id", "price"])
    kept = df.dropna().drop_duplicates(subset=["event_id"])
    out = {"rows_in": int(df.shape[0].compute()), "rows_clean": int(kept.shape[0].compute()),
           "workers": describe(client)["workers"]}
print(json.dumps(out))
"""


def test_sensor_scales_gateway_cluster_for_clean_then_down(lf_home, gateway_config):
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
    sensor = ResourceForecastSensor(task_id="plan_clean", dataset="events", cluster=gateway_config,
                                    context_builder=_inline_context, poll_interval=0.5, ready_timeout=180)
    try:
        plan = sensor.execute(context)  # returns at once only if the workers were already up
    except TaskDeferred as deferred:
        classpath, kwargs = deferred.trigger.serialize()
        assert classpath == "leptonflow_airflow.triggers.ClusterReadyTrigger"
        assert kwargs["cluster"]["backend"] == "gateway" and kwargs["workers"] == 2
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
        assert result["rows_in"] == 20000 or result.get("accounting", {}).get("rows_in") == 20000
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

    from tasks.cluster import ClusterPlan, drain

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
