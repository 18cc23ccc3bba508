"""`local` backend: a LocalCluster started inside the step, sized by the plan, closed with it.

Config keys: ``processes`` (default true), ``dashboard_address`` (default ``:0``), ``local_directory``
(default the temp folder), plus the planner's ``max_workers`` / ``worker_memory``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dask
from distributed import Client, LocalCluster

from tasks.resources.cluster.backend import ClusterBackend, ClusterBackendError, ClusterPlan


def host_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as taskset / a container's cpuset limit it),
    else the machine's count: the most one-thread worker processes a LocalCluster here can keep busy."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not every platform has affinity
        return max(1, os.cpu_count() or 1)


class LocalBackend(ClusterBackend):
    """A LocalCluster per step on loopback: nothing standing to resize or wait for."""

    name = "local"
    releases_workers = True

    def validate(self) -> None:
        if self.config.get("address"):
            raise ClusterBackendError("Dask backend 'local' starts its own cluster and takes no 'address'; "
                                      "set backend to 'address' (a running scheduler) or 'gateway'")

    @property
    def has_standing_cluster(self) -> bool:
        return False

    @property
    def is_local(self) -> bool:
        return True

    @contextmanager
    def _client(self, plan: ClusterPlan) -> Iterator[Client]:
        # Airflow 3 task processes block the metadata DB for children; spawned worker
        # processes inherit that and die on import ("Nanny failed to start"). Fork avoids it.
        with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
            cluster = LocalCluster(
                n_workers=plan.workers,
                threads_per_worker=plan.threads_per_worker,
                memory_limit=plan.memory_limit,
                processes=self.config.get("processes", True),
                dashboard_address=self.config.get("dashboard_address", ":0"),
                local_directory=self.config.get("local_directory") or tempfile.gettempdir(),
                host="127.0.0.1",
                protocol="tcp",  # also for processes=False (in-process workers default to inproc://)
            )
            try:
                with Client(cluster) as client:
                    yield client
            finally:
                cluster.close()

    @classmethod
    def manages(cls, cluster: Any) -> bool:
        return hasattr(cluster, "worker_spec")  # distributed.SpecCluster, which LocalCluster is

    @classmethod
    def release(cls, client: Client, chosen: list[str], n_workers: int, info: Mapping[str, Any]) -> None:
        """Retire the workers through the scheduler (their results move to the others first) and drop them
        from the cluster's spec, as ``distributed``'s Adaptive does when it scales down."""
        names = [info[a]["name"] for a in chosen if a in info]
        client.retire_workers(workers=chosen, close_workers=True, remove=True)
        client.cluster.sync(client.cluster.scale_down, names)
