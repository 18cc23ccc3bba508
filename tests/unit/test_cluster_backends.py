"""The cluster backends behind one interface, on real Dask clusters on loopback."""

from __future__ import annotations

import pytest
from distributed import LocalCluster

from tasks.resources import cluster as clusters
from tasks.resources.cluster import (
    AddressBackend,
    ClusterBackendError,
    ClusterPlan,
    GatewayBackend,
    LocalBackend,
    backend_for,
    client_for,
    describe,
    drain,
)


@pytest.mark.parametrize("config, cls, scales, standing, local", [
    (None, LocalBackend, False, False, True),
    ({}, LocalBackend, False, False, True),
    ({"backend": "local", "processes": False}, LocalBackend, False, False, True),
    ({"backend": "address", "address": "tcp://127.0.0.1:8786"}, AddressBackend, False, True, False),
    ({"backend": "gateway", "address": "http://127.0.0.1:8000"}, GatewayBackend, True, True, False),
])
def test_backend_for_picks_the_class_of_the_config(config, cls, scales, standing, local):
    backend = backend_for(config)
    assert type(backend) is cls and backend.name == (config or {}).get("backend", "local")
    assert (backend.supports_scaling, backend.has_standing_cluster, backend.is_local) == (scales, standing, local)


def test_an_unknown_backend_is_named_with_the_valid_ones():
    with pytest.raises(ClusterBackendError, match="unknown Dask cluster backend 'k8s'; valid backends: "
                                                  "address, gateway, local"):
        backend_for({"backend": "k8s"})
    with pytest.raises(ValueError, match="unknown Dask cluster backend 3"):  # ClusterBackendError is a ValueError
        backend_for({"backend": 3})


@pytest.mark.parametrize("config, problem", [
    ({"backend": "address"}, "needs an 'address'"),
    ({"backend": "gateway"}, "needs an 'address'"),
    ({"backend": "gateway", "address": "http://x", "auth": "kerberos"}, "gateway auth 'kerberos'"),
    ({"backend": "local", "address": "tcp://x:1"}, "takes no 'address'"),
])
def test_a_config_missing_what_its_backend_needs_is_refused(config, problem):
    with pytest.raises(ClusterBackendError, match=problem):
        backend_for(config)


def test_a_backend_refuses_another_backends_config():
    with pytest.raises(ClusterBackendError, match="cannot take a config for backend 'gateway'"):
        LocalBackend({"backend": "gateway"})


def test_secrets_are_masked_in_the_public_config():
    backend = backend_for({"backend": "gateway", "address": "http://x", "password": "pw-1", "api_token": "tk-2"})
    public = backend.public_config()
    assert public["password"] == public["api_token"] == "***" and public["address"] == "http://x"
    assert "pw-1" not in repr(backend) and "tk-2" not in repr(backend)
    assert backend.config["password"] == "pw-1"  # the backend itself still has it


def test_address_caps_the_wait_at_its_max_workers():
    backend = backend_for({"backend": "address", "address": "tcp://x:1", "max_workers": 3})
    assert backend.target_workers({"workers": 8, "stage": "clean"}) == 3
    assert backend.target_workers(ClusterPlan(workers=2)) == 2
    assert backend_for({"backend": "gateway", "address": "http://x"}).target_workers(ClusterPlan(workers=8)) == 8


def test_local_backend_starts_a_sized_cluster_with_arrow_pools_to_match(tmp_path):
    backend = backend_for({"backend": "local", "local_directory": str(tmp_path)})
    with backend.connect(ClusterPlan(workers=1, threads_per_worker=2, memory_limit=1 << 30)) as client:
        size = describe(client)
        assert size["workers"] == 1 and size["threads"] == 2 and size["memory_limit"] == 1 << 30

        def arrow_threads() -> int:
            import pyarrow as pa

            return pa.cpu_count()

        assert list(client.run(arrow_threads).values()) == [2]  # ArrowThreads sized the worker's pool
        assert drain.backend_class_of(client.cluster) is LocalBackend
    assert backend.resize(ClusterPlan(workers=4)) is False  # sized when started, nothing standing
    with pytest.raises(ClusterBackendError, match="backend 'local' has no standing cluster"):
        backend.current_workers()


@pytest.fixture
def scheduler():
    cluster = LocalCluster(n_workers=2, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=":0")
    yield cluster
    cluster.close()


def test_address_backend_counts_and_uses_a_fixed_cluster(scheduler):
    config = {"backend": "address", "address": scheduler.scheduler_address}
    backend = backend_for(config)
    assert backend.current_workers() == 2 == clusters.current_workers(config)
    assert backend.resize(ClusterPlan(workers=5)) is False and clusters.resize(config, 5) is False
    assert len(scheduler.workers) == 2  # a fixed cluster is never resized
    with client_for(config, {"workers": 4}) as client:  # the plan is advisory
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert drain.backend_class_of(client.cluster) is AddressBackend
        assert drain.release_on_drain(client, 0) == []  # someone else's workers: never released
    assert len(scheduler.workers) == 2


def test_unreachable_address_is_an_error():
    backend = backend_for({"backend": "address", "address": "tcp://127.0.0.1:9", "timeout": 0.3})
    with pytest.raises(OSError):
        backend.current_workers()
