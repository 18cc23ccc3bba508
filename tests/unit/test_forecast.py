"""Forecasts fitted with scikit-learn on synthetic-but-physical histories, and the plan step functions."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.context import StepContext
from tasks.resources import forecast, history


def amdahl(b, w, t=1, overhead=4.0, rate=2e8, serial=5e-10, per_worker=0.3):
    """The 'true' cost of a run: overhead + parallel part + serial part + coordination."""
    return overhead + b / (rate * w * t) + serial * b + per_worker * w


def _history(n=30, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        b, w = float(rng.uniform(1e9, 2e10)), int(rng.integers(1, 17))
        rows.append(dict(success=True, input_bytes=b, workers=w, threads=1,
                         wall_s=amdahl(b, w) * float(rng.lognormal(0, noise)),
                         peak_memory_per_worker=(3e8 + 0.5 * b / w) * float(rng.lognormal(0, noise))))
    return rows


def test_forecaster_learns_scaling_and_bounds_it():
    f = forecast.Forecaster.fit(_history())
    sizes = np.array([1, 4, 16, 64])
    est = f.predict(8e9, sizes, 1)
    truth = amdahl(8e9, sizes)
    assert np.all(np.abs(est["wall_s"] - truth) / truth < 0.15)  # including 64 workers, never seen in history
    assert np.all(est["wall_s_upper"] >= est["wall_s"])
    assert np.all(np.diff(est["wall_s"][:3]) < 0)  # more workers -> faster while the parallel part dominates
    mem_truth = 3e8 + 0.5 * 8e9 / sizes
    assert np.all(np.abs(est["peak_memory"] - mem_truth) / mem_truth < 0.15)
    # the upper bound covers most fresh runs from the same process
    fresh = _history(200, seed=1)
    up = np.array([f.predict(r["input_bytes"], [r["workers"]], 1)["wall_s_upper"][0] for r in fresh])
    coverage = np.mean([r["wall_s"] <= u for r, u in zip(fresh, up, strict=True)])
    assert coverage >= 0.8


def test_plan_is_smallest_size_meeting_deadline():
    rows = _history()
    plan = forecast.make_plan(rows, 1e10, deadline_s=40, max_workers=32, memory_per_worker=16 << 30)
    assert plan.source == "forecast" and "30 runs" in plan.reason
    f = forecast.Forecaster.fit(rows)
    up = f.predict(1e10, [plan.workers - 1, plan.workers], 1)["wall_s_upper"]
    assert up[1] <= 40 < up[0]
    assert plan.predicted["wall_s_upper"] == pytest.approx(up[1], rel=1e-3)
    # a tighter memory budget needs more workers than the deadline alone does
    tight = forecast.make_plan(rows, 1e10, deadline_s=40, max_workers=32, memory_per_worker=900_000_000)
    assert tight.workers > plan.workers
    assert tight.predicted["peak_memory_upper"] <= forecast.MEMORY_FRACTION * 900_000_000  # headroom before spill


def test_impossible_deadline_uses_fastest_size_and_says_so():
    plan = forecast.make_plan(_history(), 1e10, deadline_s=1, max_workers=8, memory_per_worker=64 << 30,
                              fallback_tolerance=0.0)
    assert plan.workers == 8 and "cannot be met" in plan.reason
    # by default: the smallest size within 10% of the fastest one's upper wall time
    near = forecast.make_plan(_history(), 1e10, deadline_s=1, max_workers=8, memory_per_worker=64 << 30)
    up = forecast.Forecaster.fit(_history()).predict(1e10, np.arange(1, 9), 1)["wall_s_upper"]
    assert near.workers == 1 + int(np.flatnonzero(up <= 1.1 * up.min())[0]) < 8 and "cannot be met" in near.reason


def test_impossible_deadline_does_not_buy_workers_that_barely_help():
    """Runs on a box where more workers barely help (2 cores): 1..3 workers all miss the deadline at
    the upper bound, 3 workers only ~5% faster than 1. The plan takes the smallest size within 10% of
    the fastest, not 3x the workers for 5% less time; with no tolerance it takes the fastest."""
    rng = np.random.default_rng(8)

    def truth(b, w):
        return 1.0 + b / 1e7 * (1.0 + 0.05 / w)  # almost all of the work is serial

    rows = []
    for i in range(15):
        b, w = float(rng.uniform(5e7, 1e8)), 1 + i % 3
        rows.append(dict(success=True, input_bytes=b, workers=w, threads=1, wall_s=truth(b, w)))
    plan = forecast.make_plan(rows, 1e8, deadline_s=5, max_workers=3, memory_per_worker=64 << 30)
    assert plan.workers == 1 and "within 10% of the fastest" in plan.reason
    assert forecast.make_plan(rows, 1e8, deadline_s=5, max_workers=3, memory_per_worker=64 << 30,
                              fallback_tolerance=0.0).workers == 3


def test_heuristic_with_little_history():
    plan = forecast.make_plan(_history(3), 4e9, deadline_s=120, max_workers=64, partition_bytes=64 << 20,
                              memory_per_worker=64 << 30)
    assert plan.source == "heuristic" and "only 3 successful runs" in plan.reason
    need = forecast.HEURISTIC_OVERHEAD_S + 4e9 / (forecast.HEURISTIC_BYTES_PER_S * plan.workers)
    assert 1.5 * need <= 120
    assert 1.5 * (forecast.HEURISTIC_OVERHEAD_S + 4e9 / (forecast.HEURISTIC_BYTES_PER_S * (plan.workers - 1))) > 120
    # memory: the shuffle share (input / workers) drives the size when the budget is small
    small = forecast.make_plan([], 4e9, deadline_s=1e6, max_workers=64, memory_per_worker=2 << 30,
                               partition_bytes=16 << 20)
    share = forecast.HEURISTIC_BASE_MEMORY + forecast.HEURISTIC_MEMORY_FACTOR * 4e9 / small.workers
    assert share <= forecast.MEMORY_FRACTION * (2 << 30) and small.workers > 1 and "heuristic" == small.source


def test_memory_level_rises_after_runs_that_spilled_and_buys_the_worker_memory_needs():
    """The memory bound's level adapts like the wall bound's: model-planned runs whose peak went over the
    spill threshold (memory_fraction x their limit) raise it; a history that kept its promise plans at q0.9."""
    rows = [dict(r, plan_source="forecast", memory_limit=64 << 30) for r in _history(40, seed=3, noise=0.1)]
    spilled = [dict(r, memory_limit=r["peak_memory_per_worker"] / forecast.MEMORY_FRACTION / 1.05) if i >= 37 else r
               for i, r in enumerate(rows)]  # the last three peaked 5% over their spill threshold
    kept, broke = forecast.Forecaster.fit(rows), forecast.Forecaster.fit(spilled)
    assert (kept.mem_level, kept.mem_misses) == (forecast.QUANTILE, 0)
    assert broke.mem_misses == 3 and broke.mem_level == pytest.approx(forecast.MAX_LEVEL)
    assert broke.mem.upper_ratio == pytest.approx(max(broke.mem.loo_ratios))  # q0.99 of < 99 runs: the largest
    # one spill takes the level to the cap; the covered runs after it bring it back (0.01 each)
    early = [dict(r, memory_limit=r["peak_memory_per_worker"] / forecast.MEMORY_FRACTION / 1.05) if i == 0 else r
             for i, r in enumerate(rows)]
    assert forecast.memory_level(early[:1], 0.9) == (pytest.approx(forecast.MAX_LEVEL), 1)
    assert forecast.memory_level(early[:6], 0.9)[0] == pytest.approx(0.94)
    assert forecast.memory_level(early, 0.9) == (pytest.approx(0.9), 1)
    # the heuristic's guesses are not what is calibrated: their spills do not count
    guessed = [dict(r, plan_source="heuristic") if i >= 37 else r for i, r in enumerate(spilled)]
    assert forecast.Forecaster.fit(guessed).mem_level == forecast.QUANTILE
    kw = dict(deadline_s=1e4, max_workers=64, memory_per_worker=2 << 30)  # memory, not time, sizes it
    plan, raised = forecast.make_plan(rows, 1e10, **kw), forecast.make_plan(spilled, 1e10, **kw)
    assert raised.workers > plan.workers
    assert "3 run(s) peaked over the spill threshold" in raised.reason and "peaked over" not in plan.reason
    # held out: fresh runs of the same process at each plan's size, over the spill threshold
    budget = forecast.MEMORY_FRACTION * (2 << 30)
    noise = np.random.default_rng(11).lognormal(0, 0.1, 400)
    over = {name: float(np.mean((3e8 + 0.5 * 1e10 / p.workers) * noise > budget))
            for name, p in (("q0.9", plan), ("raised", raised))}
    assert over["raised"] < 0.03 < over["q0.9"]


def test_bad_plan_inputs_are_named():
    with pytest.raises(ValueError, match="deadline_s"):
        forecast.make_plan([], 1e9, deadline_s=0)
    with pytest.raises(ValueError, match="min_workers"):
        forecast.make_plan([], 1e9, deadline_s=10, min_workers=5, max_workers=2)
    with pytest.raises(ValueError, match="forecast_memory_quantile"):
        forecast.make_plan([], 1e9, deadline_s=10, memory_quantile=1.0)


def _series(n, start=date(2026, 9, 1), spike_at=None):
    out = []
    for i in range(n):
        d = start + timedelta(days=i)
        v = 1e9 * (1 + 0.01 * i) * (0.5 if d.weekday() >= 5 else 1.0)
        if i == spike_at:
            v *= 6
        out.append((d.isoformat(), v))
    return out


def test_volume_forecast_trend_and_weekly_season_robust_to_spike():
    s = _series(29, spike_at=20)
    for k in range(1, 8):  # predict each of the next 7 days
        d = date(2026, 9, 1) + timedelta(days=28 + k)
        truth = 1e9 * (1 + 0.01 * (28 + k)) * (0.5 if d.weekday() >= 5 else 1.0)
        pred, how = forecast.forecast_volume(s, d.isoformat())
        assert abs(pred - truth) / truth < 0.1, (d, pred, truth)
    assert "day-of-week" in how
    with pytest.raises(ValueError, match="no past interval"):
        forecast.forecast_volume([], "2026-11-01")


def _write_raw(ctx, n_files=2, rows=5000):
    d = ctx.lake.interval_dir("raw", ctx.dataset, ctx.ds)
    ctx.lake.fs.makedirs(d, exist_ok=True)
    for i in range(n_files):
        pq.write_table(pa.table({"x": np.arange(rows) + i}), f"{d}/part-{i}.parquet")
    return sum(ctx.lake.fs.size(p) for p in ctx.lake.raw_files(ctx.dataset, ctx.ds))


def test_run_plan_clean_sizes_from_raw_and_records_plan(lf_home):
    ctx = StepContext(dataset="events", ds="2026-11-10", params={"deadline_s": 600, "max_workers": 4})
    size = _write_raw(ctx)
    out = forecast.run_plan_clean(ctx)
    assert out["input_bytes"] == size and out["partitions"] == 2 and out["source"] == "heuristic"
    assert 1 <= out["workers"] <= 4
    (row,) = history.plan_rows(ctx.history_url, "clean", "events")
    assert row["workers"] == out["workers"] and row["input_bytes"] == size
    history.dispose()


def test_run_plan_clean_forecasts_volume_before_data_lands(lf_home):
    ctx = StepContext(dataset="events", ds="2026-11-30", params={"deadline_s": 60, "max_workers": 16})
    for ds, v in _series(29, start=date(2026, 11, 1)):
        history.record_run(ctx.history_url, stage="clean", dataset="events", ds=ds, wall_s=5.0, success=True,
                           input_bytes=v, workers=2, threads=1)
    out = forecast.run_plan_clean(ctx)
    assert "not landed" in out["reason"] and out["partitions"] == 0
    assert out["input_bytes"] == pytest.approx(1e9 * 1.29, rel=0.1)  # 2026-11-30 is a Monday
    history.dispose()


def test_run_plan_train_device_and_nproc(lf_home):
    import torch

    ctx = StepContext(dataset="events", ds="2026-11-10", params={"train_nproc": 3})
    _write_raw(ctx, n_files=1)
    out = forecast.run_plan_train(ctx)
    assert out["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert out["nproc"] == out["workers"] == 3 and out["source"] == "param"
    assert "no split manifest" in out["reason"]
    with pytest.raises(ValueError, match="train_nproc"):
        forecast.run_plan_train(StepContext(dataset="events", ds="2026-11-10", params={"train_nproc": "x"}))
    history.dispose()


def test_narrow_size_history_falls_back_to_conservative_parallel_scaling():
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(12):  # every run on 200..235 workers: overhead and parallel terms are collinear
        b, w = float(rng.uniform(5e11, 7e11)), int(rng.integers(200, 236))
        rows.append(dict(success=True, input_bytes=b, workers=w, threads=1, wall_s=amdahl(b, w, per_worker=0.0)))
    f = forecast.Forecaster.fit(rows)
    assert not f.full and f.sizes_seen[0] >= 200
    small = np.array([20, 50, 100])
    est = f.predict(6e11, small, 1)
    assert np.all(est["wall_s"] >= amdahl(6e11, small, per_worker=0.0))  # errs towards meeting the deadline
    plan = forecast.make_plan(rows, 6e11, deadline_s=900, max_workers=1000, memory_per_worker=64 << 30)
    assert amdahl(6e11, plan.workers, per_worker=0.0) <= 900 and "pure parallel" in plan.reason


def test_one_size_with_varied_inputs_keeps_the_fixed_overhead():
    """A step always run on one size (the plan's choice) but on inputs of 0.5x..1.5x: the overhead is
    identifiable from the input sizes alone, so small intervals are not predicted as if it scaled away."""
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(12):
        b = float(rng.uniform(3e9, 9e9))
        rows.append(dict(success=True, input_bytes=b, workers=1, threads=1,
                         wall_s=amdahl(b, 1, serial=0.0, per_worker=0.0) * float(rng.lognormal(0, 0.02))))
    f = forecast.Forecaster.fit(rows)
    assert not f.full and f.mode == "bytes"
    for b in (3e9, 6e9, 9e9):
        truth = amdahl(b, 1, serial=0.0, per_worker=0.0)
        assert abs(f.predict(b, [1], 1)["wall_s"][0] - truth) / truth < 0.05
    plan = forecast.make_plan(rows, 6e9, deadline_s=60, max_workers=4, memory_per_worker=64 << 30)
    assert "overhead + parallel" in plan.reason
    # the same history at one input size cannot separate the two: pure parallel scaling
    same = [dict(r, input_bytes=6e9) for r in rows]
    assert forecast.Forecaster.fit(same).mode == "parallel"


def _alternating_runs(truth, n: int, size_range: tuple[float, float], noise: float, seed: int) -> list[dict]:
    """n successful runs of uniform input sizes on 1, 2, 1, 2... workers, wall = truth(bytes, workers) x noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        b, w = float(rng.uniform(*size_range)), 1 + i % 2
        rows.append(dict(success=True, input_bytes=b, workers=w, threads=1,
                         wall_s=truth(b, w) * float(rng.lognormal(0, noise))))
    return rows


def test_two_sizes_measure_how_much_work_is_serial():
    """Runs on 1 and 2 workers where only ~40% of the work runs in parallel (e.g. more workers than
    cores): with two sizes the serial share is fitted, so 2 workers are not predicted twice as fast."""
    def truth(b, w):
        return 1.0 + 0.4 * b / 1e8 / w + 0.6 * b / 1e8

    rows = _alternating_runs(truth, 10, (0.7e9, 1.6e9), noise=0.02, seed=4)
    f = forecast.Forecaster.fit(rows)
    assert f.mode == "amdahl"
    for w in (1, 2):
        assert abs(f.predict(1.5e9, [w], 1)["wall_s"][0] - truth(1.5e9, w)) / truth(1.5e9, w) < 0.06
    plan = forecast.make_plan(rows, 1.5e9, deadline_s=30, max_workers=2, memory_per_worker=64 << 30)
    assert "serial" in plan.reason


def test_wave_model_wins_when_tasks_run_in_whole_waves():
    """Runs of 5..20 equal tasks on 1..4 workers: wall = overhead + ceil(tasks/workers) x task time.
    With the partitions recorded the wave model beats the smooth one on leave-one-out error and
    predicts a half-empty last wave as a whole one; without partitions the smooth model stays."""
    rng = np.random.default_rng(6)
    per_task_bytes = 2.5e8

    def truth(p, w):
        return 2.0 + np.ceil(p / w) * per_task_bytes / 1e8

    rows = []
    for _ in range(24):
        p, w = int(rng.integers(5, 21)), int(rng.integers(1, 5))
        rows.append(dict(success=True, input_bytes=p * per_task_bytes, workers=w, threads=1, partitions=p,
                         wall_s=float(truth(p, w)) * float(rng.lognormal(0, 0.02))))
    f = forecast.Forecaster.fit(rows)
    assert f.waves and f.waves_loo_mape < f.smooth_loo_mape
    for p, w in ((9, 4), (12, 4), (13, 3), (7, 2)):
        got = f.predict(p * per_task_bytes, [w], 1, partitions=p)["wall_s"][0]
        assert abs(got - truth(p, w)) / truth(p, w) < 0.05
    # tasks not given: estimated from the history's bytes per partition
    assert f.tasks_for(9 * per_task_bytes) == 9
    plan = forecast.make_plan(rows, 9 * per_task_bytes, deadline_s=2.0 + 3 * 2.5 * 1.2, max_workers=8,
                              memory_per_worker=64 << 30, partitions=9)
    assert plan.workers == 3 and "wave model" in plan.reason  # 3 waves of 3; 4 workers would still need 3
    smooth = forecast.Forecaster.fit([{k: v for k, v in r.items() if k != "partitions"} for r in rows])
    assert not smooth.waves and smooth.waves_loo_mape is None


def test_local_plan_is_capped_at_the_host_cpus():
    """Workers of a local cluster share one host: the plan never asks for more worker processes than the
    host's CPUs / threads per worker, even when the fitted scaling says more would be faster."""
    rows = _history()
    free = forecast.make_plan(rows, 1e10, deadline_s=20, max_workers=32, memory_per_worker=64 << 30)
    assert free.workers > 2  # the deadline wants a larger cluster ...
    capped = forecast.make_plan(rows, 1e10, deadline_s=20, max_workers=32, memory_per_worker=64 << 30, host_cpus=2)
    assert capped.workers <= 2 and "capped at 2 workers" in capped.reason and "2 CPUs" in capped.reason
    two_threads = forecast.make_plan(rows, 1e10, deadline_s=20, max_workers=32, memory_per_worker=64 << 30,
                                     threads_per_worker=2, host_cpus=4)
    assert two_threads.workers <= 2 and "capped at 2 workers" in two_threads.reason
    # a host larger than max_workers changes nothing; min_workers is never undercut
    assert forecast.make_plan(rows, 1e10, deadline_s=20, max_workers=32, memory_per_worker=64 << 30,
                              host_cpus=256).workers == free.workers
    assert forecast.make_plan(rows, 1e10, deadline_s=20, min_workers=3, max_workers=32,
                              memory_per_worker=64 << 30, host_cpus=2).workers == 3


def test_run_plan_clean_on_the_local_backend_knows_the_host(lf_home):
    from tasks.resources.cluster.local import host_cpus

    ctx = StepContext(dataset="events", ds="2026-11-10",
                      params={"deadline_s": 1, "max_workers": host_cpus() + 4, "heuristic_overhead_s": 0,
                              "heuristic_bytes_per_s": 1})
    _write_raw(ctx)
    out = forecast.run_plan_clean(ctx)
    assert out["workers"] <= host_cpus() and f"capped at {host_cpus()} workers" in out["reason"]
    gw = StepContext(dataset="events", ds="2026-11-10", cluster={"backend": "address", "address": "tcp://x:1"},
                     params={"deadline_s": 1, "max_workers": host_cpus() + 4, "heuristic_overhead_s": 0,
                             "heuristic_bytes_per_s": 1})
    assert "capped" not in forecast.run_plan_clean(gw)["reason"]  # another host's workers: no cap
    history.dispose()


def test_heuristic_overhead_is_a_param():
    """A throughput measured end-to-end (input / wall of a whole run) already holds the overhead: with
    heuristic_overhead_s=0 one worker that processes the input in 10 s meets a 20 s deadline (upper 15 s);
    the default 10 s overhead on top would buy a second worker."""
    kw = dict(deadline_s=20, max_workers=4, memory_per_worker=64 << 30, heuristic_bytes_per_s=1e8)
    assert forecast.make_plan([], 1e9, heuristic_overhead_s=0.0, **kw).workers == 1
    default = forecast.make_plan([], 1e9, **kw)
    assert default.workers > 1 and f"{forecast.HEURISTIC_OVERHEAD_S:g}s +" in default.reason
    with pytest.raises(ValueError, match="heuristic_overhead_s"):
        forecast.make_plan([], 1e9, heuristic_overhead_s=-1.0, **kw)


def test_an_extrapolated_outlier_does_not_widen_the_bound_of_ordinary_inputs():
    """Ordinary runs (1.0..1.5 GB on 1-2 workers, 3% noise) and one 4 GB spike that took 1.8x what the
    model extrapolates (its shuffle grows faster than its bytes). The spike's leave-one-out ratio is an
    extrapolation error: an ordinary input keeps the narrow bound (and one worker), an input beyond the
    history's range gets the wide one."""
    def truth(b, w):
        return 1.0 + 0.5 * b / 1e8 / w + 0.5 * b / 1e8

    rows = _alternating_runs(truth, 16, (1.0e9, 1.5e9), noise=0.03, seed=8)
    rows.append(dict(success=True, input_bytes=4e9, workers=2, threads=1, wall_s=1.8 * truth(4e9, 2)))
    f = forecast.Forecaster.fit(rows)
    assert f.wall.upper_ratio_inside < 1.2 and f.wall.upper_ratio > 1.5
    ordinary = f.predict(1.3e9, [1, 2], 1)
    assert np.all(ordinary["wall_s_upper"] / ordinary["wall_s"] < 1.2)
    beyond = f.predict(4.5e9, [2], 1)
    assert beyond["wall_s_upper"][0] / beyond["wall_s"][0] > 1.5
    # one worker meets the deadline with the narrow bound; the spike's ratio would have bought a second
    plan = forecast.make_plan(rows, 1.3e9, deadline_s=1.25 * truth(1.3e9, 1), max_workers=2,
                              memory_per_worker=64 << 30)
    assert plan.workers == 1 and "within the history's input and cluster sizes" in plan.reason


def test_bound_level_adapts_to_runs_that_exceeded_their_bound():
    """Adaptive conformal: each run slower than its predicted upper bound raises the level, covered runs
    bring it back to the configured quantile and never below; misses count in their own region."""
    def run(b, wall, upper=12.0, w=1):
        return dict(success=True, input_bytes=b, workers=w, wall_s=wall, predicted_wall_s_upper=upper,
                    plan_source="forecast")

    edges = [run(1e8, 10.0, upper=None), run(9e8, 10.0, upper=None)]  # the range later runs fall inside
    covered = [run(5e8, 10.0)] * 5
    missed = [run(5e8, 13.0)]
    levels = forecast.adaptive_levels
    assert (levels(edges + covered, 0.9).inside, levels(edges + covered, 0.9).misses_inside) == (0.9, 0)
    assert levels(edges + missed, 0.9).inside == pytest.approx(0.945)
    two = levels(edges + covered + missed * 2, 0.9)
    assert (two.inside, two.misses_inside, two.beyond) == (pytest.approx(0.99), 2, 0.9)
    assert levels(edges + covered + missed * 5, 0.9).inside == pytest.approx(forecast.MAX_LEVEL)
    assert levels(edges + covered + missed + covered * 2, 0.9).inside == pytest.approx(0.9)
    # a spike (3x the largest input so far) that blew its bound raises only the level of extrapolations
    spike = levels(edges + covered + [run(27e8, 40.0)] + covered, 0.9)
    assert (spike.inside, spike.beyond, spike.misses_beyond) == (0.9, pytest.approx(0.945), 1)
    # the no-history heuristic's bound is not the one calibrated: its misses do not count
    guess = [{**r, "plan_source": "heuristic"} for r in missed * 3]
    assert levels(edges + guess + covered, 0.9).misses_inside == 0
    assert levels(edges + [{**missed[0], "plan_source": "forecast"}], 0.9).misses_inside == 1
    # a run made without a plan (no plan_source) had no bound to calibrate
    assert levels(edges + [{**missed[0], "plan_source": None}], 0.9).misses_inside == 0
    # a cluster size never tried before is an extrapolation too
    assert levels(edges + [run(5e8, 13.0, w=4)], 0.9).misses_beyond == 1


def test_drift_raises_the_bound_and_buys_the_worker_the_deadline_needs():
    """The host got 30% slower: the last run exceeded the bound its plan predicted. A history that records
    that miss plans as if such runs will recur; the same runs without the record treat the slow one as
    the 1-in-30 outlier the q0.9 bound may leave out."""
    def truth(b, w):
        return 1.0 + 0.5 * b / 1e8 / w + 0.5 * b / 1e8

    rows = _alternating_runs(truth, 30, (0.7e9, 1.6e9), noise=0.02, seed=9)
    for r in rows:
        r.update(predicted_wall_s_upper=r["wall_s"] * 1.1, plan_source="forecast")
    rows[-1]["wall_s"] *= 1.3 / 1.1  # drift: 30% slower than its run's truth, above its bound
    kw = dict(max_workers=2, memory_per_worker=64 << 30)
    calm = [{k: v for k, v in r.items() if k != "predicted_wall_s_upper"} for r in rows]
    b = 1.2e9
    base = forecast.make_plan(calm, b, deadline_s=1e6, **kw)
    drifted = forecast.make_plan(rows, b, deadline_s=1e6, **kw)
    assert drifted.predicted["wall_s_upper"] > 1.1 * base.predicted["wall_s_upper"]
    assert drifted.predicted["wall_s"] == base.predicted["wall_s"]  # the point forecast is the same model
    assert "levels raised from q0.9 (adaptive conformal): 1 run(s) within" in drifted.reason
    assert "upper = q0.945" in drifted.reason
    # a deadline between the two 1-worker bounds: only the drift-aware plan pays for the second worker
    deadline = (base.predicted["wall_s_upper"] + drifted.predicted["wall_s_upper"]) / 2
    assert forecast.make_plan(calm, b, deadline_s=deadline, **kw).workers == 1
    assert forecast.make_plan(rows, b, deadline_s=deadline, **kw).workers == 2
