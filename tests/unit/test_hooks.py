"""The Connection hooks, resolved by Airflow's own secrets lookup from ``AIRFLOW_CONN_*`` variables.

An absent Connection gives the default; one that exists but cannot be used (or a variable Airflow
cannot parse, which Airflow itself reports as "not defined") is an error naming the conn_id. The
cluster trigger carries the conn_id, never the Connection's secrets.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from leptonflow_airflow import hooks
from leptonflow_airflow.context import context_from_airflow
from leptonflow_airflow.hooks import (
    ArtifactStoreHook,
    ConnectionConfigError,
    DaskClusterHook,
    HistoryHook,
    KeyringHook,
    LakeHook,
    StoreConnections,
)
from leptonflow_airflow.sensors import ResourceForecastSensor
from leptonflow_airflow.triggers import ClusterReadyTrigger

from tasks.context import Settings
from tasks.security import keyring

CONN_IDS = ("leptonflow_lake", "leptonflow_artifacts", "leptonflow_history", "dask_default", "leptonflow_keys")
CONTEXT = {"params": {}, "run_id": "manual__test", "logical_date": datetime(2026, 11, 10, tzinfo=UTC)}


def _var(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def _define(monkeypatch, conn_id: str, value: dict | str) -> None:
    """Define Connection `conn_id` as Airflow reads it from the environment (JSON or URI form)."""
    monkeypatch.setenv(_var(conn_id), value if isinstance(value, str) else json.dumps(value))


@pytest.fixture(autouse=True)
def no_connections(monkeypatch):
    for conn_id in (*CONN_IDS, "batch_cluster"):
        monkeypatch.delenv(_var(conn_id), raising=False)
    # context_from_airflow hands a keyring Connection to child processes through this variable
    monkeypatch.setenv("LEPTONFLOW_KEYRING_JSON", "")
    monkeypatch.delenv("LEPTONFLOW_KEYRING_JSON")


def _first_event(trigger: ClusterReadyTrigger) -> dict:
    async def first():
        async for event in trigger.run():
            return event.payload
        raise AssertionError("trigger ended without an event")

    return asyncio.run(first())


# ---- absent: the defaults -----------------------------------------------------------------------

def test_absent_connections_give_the_defaults(lf_home):
    for hook in (LakeHook(), ArtifactStoreHook(), HistoryHook(), DaskClusterHook(), KeyringHook()):
        assert hook.config() is None, hook.conn_id
    assert hooks.cluster_config() == {"backend": "local"}
    ctx = context_from_airflow(CONTEXT, "events", "clean")
    env = Settings.from_env()
    assert (ctx.lake_url, ctx.history_url, ctx.artifacts_url) == (env.lake_url, env.history_url, env.artifacts_url)
    assert ctx.lake_url == str(lf_home / "lake") and ctx.cluster == {"backend": "local"}


def test_async_lookup_of_an_absent_connection_is_none():
    assert asyncio.run(DaskClusterHook().aconfig()) is None


# ---- present: the step context is filled from them -----------------------------------------------

def test_connections_fill_the_step_context(lf_home, tmp_path, monkeypatch):
    _define(monkeypatch, "leptonflow_lake", {"conn_type": "generic", "extra": {"url": str(tmp_path / "lake2")}})
    _define(monkeypatch, "leptonflow_history", f"sqlite:///{tmp_path}/h.sqlite")  # the URI form
    _define(monkeypatch, "leptonflow_artifacts", {"conn_type": "generic", "extra": {
        "url": "s3://models/lf", "storage_options": {"endpoint_url": "http://127.0.0.1:9000"}}})
    _define(monkeypatch, "dask_default", {"conn_type": "generic",
                                          "extra": {"backend": "address", "address": "tcp://127.0.0.1:8786"}})
    ctx = context_from_airflow(CONTEXT, "events", "clean")
    assert ctx.lake_url == str(tmp_path / "lake2")
    assert ctx.history_url == f"sqlite:///{tmp_path}/h.sqlite"
    assert ctx.artifacts_url == "s3://models/lf"
    assert ctx.artifacts_options == {"endpoint_url": "http://127.0.0.1:9000"}
    assert ctx.cluster == {"backend": "address", "address": "tcp://127.0.0.1:8786"}


def test_a_lake_given_as_a_uri(monkeypatch):
    _define(monkeypatch, "leptonflow_lake", "s3://bucket/prefix")
    assert LakeHook().config().url == "s3://bucket/prefix"
    _define(monkeypatch, "leptonflow_lake", "file:///data/lake")
    assert LakeHook().config().url == "file:///data/lake"


def test_a_keyring_connection_reaches_the_step(lf_home, tmp_path, monkeypatch):
    ring = keyring.generate(tmp_path / "ring.json")
    _define(monkeypatch, "leptonflow_keys", {"conn_type": "generic", "extra": ring.to_doc()})
    config = KeyringHook().config()
    assert "master_keys" not in repr(config)  # never printed
    ctx = context_from_airflow(CONTEXT, "events", "clean")
    assert ctx.keys.active == ring.active and ctx.keys.master_keys == ring.master_keys


def test_a_gateway_password_may_be_the_connections_password(monkeypatch):
    _define(monkeypatch, "dask_default", {"conn_type": "generic", "login": "lf", "password": "gw-secret-1",
                                          "extra": {"backend": "gateway", "address": "http://127.0.0.1:8000"}})
    config = DaskClusterHook().config()
    assert config.to_dict()["password"] == "gw-secret-1" and config.to_dict()["username"] == "lf"
    assert "gw-secret-1" not in repr(config)


# ---- present but broken: an error naming the conn_id ----------------------------------------------

@pytest.mark.parametrize("value, problem", [
    ('{"conn_type": "generic", "extra": {"url": ', "is not a valid Connection"),  # the variable is not JSON
    ({"conn_type": "generic", "extra": "{not json"}, "extra is not valid JSON"),
    ({"conn_type": "generic", "extra": "[1, 2]"}, "extra must be a JSON object"),
    ({"conn_type": "generic", "extra": {"path": "/data"}}, "has no lake URL"),
    ({"conn_type": "generic", "extra": {"url": ""}}, "has no lake URL"),
    ("not a connection", "has no lake URL"),
    ('{"conn_type": "generic", "hots": "x"}', "is not a valid Connection"),  # a misspelt field
], ids=["bad-json", "bad-extra", "extra-list", "no-url", "empty-url", "garbage", "unknown-field"])
def test_a_broken_lake_connection_is_an_error_naming_it(lf_home, monkeypatch, value, problem):
    _define(monkeypatch, "leptonflow_lake", value)
    with pytest.raises(ConnectionConfigError, match=f"'leptonflow_lake'.*{problem}") as err:
        LakeHook().config()
    assert err.value.conn_id == "leptonflow_lake"
    # the step does not fall back to the default lake
    with pytest.raises(ConnectionConfigError, match="'leptonflow_lake'"):
        context_from_airflow(CONTEXT, "events", "clean")


def test_a_broken_connection_is_an_error_from_async_code_too(monkeypatch):
    _define(monkeypatch, "dask_default", '{"conn_type": "generic", "extra": ')
    with pytest.raises(ConnectionConfigError, match="'dask_default'.*AIRFLOW_CONN_DASK_DEFAULT"):
        asyncio.run(DaskClusterHook().aconfig())


def test_an_unparseable_uri_is_reported_without_its_value(monkeypatch):
    _define(monkeypatch, "leptonflow_history", "postgresql://lf:pw-4f9a2c@db://x://y")
    with pytest.raises(ConnectionConfigError, match="'leptonflow_history'") as err:
        HistoryHook().config()
    assert "pw-4f9a2c" not in str(err.value)


def test_a_history_url_that_is_not_sqlalchemy(monkeypatch):
    _define(monkeypatch, "leptonflow_history", {"conn_type": "generic", "extra": {"url": "not a url"}})
    with pytest.raises(ConnectionConfigError, match="'leptonflow_history'.*not a SQLAlchemy URL"):
        HistoryHook().config()


def test_artifact_storage_options_must_be_an_object(monkeypatch):
    _define(monkeypatch, "leptonflow_artifacts", {"conn_type": "generic",
                                                  "extra": {"url": "s3://m", "storage_options": "key=1"}})
    with pytest.raises(ConnectionConfigError, match="'leptonflow_artifacts'.*storage_options"):
        ArtifactStoreHook().config()


@pytest.mark.parametrize("extra, problem", [
    ({"backend": "yarn"}, "unknown Dask cluster backend 'yarn'; valid backends: address, gateway, local"),
    ({"address": "tcp://127.0.0.1:8786"}, "extra has no 'backend'"),
    ({}, "extra has no 'backend'"),
    ({"backend": "address"}, "needs an 'address'"),
    ({"backend": "local", "address": "tcp://127.0.0.1:8786"}, "takes no 'address'"),
    ({"backend": "gateway", "address": "http://x", "auth": "kerberos"}, "gateway auth 'kerberos'"),
])
def test_a_broken_dask_connection_is_an_error_naming_it(monkeypatch, extra, problem):
    _define(monkeypatch, "dask_default", {"conn_type": "generic", "extra": extra})
    with pytest.raises(ConnectionConfigError, match="'dask_default'") as err:
        DaskClusterHook().config()
    assert problem in str(err.value)


@pytest.mark.parametrize("extra, problem", [
    ({"active": "k1"}, "not a keyring document"),
    ({"active": "k1", "master_keys": {"k1": "AAAA"}}, "keyring document is malformed"),  # no signing key
])
def test_a_broken_keyring_connection_is_an_error_naming_it(monkeypatch, extra, problem):
    _define(monkeypatch, "leptonflow_keys", {"conn_type": "generic", "extra": extra})
    with pytest.raises(ConnectionConfigError, match=f"'leptonflow_keys'.*{problem}"):
        KeyringHook().config()


def test_store_fields_use_the_settings_defaults_for_absent_connections(lf_home, monkeypatch):
    _define(monkeypatch, "leptonflow_lake", "s3://bucket/lake")
    fields = StoreConnections.resolve().step_fields()
    env = Settings.from_env()
    assert fields["lake_url"] == "s3://bucket/lake"
    assert (fields["history_url"], fields["artifacts_url"]) == (env.history_url, env.artifacts_url)


# ---- the trigger carries the conn_id, never the secrets -------------------------------------------

GATEWAY_EXTRA = {"backend": "gateway", "address": "http://127.0.0.1:9", "proxy_address": "tcp://127.0.0.1:9",
                 "auth": "simple", "password": "gw-pass-7c1e", "api_token": "tok-93ab"}


def test_the_trigger_serializes_the_conn_id_not_the_gateway_password(monkeypatch):
    _define(monkeypatch, "dask_default", {"conn_type": "generic", "extra": GATEWAY_EXTRA})
    trigger = ClusterReadyTrigger(conn_id="dask_default", workers=2, plan={"workers": 2, "memory_limit": 1 << 30},
                                  poll_interval=0.1, timeout=0.5)
    classpath, kwargs = trigger.serialize()
    stored = json.dumps(kwargs)
    assert kwargs["conn_id"] == "dask_default" and kwargs["workers"] == 2
    assert "gw-pass-7c1e" not in stored and "tok-93ab" not in stored and "127.0.0.1:9" not in stored
    # run() reads the Connection itself: it polls the gateway the Connection names (unreachable here)
    event = _first_event(trigger)
    assert event["status"] == "timeout" and event["error"]
    assert "gw-pass-7c1e" not in json.dumps(event) and "tok-93ab" not in json.dumps(event)


def test_the_trigger_reports_a_broken_connection_and_the_sensor_fails(monkeypatch):
    _define(monkeypatch, "dask_default", {"conn_type": "generic", "extra": {"backend": "address"}})
    event = _first_event(ClusterReadyTrigger(conn_id="dask_default", workers=1, poll_interval=0.1, timeout=5))
    assert event["status"] == "error" and "'dask_default'" in event["error"]
    sensor = ResourceForecastSensor(task_id="plan_clean", dataset="events")
    with pytest.raises(RuntimeError, match="'dask_default'.*needs an 'address'"):
        sensor.execute_complete({}, event)


def test_the_trigger_refuses_a_backend_with_nothing_to_wait_for():
    event = _first_event(ClusterReadyTrigger(conn_id="dask_default", workers=1, poll_interval=0.1, timeout=5))
    assert event["status"] == "error" and "backend 'local' has no standing cluster" in event["error"]


# ---- the report page finds the lake as the steps do -----------------------------------------------

def _commit_clean(lake_url: str, ds: str) -> None:
    import pyarrow as pa

    from tasks.context import StepContext
    from tasks.io.lake import Manifest
    from tasks.io.parquet import write_table

    ctx = StepContext(dataset="events", ds=ds, lake_url=lake_url)
    version, vdir = ctx.lake.new_version("clean", "events", ds)
    entry = write_table(f"{vdir}/p.parquet", pa.table({"x": [1, 2, 3]}), f"v={version}/p.parquet")
    ctx.lake.commit(Manifest("clean", "events", ds, version, [entry], extra={}))


def test_the_report_page_reads_the_lake_connection(lf_home, tmp_path, monkeypatch):
    import leptonflow_plugin

    _commit_clean(str(lf_home / "lake"), "2026-11-01")  # the default lake
    _commit_clean(str(tmp_path / "conn-lake"), "2026-11-02")  # the lake the Connection names
    assert "2026-11-01" in asyncio.run(leptonflow_plugin.index())  # no Connection: the steps' default
    _define(monkeypatch, "leptonflow_lake", {"conn_type": "generic", "extra": {"url": str(tmp_path / "conn-lake")}})
    page = asyncio.run(leptonflow_plugin.index())
    assert "report/events/2026-11-02" in page and "2026-11-01" not in page
    # that interval exists only in the Connection's lake (the default lake would answer 404)
    report_page = asyncio.run(leptonflow_plugin.run_report("events", "2026-11-02"))
    assert "<h2 id='stage-clean'>clean</h2>" in report_page and "manifest signed: True" in report_page
    assert leptonflow_plugin.lake_url() == context_from_airflow(CONTEXT, "events", "clean").lake_url


def test_the_report_page_fails_on_a_broken_lake_connection(lf_home, monkeypatch):
    import leptonflow_plugin

    _define(monkeypatch, "leptonflow_lake", {"conn_type": "generic", "extra": {"path": "/data/lake"}})
    with pytest.raises(ConnectionConfigError, match="'leptonflow_lake'"):
        asyncio.run(leptonflow_plugin.index())


# ---- in a real task, Connections from the metadata database ---------------------------------------

PROBE_DAG = '''
from datetime import UTC, datetime

from airflow.sdk import dag, task


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC), catchup=False)
def lf_hooks_probe():
    @task
    def resolve() -> dict:
        from leptonflow_airflow.hooks import ConnectionConfigError, DaskClusterHook, HistoryHook, LakeHook

        out = {"lake": LakeHook().config().url, "dask": DaskClusterHook().config()}
        try:
            HistoryHook().config()
        except ConnectionConfigError as exc:
            out["history_error"] = str(exc)
        print("PROBE", __import__("json").dumps(out))
        return out

    resolve()


probe = lf_hooks_probe()  # at module level: dag.test() serializes the DAG from this file

if __name__ == "__main__":
    probe.test()
'''


def test_hooks_read_the_metadata_database_in_a_real_task(tmp_path):
    """A task run by ``dag.test()`` reads Connections through the Execution API from a migrated DB."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    airflow = str(Path(sys.executable).parent / "airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    dags = tmp_path / "dags"
    dags.mkdir()
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(dags), PYTHONPATH=f"{repo}:{repo / 'plugins'}")

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout + proc.stderr

    run(airflow, "db", "migrate")
    run(airflow, "connections", "add", "leptonflow_lake", "--conn-type", "generic",
        "--conn-extra", '{"url": "s3://from-db/lake"}')
    run(airflow, "connections", "add", "leptonflow_history", "--conn-type", "generic", "--conn-extra", '{"path": "x"}')
    (dags / "probe.py").write_text(PROBE_DAG)
    out = run(sys.executable, str(dags / "probe.py"))
    probe = json.loads(out[out.index("PROBE ") + 6:].splitlines()[0])
    assert probe["lake"] == "s3://from-db/lake" and probe["dask"] is None  # absent: the caller's default
    assert probe["history_error"].startswith("Airflow Connection 'leptonflow_history': has no SQLAlchemy URL")
