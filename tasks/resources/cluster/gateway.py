"""`gateway` backend: one shared Dask cluster managed by a dask-gateway server, resized to plans.

Config keys (from the ``dask_default`` Airflow Connection or ``--cluster`` JSON):

- ``address``        the gateway's HTTP API, e.g. ``http://127.0.0.1:8000``
- ``proxy_address``  the gateway's scheduler proxy, e.g. ``tcp://127.0.0.1:8786`` (clients connect here)
- ``auth``           ``simple`` (``username`` + ``password``), ``jupyterhub`` (``api_token``) or ``none``
- ``cluster_name``   the shared cluster's id; when absent the user's oldest running cluster is adopted,
                     or a new one started (it outlives this process: ``shutdown_on_close=False``)
- ``cluster_options`` options for a new cluster (what the server exposes), ``timeout`` seconds to wait
                     for workers (default 300), ``scale_down_to`` workers to leave after a step (default:
                     leave the size as it is, the next plan decides).

:class:`GatewayBackend` is the backend; the module functions below are its implementation, usable on
their own with a config dict. The forecast sensor resizes the cluster from its own process and waits
for the workers; the step then connects, which only grows the cluster (never shrinks it under another job).
"""

from __future__ import annotations

import getpass
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from distributed import Client

from tasks.resources.cluster.backend import ClusterBackend, ClusterBackendError, ClusterPlan, as_plan

AUTH_KINDS = ("simple", "jupyterhub", "none")

log = logging.getLogger(__name__)


def check_config(config: Mapping[str, Any]) -> None:
    """Raise ClusterBackendError when `config` lacks the gateway's address or names an unknown auth."""
    if not config.get("address"):
        raise ClusterBackendError("Dask backend 'gateway' needs an 'address' such as http://127.0.0.1:8000")
    kind = str(config.get("auth") or "simple").lower()
    if kind not in AUTH_KINDS:
        raise ClusterBackendError(f"gateway auth {kind!r} is not one of {', '.join(AUTH_KINDS)}")


def _gateway(config: dict[str, Any]):
    from dask_gateway import BasicAuth, Gateway, JupyterHubAuth

    check_config(config)
    kind = str(config.get("auth") or "simple").lower()
    if kind == "simple":
        auth: Any = BasicAuth(username=config.get("username") or getpass.getuser(), password=config.get("password"))
    elif kind == "jupyterhub":
        auth = JupyterHubAuth(api_token=config.get("api_token"))
    else:
        auth = None
    return Gateway(address=config["address"], proxy_address=config.get("proxy_address"), auth=auth)


@contextmanager
def _open(config: dict[str, Any]) -> Iterator[Any]:
    gw = _gateway(config)
    try:
        yield gw
    finally:
        gw.close()
        # dask_gateway's Gateway.__del__ closes a second time and raises on a stopped loop with
        # current distributed; dropping the loop runner after our close makes __del__ a no-op.
        gw.__dict__.pop("_loop_runner", None)


def _release(cluster: Any) -> None:
    """Disconnect from the shared cluster without stopping it (same double-close guard as `_open`)."""
    cluster.close(shutdown=False)
    cluster.gateway.__dict__.pop("_loop_runner", None)


def _find_or_create(gw: Any, config: dict[str, Any]) -> Any:
    """The shared cluster: the named one, else the oldest running one of this user, else a new one."""
    name = config.get("cluster_name")
    if name:
        try:
            return gw.connect(name, shutdown_on_close=False)
        except ValueError as exc:
            raise ClusterBackendError(f"gateway {config['address']}: no cluster named {name!r}: {exc}") from exc
    running = sorted(gw.list_clusters(), key=lambda r: (r.start_time is None, r.start_time, r.name))
    if running:
        return gw.connect(running[0].name, shutdown_on_close=False)
    cluster = gw.new_cluster(shutdown_on_close=False, **(config.get("cluster_options") or {}))
    log.info("gateway %s: started shared cluster %s", config["address"], cluster.name)
    return cluster


def _workers(cluster: Any) -> int:
    with cluster.get_client(set_as_default=False) as client:
        return len(client.scheduler_info(n_workers=-1).get("workers", {}))


def cluster_name(config: dict[str, Any]) -> str:
    """The shared cluster's id (starting it if none runs)."""
    with _open(config) as gw:
        return _find_or_create(gw, config).name


def resize(config: dict[str, Any], workers: int) -> str:
    """Ask the gateway for `workers` workers on the shared cluster; returns the cluster's id. Does not wait."""
    if workers < 0:
        raise ClusterBackendError(f"gateway resize: workers must be >= 0, got {workers}")
    with _open(config) as gw:
        cluster = _find_or_create(gw, config)
        cluster.scale(workers)
        log.info("gateway %s: scaled cluster %s to %d workers", config["address"], cluster.name, workers)
        name = cluster.name
        _release(cluster)
        return name


def current_workers(config: dict[str, Any]) -> int:
    """Workers connected to the shared cluster's scheduler right now."""
    with _open(config) as gw:
        cluster = _find_or_create(gw, config)
        try:
            return _workers(cluster)
        finally:
            _release(cluster)


def shutdown(config: dict[str, Any]) -> None:
    """Stop the shared cluster (its workers and scheduler)."""
    with _open(config) as gw:
        for report in gw.list_clusters():
            if not config.get("cluster_name") or report.name == config["cluster_name"]:
                gw.stop_cluster(report.name)


@contextmanager
def connect(config: dict[str, Any], plan: ClusterPlan) -> Iterator[Client]:
    timeout = float(config.get("timeout", 300))
    with _open(config) as gw:
        cluster = _find_or_create(gw, config)
        try:
            # the default client, like the local and address backends' Client(): steps may use default_client()
            client = cluster.get_client(set_as_default=True)
            have = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            if have < plan.workers:  # grow only: the shared cluster may be serving a larger job
                cluster.scale(plan.workers)
            t0 = time.monotonic()
            client.wait_for_workers(plan.workers, timeout=timeout)
            log.info("gateway cluster %s: %d workers ready after %.1fs", cluster.name, plan.workers,
                     time.monotonic() - t0)
            try:
                yield client
            finally:
                client.close()
                if config.get("scale_down_to") is not None:
                    cluster.scale(int(config["scale_down_to"]))
        finally:
            _release(cluster)


class GatewayBackend(ClusterBackend):
    """One shared dask-gateway cluster, resized to each plan; it outlives the steps that use it."""

    name = "gateway"
    secret_keys = frozenset({"password", "api_token"})
    releases_workers = True

    def validate(self) -> None:
        check_config(self.config)

    @property
    def supports_scaling(self) -> bool:
        return True

    def resize(self, plan: ClusterPlan | Mapping[str, Any] | None) -> bool:
        resize(self.config, self.target_workers(plan))
        return True

    def current_workers(self) -> int:
        return current_workers(self.config)

    def _client(self, plan: ClusterPlan) -> AbstractContextManager[Client]:
        return connect(self.config, as_plan(plan))

    @classmethod
    def manages(cls, cluster: Any) -> bool:
        return type(cluster).__module__.startswith("dask_gateway")

    @classmethod
    def release(cls, client: Client, chosen: list[str], n_workers: int, info: Mapping[str, Any]) -> None:
        """Scale the gateway cluster down by ``len(chosen)``: its scheduler retires the workers
        ``Scheduler.workers_to_close`` picks (idle, least data first)."""
        client.cluster.scale(n_workers - len(chosen))
