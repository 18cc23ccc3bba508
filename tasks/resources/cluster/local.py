"""`local` backend: a LocalCluster inside the task, sized by the plan."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask
from distributed import Client, LocalCluster

from tasks.resources.cluster import ClusterPlan


def host_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as taskset / a container's cpuset limit it),
    else the machine's count: the most one-thread worker processes a LocalCluster here can keep busy."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not every platform has affinity
        return max(1, os.cpu_count() or 1)


@contextmanager
def connect(config: dict[str, Any], plan: ClusterPlan) -> Iterator[Client]:
    # Airflow 3 task processes block the metadata DB for children; spawned worker
    # processes inherit that and die on import ("Nanny failed to start"). Fork avoids it.
    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
        cluster = LocalCluster(
            n_workers=plan.workers,
            threads_per_worker=plan.threads_per_worker,
            memory_limit=plan.memory_limit,
            processes=config.get("processes", True),
            dashboard_address=config.get("dashboard_address", ":0"),
            local_directory=config.get("local_directory") or tempfile.gettempdir(),
            host="127.0.0.1",
            protocol="tcp",  # also for processes=False (in-process workers default to inproc://)
        )
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
