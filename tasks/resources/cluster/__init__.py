"""How a step gets a Dask cluster: one interface (``ClusterBackend``), three backends.

``ClusterPlan`` says what size a step wants; a backend turns it into a running ``distributed.Client``:

- ``local``   (embedded default): a LocalCluster started inside the step, sized by the plan.
- ``address`` an existing scheduler at tcp://host:port: a fixed cluster, the plan is advisory.
- ``gateway`` a shared dask-gateway cluster, resized to the plan.

The backend config is a small dict (from the ``dask_default`` Airflow Connection or the CLI's
``--cluster``): ``{"backend": "local"}``, ``{"backend": "address", "address": "tcp://..."}``,
``{"backend": "gateway", "address": "http://...", "proxy_address": ..., "cluster_name": ...}``.
:func:`backend_for` turns it into the backend object::

    backend = backend_for({"backend": "address", "address": "tcp://127.0.0.1:8786"})
    with backend.connect(ClusterPlan(workers=4)) as client:
        ...

While a step runs, ``tasks.resources.cluster.drain.release_on_drain`` gives back the idle workers its
unfinished tasks can no longer use (local: retired; gateway: scaled down; address: left alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from distributed import Client

from tasks.resources.cluster.address import AddressBackend
from tasks.resources.cluster.backend import (
    ArrowThreads,
    ClusterBackend,
    ClusterBackendError,
    ClusterPlan,
    as_plan,
    describe,
)
from tasks.resources.cluster.gateway import GatewayBackend
from tasks.resources.cluster.local import LocalBackend, host_cpus

__all__ = [
    "BACKENDS", "AddressBackend", "ArrowThreads", "ClusterBackend", "ClusterBackendError", "ClusterPlan",
    "GatewayBackend", "LocalBackend", "as_plan", "backend_for", "client_for", "current_workers", "describe",
    "host_cpus", "reachable_dashboard", "resize",
]

BACKENDS: dict[str, type[ClusterBackend]] = {cls.name: cls for cls in (LocalBackend, AddressBackend, GatewayBackend)}
DEFAULT_BACKEND = "local"


def backend_for(config: Mapping[str, Any] | None) -> ClusterBackend:
    """The backend object for `config` (None or a config without ``backend``: the local backend).

    Raises:
        ClusterBackendError: the backend name is unknown (the message lists the valid ones), or its
            config misses a key it needs.
    """
    config = dict(config or {})
    name = config.get("backend") or DEFAULT_BACKEND
    cls = BACKENDS.get(name) if isinstance(name, str) else None
    if cls is None:
        valid = ", ".join(sorted(BACKENDS))
        raise ClusterBackendError(f"unknown Dask cluster backend {name!r}; valid backends: {valid}")
    config["backend"] = name
    return cls(config)


def client_for(config: Mapping[str, Any] | None,
               plan: ClusterPlan | Mapping[str, Any] | None = None) -> AbstractContextManager[Client]:
    """A connected Dask client for `config`, sized by `plan` where the backend can size (a context manager)."""
    return backend_for(config).connect(plan)


def reachable_dashboard(config: Mapping[str, Any] | None, size: Mapping[str, Any] | None) -> dict[str, str]:
    """``{"dashboard": URL}`` for a step result when the cluster outlives the step (its Dask dashboard can
    still be opened from the task's link), else ``{}``: a ``local`` backend's cluster dies with the step.
    `size` is :func:`describe`'s answer while connected."""
    link = (size or {}).get("dashboard")
    try:
        standing = backend_for(config).has_standing_cluster
    except ClusterBackendError:
        return {}
    return {"dashboard": str(link)} if standing and link else {}


def resize(config: Mapping[str, Any] | None, workers: int) -> bool:
    """Ask a standing cluster for `workers` workers: True when the backend resized (gateway), False when it
    cannot (a local cluster is sized when started; an address cluster is fixed, the plan is advisory)."""
    return backend_for(config).resize(ClusterPlan(workers=int(workers)))


def current_workers(config: Mapping[str, Any] | None) -> int:
    """Workers now connected to a standing cluster (gateway or address backend)."""
    return backend_for(config).current_workers()
