"""Build a `tasks.context.StepContext` from an Airflow task context.

This is the only place that knows where leptonflow's settings come from in
Airflow: Params (trigger form / dag_run.conf), the data interval, XComs of
earlier steps, and Connections:

- ``dask_default``        cluster backend; its ``extra`` is the backend dict
                          (``{"backend": "local"}`` when the Connection is absent)
- ``leptonflow_lake``     lake root URL (``extra.url`` or the Connection's host/path)
- ``leptonflow_artifacts`` model artifact store URL
- ``leptonflow_history``  SQLAlchemy URL of the run-history database
- ``leptonflow_keys``     keyring document (``extra``) -> never logged, never in XCom
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from tasks.context import StepContext
from tasks.steps import ORDER

log = logging.getLogger(__name__)


def connection_extra(conn_id: str) -> dict[str, Any] | None:
    """The Connection's extra as a dict, or None when the Connection is not defined."""
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException and friends: not configured -> default
        return None
    extra = conn.extra_dejson or {}
    if not extra and conn.host:
        extra = {"url": conn.get_uri()}
    return extra


def _interval(context: dict[str, Any]) -> tuple[str, datetime, datetime]:
    """Which day this run processes: Param `interval_date` if set, else the data interval start."""
    params = context.get("params") or {}
    chosen = params.get("interval_date")
    if chosen:
        start = datetime.fromisoformat(str(chosen)).replace(tzinfo=UTC)
        return start.date().isoformat(), start, start + timedelta(days=1)
    start = context.get("data_interval_start") or context["logical_date"]
    end = context.get("data_interval_end") or start + timedelta(days=1)
    if end <= start:  # trigger-style timetables give empty intervals: process that day
        end = start + timedelta(days=1)
    return start.date().isoformat(), start, end


def upstream_results(context: dict[str, Any], step: str | None) -> dict[str, Any]:
    """XCom results of the steps before `step` (small JSON), keyed by step name."""
    ti = context["ti"]
    before = ORDER if step is None or step not in ORDER else ORDER[: ORDER.index(step)]
    out: dict[str, Any] = {}
    for name in before:
        try:
            value = ti.xcom_pull(task_ids=name)
        except Exception:  # task not in this DAG (e.g. a trimmed DAG)
            value = None
        if value is not None:
            out[name] = value
    return out


def context_from_airflow(context: dict[str, Any], dataset: str, step: str | None = None) -> StepContext:
    ds, start, end = _interval(context)
    params = {k: v for k, v in dict(context.get("params") or {}).items()}
    cluster = connection_extra("dask_default") or {"backend": "local"}
    lake = (connection_extra("leptonflow_lake") or {}).get("url", "")
    artifacts = (connection_extra("leptonflow_artifacts") or {}).get("url", "")
    history = (connection_extra("leptonflow_history") or {}).get("url", "")
    keys = connection_extra("leptonflow_keys")
    if keys and "master_keys" in keys:
        # The keyring document travels by env to this process and the processes it starts; never logged.
        os.environ["LEPTONFLOW_KEYRING_JSON"] = json.dumps(keys)
    dag_run = context.get("dag_run")
    run_id = getattr(dag_run, "run_id", None) or context.get("run_id") or "manual"
    ctx = StepContext(
        dataset=dataset,
        ds=ds,
        lake_url=lake,
        interval_start=start,
        interval_end=end,
        params=params,
        history_url=history,
        cluster=cluster,
        artifacts_url=artifacts,
        run_id=str(run_id),
        upstream=upstream_results(context, step),
    )
    log.info("leptonflow %s: dataset=%s interval=%s..%s lake=%s cluster=%s",
             step or "step", dataset, start, end, ctx.lake_url, cluster.get("backend"))
    return ctx
