"""Triggers run by the Airflow triggerer (async, serializable; importable from plugins/)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

log = logging.getLogger(__name__)


class ClusterReadyTrigger(BaseTrigger):
    """Fires when the standing Dask cluster in `cluster` has at least `workers` workers.

    Polls ``tasks.resources.cluster.current_workers`` in a thread (the gateway and distributed clients are
    blocking) so the triggerer's event loop stays free. Transient errors (scheduler restarting,
    gateway busy) are logged and retried until `timeout` seconds have passed; the event then
    says ``status="timeout"`` and the sensor fails with the last error.
    """

    def __init__(self, cluster: dict[str, Any], workers: int, plan: dict[str, Any] | None = None,
                 poll_interval: float = 5.0, timeout: float = 600.0):
        super().__init__()
        self.cluster = dict(cluster)
        self.workers = int(workers)
        self.plan = dict(plan or {})
        self.poll_interval = float(poll_interval)
        self.timeout = float(timeout)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "leptonflow_airflow.triggers.ClusterReadyTrigger",
            {"cluster": self.cluster, "workers": self.workers, "plan": self.plan,
             "poll_interval": self.poll_interval, "timeout": self.timeout},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from tasks.resources.cluster import current_workers

        t0 = time.monotonic()
        have, error = 0, ""
        while True:
            try:
                have = await asyncio.to_thread(current_workers, self.cluster)
                error = ""
            except Exception as exc:  # the cluster may be (re)starting: keep polling until timeout
                error = f"{type(exc).__name__}: {exc}"
                log.warning("cluster not reachable yet (%s); retrying", error)
            waited = time.monotonic() - t0
            if have >= self.workers:
                log.info("cluster ready: %d/%d workers after %.1fs", have, self.workers, waited)
                yield TriggerEvent({"status": "ready", "workers": have, "waited_s": round(waited, 2),
                                    "plan": self.plan})
                return
            if waited >= self.timeout:
                yield TriggerEvent({"status": "timeout", "workers": have, "waited_s": round(waited, 2),
                                    "wanted": self.workers, "error": error, "plan": self.plan})
                return
            log.info("waiting for workers: %d/%d (%.0fs)", have, self.workers, waited)
            await asyncio.sleep(self.poll_interval)
