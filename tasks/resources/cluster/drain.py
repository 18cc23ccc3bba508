"""Release on drain: give back the workers a step's remaining work can no longer use.

A step that knows its graph (clean: N map tasks, then a shuffle barrier, then P reduce tasks)
knows how many tasks are still unfinished: running, queued, or waiting on the barrier. Once
that count drops below the number of workers (the last wave of maps when P is small, the last
wave of reduces), the surplus cannot run anything for the rest of the step, so its idle workers
are released at once. Dask's ``adapt()`` cannot do this: it sees only queued and running tasks
(not the ones waiting behind a barrier) and releases a worker only after ``wait_count`` (3)
consecutive one-second recommendations.

The step's progress loop calls :func:`release_on_drain` about once a second with its client and
its count of unfinished tasks. What "release" means depends on who owns the workers:

- ``local`` (a LocalCluster / SpecCluster started for the step): the chosen idle workers are
  retired through the scheduler (their results are moved to the remaining workers first) and
  dropped from the cluster's spec, as ``distributed``'s own Adaptive does when it scales down.
- ``gateway`` (a dask-gateway cluster): the gateway cluster is scaled to the smaller size; its
  scheduler retires the workers ``Scheduler.workers_to_close`` picks (idle, least data first).
- ``address`` (a fixed cluster someone else runs): nothing; the step does not own those workers.
"""

from __future__ import annotations

import logging
from typing import Any

from tasks.resources.cluster import BACKENDS, ClusterBackend

log = logging.getLogger(__name__)


def surplus(n_workers: int, n_idle: int, remaining: int, min_workers: int = 1) -> int:
    """Idle workers to release: those beyond what `remaining` unfinished tasks could ever occupy
    at once (one task per worker thread, never below `min_workers`)."""
    keep = max(int(min_workers), int(remaining))
    return max(0, min(int(n_idle), int(n_workers) - keep))


def backend_class_of(cluster: Any) -> type[ClusterBackend] | None:
    """The backend class that manages `cluster` (a client's ``.cluster``; None for an address client)."""
    return next((cls for cls in BACKENDS.values() if cls.manages(cluster)), None)


def _idle_least_data_first(client: Any, nthreads: dict[str, int], keep: int) -> tuple[list[str], dict[str, Any]]:
    """The idle workers beyond the `keep` still needed, least data first; and the scheduler's worker info."""
    processing = client.processing()
    idle = [a for a in nthreads if not processing.get(a)]
    k = surplus(len(nthreads), len(idle), keep, min_workers=0)
    info = client.scheduler_info(n_workers=-1).get("workers", {})

    def held(addr: str) -> float:  # least data first: the cheapest to move off
        m = info.get(addr, {}).get("metrics", {})
        return float(m.get("managed_bytes", m.get("memory", 0)) or 0)

    return sorted(idle, key=lambda a: (held(a), a))[:k], info


def release_on_drain(client: Any, remaining: int, min_workers: int = 1) -> list[str]:
    """Release idle workers that `remaining` unfinished tasks cannot use; returns their addresses.

    Cheap when nothing is to be released (one ``nthreads`` call). Errors are logged, never raised:
    releasing is an optimisation and must not fail the step.
    """
    backend = backend_class_of(getattr(client, "cluster", None))
    if backend is None or not backend.releases_workers:
        return []
    try:
        nthreads = client.nthreads()
        if len(nthreads) <= max(min_workers, remaining):
            return []
        chosen, info = _idle_least_data_first(client, nthreads, max(int(min_workers), int(remaining)))
        if not chosen:
            return []
        backend.release(client, chosen, len(nthreads), info)
        log.info("release on drain: %d unfinished tasks on %d workers, released %d idle (%s backend)",
                 remaining, len(nthreads), len(chosen), backend.name)
        return chosen
    except Exception as exc:  # noqa: BLE001 - the step goes on with the workers it has
        log.warning("release on drain failed (%s: %s); keeping the workers", type(exc).__name__, exc)
        return []
