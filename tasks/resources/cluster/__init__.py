"""How a Dask cluster is had, behind one small interface.

``ClusterPlan`` says what size a step wants; a backend turns it into a running
``distributed.Client``:

- ``local``   (embedded default): a LocalCluster started inside the task, sized by the plan.
- ``address`` an existing scheduler at tcp://host:port: a fixed cluster, the plan is advisory.
- ``gateway`` a shared dask-gateway cluster, resized to the plan (``tasks.resources.cluster.gateway``).

The backend config is a small dict (from the ``dask_default`` Airflow Connection
or the CLI): ``{"backend": "local"}``, ``{"backend": "address", "address": "tcp://..."}``,
``{"backend": "gateway", "address": "http://...", "proxy_address": ..., "cluster_name": ...}``.

While a step runs, ``tasks.resources.cluster.drain.release_on_drain`` gives back the idle workers its
unfinished tasks can no longer use (local: retired; gateway: scaled down; address: left alone).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

log = logging.getLogger(__name__)


@dataclass
class ClusterPlan:
    workers: int = 2
    threads_per_worker: int = 1
    memory_limit: int = 2 << 30  # bytes per worker
    source: str = "default"  # "forecast" | "heuristic" | "param" | "default"
    reason: str = ""
    predicted: dict[str, Any] = field(default_factory=dict)  # e.g. wall_s, wall_s_upper, peak_mem

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ClusterPlan:
        if not d:
            return cls()
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def describe(client: Client) -> dict[str, Any]:
    """Live size of the cluster behind `client`."""
    info = client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {})
    return {
        "workers": len(workers),
        "threads": sum(w.get("nthreads", 0) for w in workers.values()),
        "memory_limit": sum(w.get("memory_limit", 0) or 0 for w in workers.values()),
        "dashboard": client.dashboard_link,
    }


@contextmanager
def client_for(config: dict[str, Any] | None, plan: ClusterPlan | dict | None = None) -> Iterator[Client]:
    """A connected Dask client for `config`, sized by `plan` where the backend can size."""
    config = dict(config or {"backend": "local"})
    plan = plan if isinstance(plan, ClusterPlan) else ClusterPlan.from_dict(plan)
    backend = config.get("backend", "local")
    if backend == "local":
        from tasks.resources.cluster import local as impl
    elif backend == "address":
        from tasks.resources.cluster import address as impl
    elif backend == "gateway":
        from tasks.resources.cluster import gateway as impl  # type: ignore[no-redef]
    else:
        raise ValueError(f"unknown Dask cluster backend {backend!r} (expected local, address or gateway)")
    with impl.connect(config, plan) as client:
        log.info("Dask cluster (%s): %s; dashboard %s", backend, describe(client), client.dashboard_link)
        client.register_plugin(ArrowThreads(), name="leptonflow-arrow-threads")
        yield client


class ArrowThreads(WorkerPlugin):
    """Size each worker's Arrow CPU pool to the worker's own thread count.

    Arrow sizes its pool to the machine's cores in every process, so N single-thread workers
    on N cores would run N x N compute threads (parquet decode, kernels): measured 1.6x slower
    map tasks on the 2-core box. Dask's threads are the unit of parallelism here.
    """

    def setup(self, worker: Any) -> None:
        import pyarrow as pa

        pa.set_cpu_count(max(1, int(worker.state.nthreads)))


def resize(config: dict[str, Any] | None, workers: int) -> bool:
    """Apply a size to a standing cluster: True when the backend resized (gateway), False when it cannot
    (local clusters are sized when started; an address cluster is fixed, the plan is advisory)."""
    config = dict(config or {"backend": "local"})
    if config.get("backend", "local") == "gateway":
        from tasks.resources.cluster import gateway

        gateway.resize(config, workers)
        return True
    return False


def current_workers(config: dict[str, Any] | None) -> int:
    """Workers now connected to a standing cluster (gateway or address backend)."""
    config = dict(config or {"backend": "local"})
    backend = config.get("backend", "local")
    if backend == "gateway":
        from tasks.resources.cluster import gateway

        return gateway.current_workers(config)
    if backend == "address":
        if not config.get("address"):
            raise ValueError("Dask backend 'address' needs an 'address' such as tcp://127.0.0.1:8786")
        with Client(config["address"], timeout=config.get("timeout", 30)) as client:
            return len(client.scheduler_info(n_workers=-1).get("workers", {}))
    raise ValueError(f"backend {backend!r} has no standing cluster to count workers of")
