"""`address` backend: an existing scheduler at ``tcp://host:port`` that someone else runs.

The cluster is fixed: a plan is advisory, and the step never releases its workers. Config keys:
``address`` (required), ``timeout`` seconds to connect (default 30), ``max_workers`` (the most
workers the cluster has: the forecast sensor waits for no more than that).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from distributed import Client

from tasks.resources.cluster.backend import ClusterBackend, ClusterBackendError, ClusterPlan, as_plan

log = logging.getLogger(__name__)


class AddressBackend(ClusterBackend):
    """A fixed cluster reached at its scheduler's address."""

    name = "address"

    def validate(self) -> None:
        address = self.config.get("address")
        if not address or not isinstance(address, str):
            raise ClusterBackendError("Dask backend 'address' needs an 'address' such as tcp://127.0.0.1:8786")

    @property
    def address(self) -> str:
        return str(self.config["address"])

    def target_workers(self, plan: ClusterPlan | Mapping[str, Any] | None) -> int:
        want = int(as_plan(plan).workers)
        cap = self.config.get("max_workers")
        return min(want, int(cap)) if cap else want

    def current_workers(self) -> int:
        with Client(self.address, timeout=self.config.get("timeout", 30)) as client:
            return len(client.scheduler_info(n_workers=-1).get("workers", {}))

    @contextmanager
    def _client(self, plan: ClusterPlan) -> Iterator[Client]:
        with Client(self.address, timeout=self.config.get("timeout", 30)) as client:
            have = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            if have < plan.workers:
                log.warning("fixed cluster at %s has %d workers; the plan asked for %d", self.address, have,
                            plan.workers)
            yield client

    @classmethod
    def manages(cls, cluster: Any) -> bool:
        return cluster is None  # a Client made from an address has no cluster object
