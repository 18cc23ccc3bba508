"""Build a `tasks.context.StepContext` from an Airflow task context.

This is the only place that knows where leptonflow's settings come from in
Airflow: Params (trigger form / dag_run.conf), the data interval, XComs of
earlier steps, and Connections, read through ``leptonflow_airflow.hooks``:

- ``dask_default``         cluster backend (the local backend when the Connection is absent)
- ``leptonflow_lake``      lake root URL
- ``leptonflow_artifacts`` model artifact store URL and storage options
- ``leptonflow_history``   SQLAlchemy URL of the run-history database
- ``leptonflow_keys``      keyring document -> written to a private 0600 file; the step and the
                            processes it starts get its path, never the document (not in the
                            environment, XCom or logs)

An absent Connection gives the ``tasks.context.Settings`` default; a broken one fails the
task with an error naming it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from leptonflow_airflow.hooks import StoreConnections, cluster_config
from tasks.context import StepContext
from tasks.spec import parse_interval
from tasks.steps import ORDER

log = logging.getLogger(__name__)


def _interval(context: dict[str, Any]) -> tuple[str, datetime, datetime]:
    """Which day this run processes: Param `interval_date` if set, else the data interval start."""
    params = context.get("params") or {}
    chosen = params.get("interval_date")
    if chosen:  # a real ISO date, else a usage error naming the Param (not "no raw files" later)
        start, length = parse_interval(str(chosen), "day", argument="interval_date")
        return start.date().isoformat(), start, start + length
    start = context.get("data_interval_start") or context["logical_date"]
    end = context.get("data_interval_end") or start + timedelta(days=1)
    if end <= start:  # trigger-style timetables give empty intervals: process that day
        end = start + timedelta(days=1)
    return start.date().isoformat(), start, end


def upstream_results(context: dict[str, Any], step: str | None) -> dict[str, Any]:
    """XCom results of the steps before `step` (small JSON), keyed by step name (none without a task instance)."""
    ti = context.get("ti")
    if ti is None:
        return {}
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
    """The StepContext of `step` of `dataset` for this Airflow task.

    Raises:
        leptonflow_airflow.hooks.ConnectionConfigError: a leptonflow Connection exists but cannot be used.
    """
    ds, start, end = _interval(context)
    params = {k: v for k, v in dict(context.get("params") or {}).items()}
    cluster = cluster_config()
    stores = StoreConnections.resolve()
    dag_run = context.get("dag_run")
    run_id = getattr(dag_run, "run_id", None) or context.get("run_id") or "manual"
    ctx = StepContext(
        dataset=dataset,
        ds=ds,
        interval_start=start,
        interval_end=end,
        params=params,
        cluster=cluster,
        run_id=str(run_id),
        upstream=upstream_results(context, step),
        **stores.step_fields(),
    )
    log.info("leptonflow %s: dataset=%s interval=%s..%s lake=%s cluster=%s",
             step or "step", dataset, start, end, ctx.lake_url, cluster.get("backend"))
    return ctx
