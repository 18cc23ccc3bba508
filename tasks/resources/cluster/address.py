"""`address` backend: an existing scheduler (a fixed cluster; the plan is advisory)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distributed import Client

from tasks.resources.cluster import ClusterPlan

log = logging.getLogger(__name__)


@contextmanager
def connect(config: dict[str, Any], plan: ClusterPlan) -> Iterator[Client]:
    address = config.get("address")
    if not address:
        raise ValueError("Dask backend 'address' needs an 'address' such as tcp://127.0.0.1:8786")
    with Client(address, timeout=config.get("timeout", 30)) as client:
        have = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        if have < plan.workers:
            log.warning("fixed cluster at %s has %d workers; the plan asked for %d", address, have, plan.workers)
        yield client
