"""Release on drain (tasks.resources.cluster.drain) on a real LocalCluster through the product's local backend."""

from __future__ import annotations

import time

from distributed import Event, wait

from tasks.resources.cluster import ClusterPlan, client_for, drain


def test_surplus_counts_only_idle_workers_beyond_the_remaining_tasks():
    assert drain.surplus(10, 6, 4) == 6  # 4 tasks left: 6 workers can go, all 6 are idle
    assert drain.surplus(10, 3, 4) == 3  # only idle workers are released
    assert drain.surplus(10, 10, 12) == 0  # more work left than workers: keep them all
    assert drain.surplus(10, 10, 0) == 9  # the step is done: down to min_workers
    assert drain.surplus(10, 10, 0, min_workers=3) == 7


def _hold(event_name: str) -> int:
    Event(event_name).wait(60)
    return 42


def _wait_for(pred, timeout=30.0):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_local_backend_retires_idle_workers_the_remaining_work_cannot_use(tmp_path):
    plan = ClusterPlan(workers=3, threads_per_worker=1, memory_limit=1 << 30)
    with client_for({"backend": "local", "local_directory": str(tmp_path)}, plan) as client:
        client.wait_for_workers(3)
        # data held on every worker (as map outputs are at the shuffle barrier) must survive the release
        held = [client.submit(lambda i: list(range(1000 + i)), i, workers=[a], pure=False)
                for i, a in enumerate(sorted(client.nthreads()))]
        wait(held)
        release = Event("lf-drain-release", client=client)
        busy = client.submit(_hold, "lf-drain-release", pure=False)
        assert _wait_for(lambda: any(client.processing().values()))
        # 4 unfinished tasks on 3 workers: nothing to release
        assert drain.release_on_drain(client, 4) == []
        assert len(client.nthreads()) == 3
        # one task left: the two idle workers go, the busy one stays
        busy_worker = next(a for a, keys in client.processing().items() if keys)
        gone = drain.release_on_drain(client, 1)
        assert len(gone) == 2 and busy_worker not in gone
        assert _wait_for(lambda: len(client.nthreads()) == 1)
        assert list(client.nthreads()) == [busy_worker]
        assert len(client.cluster.worker_spec) == 1  # dropped from the spec: the cluster does not restart them
        time.sleep(1.0)
        assert len(client.nthreads()) == 1
        assert [len(x) for x in client.gather(held)] == [1000, 1001, 1002]  # moved, not lost
        release.set()
        assert busy.result(timeout=30) == 42
        # never below min_workers
        assert drain.release_on_drain(client, 0) == []


def test_address_backend_is_left_alone(tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      host="127.0.0.1", protocol="tcp") as cluster:
        with client_for({"backend": "address", "address": cluster.scheduler_address}, ClusterPlan(workers=2)) as c:
            c.wait_for_workers(2)
            assert drain.release_on_drain(c, 0) == []  # not our workers to give back
            assert len(c.nthreads()) == 2


def test_errors_never_fail_the_step():
    class Broken:
        cluster = type("SpecLike", (), {"worker_spec": {}})()

        def nthreads(self):
            raise OSError("scheduler gone")

    assert drain.release_on_drain(Broken(), 5) == []
