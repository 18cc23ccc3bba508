"""ResourceForecastSensor: plan a step's cluster from run history, apply it, wait until it is there.

execute() builds a StepContext from the Airflow context, reads the cluster backend from the
``dask_default`` Connection (``cluster_conn_id``) through its hook, asks ``tasks.resources.forecast``
for the plan (``run_plan_clean`` / ``run_plan_train``) and applies it through the backend:

- no standing cluster (``local``): returns the plan at once (the step starts its LocalCluster
  with the planned size);
- a backend that scales (``gateway``): resizes the shared cluster from this process, then defers
  to ``ClusterReadyTrigger`` until the planned workers are up;
- a fixed cluster (``address``): the plan is advisory; defers until it has enough workers
  (the plan's size, capped by the Connection's ``max_workers`` when set).

The trigger carries the conn_id and the plan's numbers, never the Connection's secrets. The plan
(a ``ClusterPlan`` dict, plus nproc/device for training) is the return value, so it is the XCom
that the next step reads through ``ctx.plan(stage)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator

from leptonflow_airflow.context import context_from_airflow
from leptonflow_airflow.hooks import DaskClusterHook, cluster_config
from leptonflow_airflow.operators import OpenLineageMixin
from leptonflow_airflow.triggers import ClusterReadyTrigger
from tasks.context import StepContext

log = logging.getLogger(__name__)

PLANNERS = {"clean": "run_plan_clean", "train": "run_plan_train"}


def describe_plan(plan: dict[str, Any]) -> str:
    """One readable line for the task log."""
    pred = plan.get("predicted") or {}
    parts = [f"{plan.get('stage', '?')}: {plan['workers']} worker(s) x {plan.get('threads_per_worker', 1)} thread(s)",
             f"{plan.get('memory_limit', 0) / 2**30:.1f} GiB/worker", f"source={plan.get('source')}"]
    if "device" in plan:
        parts.append(f"device={plan['device']} nproc={plan.get('nproc')}")
    if pred.get("wall_s") is not None:
        parts.append(f"predicted wall {pred['wall_s']:.1f}s (upper {pred.get('wall_s_upper', 0):.1f}s)")
    if pred.get("peak_memory") is not None:
        parts.append(f"peak mem {pred['peak_memory'] / 2**20:.0f} MiB")
    parts.append(f"input {plan.get('input_bytes', 0) / 2**20:.1f} MiB")
    return "; ".join(parts) + f" -- {plan.get('reason', '')}"


class ResourceForecastSensor(OpenLineageMixin, BaseSensorOperator):
    """Forecast -> cluster size -> resize -> wait (deferrable: the wait runs in the triggerer)."""

    template_fields = ("dataset", "stage")
    ui_color = "#d9f0ff"

    def __init__(self, *, dataset: str, stage: str = "clean",
                 cluster_conn_id: str = DaskClusterHook.default_conn_name, poll_interval: float = 5.0,
                 ready_timeout: float = 900.0, context_builder: Callable[[Any, str, str], StepContext] | None = None,
                 **kwargs: Any):
        """`cluster_conn_id`: the Connection whose backend the plan is applied to (and the trigger waits on);
        `context_builder`: how the StepContext is made from the Airflow context (default
        ``context_from_airflow``); its ``cluster`` is replaced by the `cluster_conn_id` backend."""
        super().__init__(**kwargs)
        if stage not in PLANNERS:
            raise ValueError(f"ResourceForecastSensor: stage {stage!r} is not one of {sorted(PLANNERS)}")
        self.dataset = dataset
        self.stage = stage
        self.step = f"plan_{stage}"
        self.cluster_conn_id = cluster_conn_id
        self.poll_interval = poll_interval
        self.ready_timeout = ready_timeout
        self.context_builder = context_builder or context_from_airflow

    def poke(self, context: Any) -> bool:
        # execute() is overridden: the wait happens in ClusterReadyTrigger, never by poking
        raise RuntimeError("ResourceForecastSensor waits by deferring; poke() is not used")

    def execute(self, context: Any) -> dict[str, Any]:
        from tasks.resources import forecast
        from tasks.resources.cluster import backend_for

        ctx = self._lf_ctx = self.context_builder(context, self.dataset, self.step)
        ctx.cluster = cluster_config(self.cluster_conn_id)
        backend = backend_for(ctx.cluster)
        plan = self._lf_result = getattr(forecast, PLANNERS[self.stage])(ctx)
        self.log.info("plan %s", describe_plan(plan))
        if self.stage == "train" or not backend.has_standing_cluster:
            return plan  # nothing standing to resize or wait for
        want = backend.target_workers(plan)
        if backend.resize(plan):
            self.log.info("resized %s cluster to %d workers", backend.name, want)
        have = backend.current_workers()
        if have >= want:
            self.log.info("cluster already has %d/%d workers", have, want)
            return plan
        self.defer(
            trigger=ClusterReadyTrigger(conn_id=self.cluster_conn_id, workers=want, plan=plan,
                                        poll_interval=self.poll_interval, timeout=self.ready_timeout),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.ready_timeout + 60),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        event = event or {}
        if event.get("status") == "error":
            raise RuntimeError(f"could not wait for the cluster: {event.get('error')}")
        if event.get("status") != "ready":
            raise RuntimeError(
                f"cluster did not reach {event.get('wanted')} workers in {event.get('waited_s')}s "
                f"(had {event.get('workers')}; last error: {event.get('error') or 'none'})"
            )
        plan = self._lf_result = event["plan"]
        self._lf_ctx = self._lf_ctx or self.context_builder(context, self.dataset, self.step)  # resumed: a new process
        self.log.info("cluster ready with %s workers after %ss; plan %s", event["workers"], event["waited_s"],
                      describe_plan(plan))
        return plan
