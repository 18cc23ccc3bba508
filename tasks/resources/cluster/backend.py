"""The one interface every Dask cluster backend implements, and the plan that sizes a cluster.

A backend is built from its config (a small dict: the ``dask_default`` Connection's extra or the
CLI's ``--cluster`` JSON) and answers, in the style of ``distributed.deploy.Cluster``:

- ``connect(plan)``       a context manager yielding a connected ``distributed.Client``;
- ``resize(plan)``        apply a plan to a standing cluster (True when the backend resized it);
- ``current_workers()``   workers connected to the standing cluster now;
- ``supports_scaling``    whether ``resize`` changes the worker count;
- ``has_standing_cluster`` whether a cluster outlives the step (the forecast sensor waits for its workers);
- ``is_local``            whether the workers share this host (plans are capped at its CPUs);
- ``manages(cluster)`` / ``release(...)``  the release-on-drain hooks (``tasks.resources.cluster.drain``).

Secrets in a config (a gateway ``password`` or ``api_token``) are listed in ``secret_keys`` and
left out of ``public_config()``, which is what logs and trigger arguments may carry.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

from tasks.errors import LeptonflowError

log = logging.getLogger(__name__)


class ClusterBackendError(LeptonflowError, ValueError):
    """A cluster backend config is invalid, or asks a backend for something it cannot do."""


@dataclass
class ClusterPlan:
    """What size of cluster a step wants, and why (the forecast sensor's XCom)."""

    workers: int = 2
    threads_per_worker: int = 1
    memory_limit: int = 2 << 30  # bytes per worker
    source: str = "default"  # "forecast" | "heuristic" | "param" | "default"
    reason: str = ""
    predicted: dict[str, Any] = field(default_factory=dict)  # e.g. wall_s, wall_s_upper, peak_mem

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ClusterPlan:
        """A plan from a dict such as an XCom; keys that are not plan fields (stage, nproc...) are ignored."""
        if not d:
            return cls()
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def as_plan(plan: ClusterPlan | Mapping[str, Any] | None) -> ClusterPlan:
    """`plan` as a ClusterPlan (a dict is read with ``ClusterPlan.from_dict``, None is the default plan)."""
    return plan if isinstance(plan, ClusterPlan) else ClusterPlan.from_dict(plan)


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


class ArrowThreads(WorkerPlugin):
    """Size each worker's Arrow CPU pool to the worker's own thread count.

    Arrow sizes its pool to the machine's cores in every process, so N single-thread workers
    on N cores would run N x N compute threads (parquet decode, kernels). Dask's threads are
    the unit of parallelism here.
    """

    def setup(self, worker: Any) -> None:
        import pyarrow as pa

        pa.set_cpu_count(max(1, int(worker.state.nthreads)))


class ClusterBackend(ABC):
    """How a step gets a Dask cluster; one subclass per ``backend`` name of the config.

    Args:
        config: the backend config; its ``backend`` key, when present, must be this class's `name`.

    Raises:
        ClusterBackendError: the config misses a key the backend needs or has one it cannot use.
    """

    name: ClassVar[str] = ""
    secret_keys: ClassVar[frozenset[str]] = frozenset()
    releases_workers: ClassVar[bool] = False  # release on drain gives workers back

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        given = self.config.setdefault("backend", self.name)
        if given != self.name:
            raise ClusterBackendError(f"{type(self).__name__} cannot take a config for backend {given!r}")
        self.validate()

    def validate(self) -> None:
        """Check the config; raise ClusterBackendError naming the key that is missing or wrong."""
        return None

    @property
    def supports_scaling(self) -> bool:
        """Whether ``resize`` changes the number of workers of a standing cluster."""
        return False

    @property
    def has_standing_cluster(self) -> bool:
        """Whether the cluster outlives a step, so its workers can be counted and waited for."""
        return True

    @property
    def is_local(self) -> bool:
        """Whether the workers run on this host (a plan is then capped at the host's CPUs)."""
        return False

    def target_workers(self, plan: ClusterPlan | Mapping[str, Any] | None) -> int:
        """The worker count to wait for once `plan` is applied."""
        return int(as_plan(plan).workers)

    def resize(self, plan: ClusterPlan | Mapping[str, Any] | None) -> bool:
        """Apply `plan` to the standing cluster without waiting; False when this backend cannot resize."""
        return False

    def current_workers(self) -> int:
        """Workers connected to the standing cluster right now."""
        raise ClusterBackendError(f"backend {self.name!r} has no standing cluster to count workers of")

    @contextmanager
    def connect(self, plan: ClusterPlan | Mapping[str, Any] | None = None) -> Iterator[Client]:
        """A connected client, sized by `plan` where the backend can size; closed when the block ends."""
        plan = as_plan(plan)
        with self._client(plan) as client:
            log.info("Dask cluster (%s): %s", self.name, describe(client))
            client.register_plugin(ArrowThreads(), name="leptonflow-arrow-threads")
            yield client

    @abstractmethod
    def _client(self, plan: ClusterPlan) -> AbstractContextManager[Client]:
        """The backend's own way to a connected client for `plan`."""

    @classmethod
    def manages(cls, cluster: Any) -> bool:
        """Whether `cluster` (a client's ``.cluster``) is one this backend starts or manages."""
        return False

    @classmethod
    def release(cls, client: Client, chosen: list[str], n_workers: int, info: Mapping[str, Any]) -> None:
        """Give back the idle workers `chosen` (addresses) of the `n_workers`; `info`: the scheduler's worker info."""
        raise ClusterBackendError(f"backend {cls.name!r} does not own its workers and releases none")

    def public_config(self) -> dict[str, Any]:
        """The config with its secrets masked: what a log line may show."""
        return {k: ("***" if k in self.secret_keys else v) for k, v in self.config.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.public_config()!r})"
