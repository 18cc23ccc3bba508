"""The task-level simulator of bench/forecast.py: waves, billing, and Dask's adaptive loop as distributed has it."""

from __future__ import annotations

import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def sim(bench_forecast):
    return bench_forecast


def test_fixed_cluster_runs_waves_then_barrier_then_reduces(sim):
    maps, reds = np.full(8, 10.0), np.full(8, 5.0)
    r = sim.simulate_step(maps, reds, 1e9, 16e9, lambda: 2.0, workers=4, standing=4, prewarm=4)
    assert r["wall_s"] == pytest.approx(2 * 10 + 2 * 5)  # two map waves, shuffle barrier, two reduce waves
    assert r["cost"] == pytest.approx(4 * 30)
    assert r["peak_workers"] == 4 and r["requests"] == []


def test_prewarm_is_billed_but_off_the_critical_path(sim):
    maps, reds = np.full(8, 10.0), np.full(8, 5.0)
    r = sim.simulate_step(maps, reds, 1e9, 16e9, lambda: 2.0, workers=4, standing=1, prewarm=4, prewarm_lead=3.0)
    assert r["wall_s"] == pytest.approx(30)
    assert r["cost"] == pytest.approx(4 * 30 + 3 * 3.0)  # three pre-warmed workers billed from their request
    # too short a lead: the late start-up lands on the critical path
    late = sim.simulate_step(maps, reds, 1e9, 16e9, lambda: 5.0, workers=4, standing=1, prewarm=4, prewarm_lead=3.0)
    assert late["wall_s"] > 30
    # a re-plan to fewer workers when the data lands releases the surplus at once
    fewer = sim.simulate_step(maps, reds, 1e9, 16e9, lambda: 2.0, workers=2, standing=1, prewarm=4, prewarm_lead=3.0)
    assert fewer["wall_s"] == pytest.approx(4 * 10 + 4 * 5)
    assert fewer["cost"] == pytest.approx(2 * 60 + 3 * 3.0)


def test_adapt_first_request_uses_unknown_task_duration_then_caps_at_ready_tasks(sim):
    n = 400
    r = sim.simulate_step(np.full(n, 20.0), np.full(n, 20.0), 1e9, 16e9, lambda: 1.0, adapt_max=1000,
                          tick_phase=0.2)
    t0, first = r["requests"][0]
    assert t0 == pytest.approx(0.2)  # the first tick after the data lands; no heartbeat has reported a task yet
    # occupancy = 400 queued x 0.5 s (no duration known yet) -> ceil(200 / 5 s) = 40 workers, i.e. 39 more
    assert first == math.ceil(n * sim.UNKNOWN_TASK_DURATION_S / sim.ADAPT_TARGET_DURATION_S) - 1
    # once tasks are seen executing (2 x max exec time) the target grows, but never beyond the tasks there are
    assert r["peak_workers"] == n
    # after the step every extra worker goes, but only after wait_count (3) consecutive recommendations
    assert sim.ADAPT_WAIT_COUNT - 1 <= r["tail_s"] <= sim.ADAPT_WAIT_COUNT + 1


def test_adapt_respects_maximum_and_bills_every_requested_worker(sim):
    r = sim.simulate_step(np.full(100, 30.0), np.full(100, 1.0), 1e9, 16e9, lambda: 1.0, adapt_max=10,
                          tick_phase=0.0)
    assert r["peak_workers"] == 10
    requested = sum(n for _, n in r["requests"])
    assert requested == r["workers_requested"] >= 9
    assert r["cost"] >= 100 * 31.0  # at least the task work itself


def test_adapt_memory_pressure_doubles_the_cluster(sim):
    # one long task per worker keeps cpu demand low; map outputs fill > 60% of worker memory
    maps = np.concatenate([np.full(4, 1.0), np.full(1, 60.0)])
    r = sim.simulate_step(maps, np.full(5, 1.0), 5 * 8e9, 10e9, lambda: 1.0, adapt_max=100, tick_phase=0.5)
    assert r["peak_workers"] >= 4


def test_release_on_drain_frees_the_last_wave_without_slowing_the_step(sim):
    """10 reduce tasks on 8 workers: the second reduce wave needs 2 workers; with drain (the product's
    tasks.resources.cluster.drain rule, checked each second) the 6 idle ones go at once instead of at the end."""
    maps, reds = np.full(8, 10.0), np.full(10, 10.0)
    kw = dict(workers=8, standing=8, prewarm=8)
    plain = sim.simulate_step(maps, reds, 1e9, 16e9, lambda: 2.0, **kw)
    drained = sim.simulate_step(maps, reds, 1e9, 16e9, lambda: 2.0, drain=True, tick_phase=0.5, **kw)
    assert drained["wall_s"] == plain["wall_s"] == pytest.approx(30)
    assert plain["cost"] == pytest.approx(8 * 30)
    # all 8 workers standing: never released below that floor
    assert drained["released_on_drain"] == 0 and drained["cost"] == pytest.approx(plain["cost"])
    # one standing + 7 pre-warmed: at the drain check at t=20.5 two reduces are left, six idle workers go
    one = sim.simulate_step(maps, reds, 1e9, 16e9, lambda: 2.0, workers=8, standing=1, prewarm=8,
                            prewarm_lead=3.0, drain=True, tick_phase=0.5)
    assert one["wall_s"] == pytest.approx(30) and one["released_on_drain"] == 6
    assert one["cost"] == pytest.approx(8 * 20.5 + 2 * 9.5 + 7 * 3.0)  # + the pre-warm lead of 7 workers
    assert one["work_s"] == pytest.approx(180)


def test_startup_sweep_slow_starts_cost_adapt_more_and_no_policy_beats_the_floor(sim):
    """The start-up sweep on a small trace: a slower worker start-up costs adapt (which starts workers after
    load appears, and flaps) more than the pre-warmed forecast cluster; no policy bills below the work floor."""
    import argparse

    args = argparse.Namespace(sim_intervals=14, seed=7, sim_max_workers=40, sim_worker_memory=16 << 30,
                              sim_deadline=0.0, drain=True)
    cal = {"lfmap": {"s_per_byte": 5e-8, "sigma": 0.25}, "lfreduce": {"s_per_byte": 3.4e-8, "sigma": 0.25},
           "map_output_per_input_byte": 5.0, "startups_s": [1.6, 2.0, 2.1, 1.9]}
    fast, slow = (sim.startup_sweep_point(args, cal, s) for s in (1.0, 60.0))
    assert slow["cost_ratio_vs_adapt"] < fast["cost_ratio_vs_adapt"]
    assert slow["floor_vs_adapt"] < fast["floor_vs_adapt"]
    for p in (fast, slow):
        assert p["floor_vs_adapt"] <= p["floor_plus_forecast_startups_vs_adapt"] <= p["cost_ratio_vs_adapt"]
        assert p["cost_target_met"] == (p["cost_ratio_vs_adapt"] <= 0.8 and p["misses"][0] <= p["misses"][1])
    # measured start-ups are drawn as given (the gateway scenario): their median is the scenario's
    assert sim.sim_part(args, cal, startups=[0.7, 0.8, 0.9])["startup_s_median"] == pytest.approx(0.8)
