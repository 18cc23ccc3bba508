"""Triggers run by the Airflow triggerer (async, serializable; importable from plugins/).

A trigger's arguments are stored in the metadata database: they carry conn_ids, never secrets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from leptonflow_airflow.hooks import ConnectionConfigError, DaskClusterHook
from tasks.resources.cluster import ClusterBackend, ClusterBackendError, backend_for

log = logging.getLogger(__name__)


class ClusterReadyTrigger(BaseTrigger):
    """Fires when the standing Dask cluster of Connection `conn_id` has at least `workers` workers.

    The trigger's arguments land in Airflow's metadata database, so they hold the conn_id and the
    plan's numbers only: the backend config (with a gateway password or token) is read through
    ``DaskClusterHook`` inside ``run()``, in the triggerer. ``current_workers`` is polled in a thread
    (the gateway and distributed clients are blocking) so the event loop stays free. Transient errors
    (scheduler restarting, gateway busy) are logged and retried until `timeout` seconds have passed;
    the event then says ``status="timeout"`` with the last error. A Connection that cannot be used
    gives ``status="error"`` at once.
    """

    def __init__(self, conn_id: str, workers: int, plan: dict[str, Any] | None = None,
                 poll_interval: float = 5.0, timeout: float = 600.0):
        super().__init__()
        self.conn_id = str(conn_id)
        self.workers = int(workers)
        self.plan = dict(plan or {})
        self.poll_interval = float(poll_interval)
        self.timeout = float(timeout)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "leptonflow_airflow.triggers.ClusterReadyTrigger",
            {"conn_id": self.conn_id, "workers": self.workers, "plan": self.plan,
             "poll_interval": self.poll_interval, "timeout": self.timeout},
        )

    async def _backend(self) -> ClusterBackend:
        """The standing cluster's backend, from the Connection as the triggerer sees it now."""
        config = await DaskClusterHook(self.conn_id).aconfig()
        backend = backend_for(config.to_dict() if config else None)
        if not backend.has_standing_cluster:
            raise ConnectionConfigError(self.conn_id, f"backend {backend.name!r} has no standing cluster to wait for")
        return backend

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            backend = await self._backend()
        except (ConnectionConfigError, ClusterBackendError) as exc:
            yield TriggerEvent({"status": "error", "error": str(exc), "wanted": self.workers, "plan": self.plan})
            return
        t0 = time.monotonic()
        have, error = 0, ""
        while True:
            try:
                have = await asyncio.to_thread(backend.current_workers)
                error = ""
            except Exception as exc:  # noqa: BLE001 - the cluster may be (re)starting: keep polling until timeout
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
