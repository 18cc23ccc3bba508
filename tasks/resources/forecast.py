"""Resource forecasts: how big a cluster a step needs, from its run history (scikit-learn).

Three models, each small enough to fit on a handful of runs:

- **Wall time** ``wall = a + b * bytes/(workers*threads) + c * bytes + d * workers``: an
  Amdahl-style model (fixed overhead, parallel work, serial work, per-worker coordination),
  fitted by ``LinearRegression(positive=True)`` weighted by ``1/wall^2`` so it minimises
  *relative* error. Non-negative coefficients keep it monotone and sane when extrapolating
  to cluster sizes never tried. Terms the history cannot identify yet are left out (see
  ``Forecaster``). The upper bound multiplies by a quantile of the
  leave-one-out actual/predicted ratios (a split-conformal style bound: honest with few runs),
  calibrated separately for queries within the history's input and cluster sizes (interpolation
  ratios) and beyond them (all ratios), see ``_RatioModel``. The quantile's level adapts online to
  how often recent runs exceeded the bound their plan predicted (adaptive conformal inference,
  ``adaptive_levels``): the leave-one-out bound assumes past runs are exchangeable with the next
  one, which a drifting machine breaks. Its level too is kept per region.
  When the history records each run's partitions (tasks per phase), a **wave model** competes:
  the parallel term becomes ``ceil(partitions/(workers*threads)) * bytes/partitions`` (a step runs
  its tasks in waves; the last wave costs a whole task even if it is half empty). It replaces the
  smooth term only when its leave-one-out MAPE is lower.
- **Peak memory per worker** ``mem = e + f * bytes/workers + g * bytes/(workers*threads)``,
  same fitting and upper bound. Its level (setting ``forecast_memory_quantile``) adapts
  as the wall's does, to the plans' memory promise: a model-planned run whose peak went over the spill
  threshold (``memory_fraction`` x its memory limit) raises it (``memory_level``), by a larger step than
  the wall's: one spill takes it to the cap, and covered runs bring it back over ~10 runs (a fixed high
  level would buy workers for every run of a worker whose memory creeps up between runs).
- **Input volume** of the next interval: ``HuberRegressor`` on log bytes with a linear trend and
  day-of-week terms (robust to a one-off spike), so a cluster can be warmed before data lands.

A plan is the smallest worker count in ``[min_workers, max_workers]`` whose *upper* wall time
meets ``deadline_s`` and whose upper peak memory fits ``memory_per_worker``. When the workers share
one host (the ``local`` backend: a LocalCluster of worker processes inside the task) the sizes are
also capped at the host's CPUs / threads per worker (``host_cpus``): a worker process beyond the
cores adds no throughput, only contention, and a model fitted on few sizes cannot be trusted to
know that. With fewer than
``min_history`` successful runs the plan uses the documented heuristic below and says so
(``source="heuristic"``, ``reason``).

Heuristic (no or little history): each worker thread processes ``HEURISTIC_BYTES_PER_S``
bytes of Parquet input per second after ``HEURISTIC_OVERHEAD_S`` of start-up (both Params:
``heuristic_bytes_per_s``, ``heuristic_overhead_s``; a throughput measured end-to-end, input / wall
of one whole run, already includes the overhead, so it goes with ``heuristic_overhead_s=0``: adding
the default overhead on top would count it twice and buy workers the step does not need), and needs
``HEURISTIC_MEMORY_FACTOR`` x the size of one partition per thread in memory (a Parquet partition
expands several-fold once decoded into pandas and copied by the cleaning steps) plus
``HEURISTIC_BASE_MEMORY`` for the worker process itself; when a shuffle spreads the input
over the workers, each holds ``HEURISTIC_MEMORY_FACTOR`` x its share (input / workers) instead,
if that is larger.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
from sklearn.linear_model import HuberRegressor, LinearRegression

from tasks.resources import history
from tasks.resources.cluster import ClusterPlan, backend_for

log = logging.getLogger(__name__)

HEURISTIC_BYTES_PER_S = 16 << 20  # per worker thread, Parquet bytes in
HEURISTIC_OVERHEAD_S = 10.0
HEURISTIC_MEMORY_FACTOR = 6.0
HEURISTIC_BASE_MEMORY = 256 << 20
DEFAULT_PARTITION_BYTES = 64 << 20
MIN_HISTORY = 5
MEMORY_FRACTION = 0.7  # distributed.worker.memory.spill
QUANTILE = 0.9
ADAPT_GAMMA = 0.05  # adaptive conformal step: one miss raises the level by 0.05 x (1 - miss rate target)
# the memory bound's step: one spill takes its level from q0.9 to the cap at once. A spill slows the step and
# nears OOM, while the memory bound costs workers only in the intervals where memory sizes the cluster
MEMORY_ADAPT_GAMMA = 0.1
MAX_LEVEL = 0.99
FALLBACK_TOLERANCE = 0.10  # deadline out of reach: accept this much more (upper) wall time than the fastest size


def _wall_features(input_bytes: np.ndarray, workers: np.ndarray, threads: np.ndarray, full: bool | str,
                   partitions: np.ndarray | None = None) -> np.ndarray:
    """Columns of the wall-time model for `full` = True/"full", "amdahl" (overhead + parallel + serial),
    "bytes" (overhead + parallel) or False/"parallel".

    With `partitions` (tasks per phase) the parallel work is counted in waves: each of the
    ``ceil(partitions / (workers*threads))`` waves takes one task's share of the input, so 9 tasks on
    8 slots cost two waves, not 9/8 of one (the wave model)."""
    gb = input_bytes / 1e9  # scaled so coefficients are of similar magnitude
    if partitions is None:
        par = gb / (workers * threads)
    else:
        par = gb / partitions * np.ceil(partitions / (workers * threads))
    mode = ("full" if full else "parallel") if isinstance(full, bool) else full
    if mode == "parallel":  # sizes and input sizes too alike to separate overhead from parallel work
        return np.column_stack([par])
    if mode == "amdahl":  # two cluster sizes, varied input sizes: no per-worker term
        return np.column_stack([np.ones_like(gb), par, gb])
    if mode == "bytes":  # one cluster size, varied input sizes: fixed overhead + parallel work
        return np.column_stack([np.ones_like(gb), par])
    return np.column_stack([np.ones_like(gb), par, gb, workers])


def _mem_features(input_bytes: np.ndarray, workers: np.ndarray, threads: np.ndarray, full: bool) -> np.ndarray:
    gb = input_bytes / 1e9
    if not full:
        return np.column_stack([np.ones_like(gb), gb / workers])
    return np.column_stack([np.ones_like(gb), gb / workers, gb / (workers * threads)])


def sizes_identifiable(workers: np.ndarray) -> bool:
    """Enough spread in cluster size to fit how wall time scales with it (>= 3 sizes over >= 1.5x)."""
    return len(np.unique(workers)) >= 3 and float(workers.max()) >= 1.5 * float(workers.min())


def two_sizes(workers: np.ndarray) -> bool:
    """At least two cluster sizes, >= 1.5x apart: parallel and serial work can be told apart."""
    return len(np.unique(workers)) >= 2 and float(workers.max()) >= 1.5 * float(workers.min())


def wall_mode(input_bytes: np.ndarray, workers: np.ndarray) -> str:
    """Which wall-time terms the history can identify (see ``Forecaster``)."""
    if sizes_identifiable(workers):
        return "full"
    if not bytes_identifiable(input_bytes):
        return "parallel"
    return "amdahl" if two_sizes(workers) else "bytes"


def bytes_identifiable(input_bytes: np.ndarray) -> bool:
    """Enough spread in input size (>= 1.5x) to tell a fixed overhead from work that grows with the input."""
    return len(input_bytes) >= 3 and float(input_bytes.max()) >= 1.5 * float(input_bytes.min())


@dataclass
class AdaptiveLevels:
    """The wall bound's quantile levels after ``adaptive_levels``, per region, and the misses behind them."""

    inside: float  # for queries within the history's input and cluster sizes
    beyond: float  # for queries beyond them
    misses_inside: int = 0
    misses_beyond: int = 0


def adaptive_levels(rows: Sequence[history.StepRun | Mapping[str, Any]], quantile: float,
                    gamma: float = ADAPT_GAMMA) -> AdaptiveLevels:
    """The quantile levels for the next wall-time bound, adapted to the recorded runs that exceeded theirs.
    `rows`: the successful runs ``Forecaster.fit`` models, oldest first.

    Adaptive conformal inference (Gibbs & Candes, 2021) over the runs, oldest first, that recorded the
    upper wall time their plan predicted: ``alpha <- alpha + gamma * (target - miss)`` with target
    ``1 - quantile``. A run slower than its bound (the host got slower, a neighbour took its cores)
    raises the level by ``gamma * quantile``; each covered run lowers it by ``gamma * (1 - quantile)``,
    back to ``quantile`` and never below it, so a history that keeps its promises plans as before.
    Levels stay <= ``MAX_LEVEL`` (the conformal quantile of the ratios is then their largest). Only runs
    the fitted model planned (``plan_source="forecast"``) count: the no-history heuristic's bound
    (``"heuristic"``) is a guess, not the one being calibrated, and a run without a plan had no bound.
    As the bound itself (``_RatioModel``), the level is kept per region: a run whose input or cluster
    size lay beyond every earlier run's was an extrapolation, and its miss (a one-off spike) raises
    only the level of later extrapolations, not that of ordinary intervals."""
    target = 1.0 - quantile
    alpha = {True: target, False: target}
    misses = {True: 0, False: 0}
    lo = hi = None  # range of (input bytes, workers) over the earlier runs
    for r in history.as_runs(rows):
        x = np.array([float(r.input_bytes), float(r.workers)])
        upper = r.predicted_wall_s_upper
        # only the fitted model's bounds are calibrated here: the no-history heuristic's 1.5x is a guess
        if upper and r.plan_source == "forecast":
            inside = lo is not None and bool(np.all((lo <= x) & (x <= hi)))
            miss = float(r.wall_s) > float(upper)
            misses[inside] += miss
            alpha[inside] = _aci_step(alpha[inside], target, miss, gamma)
        lo, hi = (x, x) if lo is None else (np.minimum(lo, x), np.maximum(hi, x))
    return AdaptiveLevels(1.0 - alpha[True], 1.0 - alpha[False], misses[True], misses[False])


def _aci_step(alpha: float, target: float, miss: bool, gamma: float) -> float:
    """One adaptive conformal update of the miss rate ``alpha``, kept within [1 - MAX_LEVEL, target]."""
    return min(target, max(1.0 - MAX_LEVEL, alpha + gamma * (target - miss)))


def memory_level(rows: Sequence[history.StepRun | Mapping[str, Any]], quantile: float,
                 memory_fraction: float = MEMORY_FRACTION,
                 gamma: float = MEMORY_ADAPT_GAMMA) -> tuple[float, int]:
    """The peak-memory bound's level and the misses behind it: adaptive conformal inference, as
    ``adaptive_levels``, over the model-planned runs (oldest first) that recorded their memory limit.
    A miss is a run whose peak memory per worker went over ``memory_fraction`` x its limit: the plan's
    promise (peak under the spill threshold) was broken. One region: memory is not extrapolated by
    cluster size the way wall time is."""
    target = 1.0 - quantile
    alpha, misses = target, 0
    for r in history.as_runs(rows):
        limit, peak = float(r.memory_limit or 0), float(r.peak_memory_per_worker or 0)
        if limit > 0 and peak > 0 and r.plan_source == "forecast":
            miss = peak > memory_fraction * limit
            misses += miss
            alpha = _aci_step(alpha, target, miss, gamma)
    return 1.0 - alpha, misses


def _conformal_ratio(ratios: list[float], quantile: float) -> float:
    """The finite-sample conformal quantile of actual/predicted ratios (index ceil((n+1) q) / n), >= 1."""
    n = len(ratios)
    level = min(1.0, math.ceil((n + 1) * quantile) / n)
    return max(1.0, float(np.quantile(ratios, level)))


def _inside_others(cols: np.ndarray) -> np.ndarray:
    """Per run: does it lie within the range of the *other* runs on every column (input bytes, workers)?
    Its leave-one-out prediction was then an interpolation; otherwise an extrapolation."""
    n = len(cols)
    inside = np.zeros(n, bool)
    for i in range(n):
        others = np.delete(cols, i, axis=0)
        inside[i] = bool(np.all((others.min(axis=0) <= cols[i]) & (cols[i] <= others.max(axis=0))))
    return inside


class _RatioModel:
    """Non-negative linear model (no free intercept: the overhead is a non-negative feature
    coefficient) fitted for relative error, with a leave-one-out actual/predicted ratio quantile.

    The bound is calibrated per region (Mondrian-style conformal): a held-out run outside the range of
    the others (the largest input, a cluster size tried once) measures the model's *extrapolation*
    error; one inside measures its interpolation error. A query inside the history's range gets the
    quantile of the interpolation ratios (when >= ``MIN_REGION_RUNS`` of them), a query beyond it the
    larger of both. One extrapolated outlier (say a 3x spike whose shuffle cost grows faster than its
    bytes) then no longer widens the bound, and buys workers, for every ordinary interval after it;
    a query that extrapolates still carries it."""

    MIN_REGION_RUNS = 5

    def __init__(self, quantile: float, inside_quantile: float | None = None):
        self.quantile = quantile  # level of the bound beyond the history's range
        self.inside_quantile = quantile if inside_quantile is None else inside_quantile
        self.model = LinearRegression(positive=True, fit_intercept=False)
        self.upper_ratio = 1.0  # the bound beyond the history's range (all leave-one-out ratios)
        self.upper_ratio_inside = 1.0  # the bound within it (interpolation ratios only)
        self.floor = 1e-6
        self.region: np.ndarray | None = None
        self.loo_ape: list[float] = []
        self.loo_ratios: list[float] = []  # actual / predicted on held-out runs
        self.loo_inside: list[bool] = []

    def fit(self, x: np.ndarray, y: np.ndarray, region: np.ndarray | None = None) -> _RatioModel:
        """`region`: per-run columns (e.g. input bytes, workers) whose range tells interpolation from
        extrapolation; without it every ratio calibrates every query."""
        w = 1.0 / np.maximum(y, 1e-9) ** 2
        self.floor = 0.05 * float(y.min())  # no run is predicted faster than a small share of the fastest seen
        self.model.fit(x, y, sample_weight=w)
        ratios: list[float] = []
        if len(y) >= 3:
            for i in range(len(y)):  # leave-one-out: the bound is judged on runs it did not see
                keep = np.arange(len(y)) != i
                m = LinearRegression(positive=True, fit_intercept=False).fit(x[keep], y[keep], sample_weight=w[keep])
                pred = max(float(m.predict(x[i : i + 1])[0]), self.floor)
                ratios.append(float(y[i]) / pred)
        else:
            ratios = list(y / np.maximum(self.model.predict(x), self.floor))
        self.loo_ratios = ratios
        self.loo_ape = [abs(1.0 / r - 1.0) for r in ratios]
        self.upper_ratio = _conformal_ratio(ratios, self.quantile)
        # too few interpolation ratios of their own: all ratios, at the higher of the two levels
        self.upper_ratio_inside = _conformal_ratio(ratios, max(self.quantile, self.inside_quantile))
        if region is not None and len(y) >= 3:
            self.region = np.asarray(region, float)
            self.loo_inside = [bool(v) for v in _inside_others(self.region)]
            inside = [r for r, ok in zip(ratios, self.loo_inside, strict=True) if ok]
            if len(inside) >= self.MIN_REGION_RUNS:
                self.upper_ratio_inside = _conformal_ratio(inside, self.inside_quantile)
                self.upper_ratio = max(self.upper_ratio, self.upper_ratio_inside)
        return self

    def inside(self, region: np.ndarray) -> np.ndarray:
        """Per query row: within the fitted history's range on every region column?"""
        q = np.atleast_2d(np.asarray(region, float))
        if self.region is None:
            return np.zeros(len(q), bool)
        return np.all((self.region.min(axis=0) <= q) & (q <= self.region.max(axis=0)), axis=1)

    def predict(self, x: np.ndarray, region: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        pred = np.maximum(self.model.predict(x), self.floor)
        ratio = np.full(len(pred), self.upper_ratio)
        if region is not None:
            ratio = np.where(self.inside(region), self.upper_ratio_inside, self.upper_ratio)
        return pred, pred * ratio


@dataclass
class Forecaster:
    """Wall time and peak memory per worker for a stage, fitted on its successful runs.

    Each term is fitted only when the history can identify it (``wall_mode``): the per-worker
    term needs >= 3 cluster sizes over >= 1.5x (``sizes_identifiable``, mode ``"full"``). With
    two sizes >= 1.5x apart and input sizes varying >= 1.5x the model is
    ``a + b * bytes/(workers*threads) + c * bytes`` (mode ``"amdahl"``: how much of the work
    really runs in parallel is measured, e.g. when more workers than cores cannot help). With
    one size but varied inputs it keeps the fixed overhead, ``a + b * bytes/(workers*threads)``
    (mode ``"bytes"``): a run of half the input is not predicted to take half the time.
    Otherwise it falls back to pure parallel scaling ``b * bytes/(workers*threads)`` (mode
    ``"parallel"``). The last two overestimate the wall time when they shrink a cluster,
    erring towards meeting the deadline.
    """

    wall: _RatioModel | None = None
    mem: _RatioModel | None = None
    n_runs: int = 0
    full: bool = True
    mode: str = "full"
    sizes_seen: tuple[int, int] = (0, 0)
    waves: bool = False  # the wall model counts parallel work in waves of tasks (see _wall_features)
    bytes_per_partition: float = 0.0  # median over the history: tasks of an input whose count is not given
    smooth_loo_mape: float | None = None  # leave-one-out MAPE of the smooth model, when the wave model competed
    waves_loo_mape: float | None = None
    levels: AdaptiveLevels | None = None  # the wall bound's quantile levels (adaptive_levels)
    mem_level: float = QUANTILE  # the memory bound's level (memory_level)
    mem_misses: int = 0

    @classmethod
    def fit(cls, rows: Sequence[history.StepRun | Mapping[str, Any]], quantile: float = QUANTILE,
            memory_quantile: float | None = None, memory_fraction: float = MEMORY_FRACTION) -> Forecaster:
        """Fit on `rows`: the stage's runs (``history.runs``, or mappings of ``StepRun``'s field names)."""
        ok = [r for r in history.as_runs(rows) if r.success and r.wall_s > 0 and r.input_bytes > 0 and r.workers > 0]
        f = cls(n_runs=len(ok))
        if not ok:
            return f
        f.levels = lv = adaptive_levels(ok, quantile)
        b = np.array([r.input_bytes for r in ok], float)
        w = np.array([r.workers for r in ok], float)
        t = np.array([max(r.threads or 1, 1) for r in ok], float)
        f.full = sizes_identifiable(w)
        f.mode = wall_mode(b, w)
        f.sizes_seen = (int(w.min()), int(w.max()))
        y = np.array([r.wall_s for r in ok], float)
        region = np.column_stack([b, w])  # interpolation vs extrapolation in input size and cluster size
        f.wall = _RatioModel(lv.beyond, lv.inside).fit(_wall_features(b, w, t, f.mode), y, region)
        parts = np.array([r.partitions or 0 for r in ok], float)
        if len(ok) >= 3 and parts.min() > 0:
            # the wave model competes with the smooth one on leave-one-out error; it must do strictly better
            f.bytes_per_partition = float(np.median(b / parts))
            waves = _RatioModel(lv.beyond, lv.inside).fit(_wall_features(b, w, t, f.mode, parts), y, region)
            f.smooth_loo_mape = float(np.mean(f.wall.loo_ape))
            f.waves_loo_mape = float(np.mean(waves.loo_ape))
            if f.waves_loo_mape < f.smooth_loo_mape:
                f.wall, f.waves = waves, True
        with_mem = [i for i, r in enumerate(ok) if (r.peak_memory_per_worker or 0) > 0]
        if len(with_mem) >= 3:
            idx = np.array(with_mem)
            mem_y = np.array([ok[i].peak_memory_per_worker for i in with_mem], float)
            f.mem_level, f.mem_misses = memory_level(ok, quantile if memory_quantile is None else memory_quantile,
                                                     memory_fraction)
            f.mem = _RatioModel(f.mem_level).fit(_mem_features(b[idx], w[idx], t[idx], f.full), mem_y)
        return f

    def tasks_for(self, input_bytes: float, partitions: int | None = None) -> int:
        """Tasks per phase of a run: `partitions` when known, else from the history's bytes per partition."""
        if partitions:
            return int(partitions)
        return max(1, math.ceil(float(input_bytes) / self.bytes_per_partition)) if self.bytes_per_partition else 1

    def predict(self, input_bytes: float, workers: np.ndarray | list[int], threads: int,
                partitions: int | None = None) -> dict[str, np.ndarray]:
        if self.wall is None:
            raise ValueError("forecaster has no fitted wall-time model (no successful runs in history)")
        w = np.asarray(workers, float)
        b = np.full_like(w, float(input_bytes))
        t = np.full_like(w, float(threads))
        p = np.full_like(w, float(self.tasks_for(input_bytes, partitions))) if self.waves else None
        wall, wall_up = self.wall.predict(_wall_features(b, w, t, self.mode, p), np.column_stack([b, w]))
        out = {"wall_s": wall, "wall_s_upper": wall_up}
        if self.mem is not None:
            mem, mem_up = self.mem.predict(_mem_features(b, w, t, self.full))
            out.update(peak_memory=mem, peak_memory_upper=mem_up)
        return out


def heuristic_estimate(input_bytes: float, workers: np.ndarray, threads: int, partition_bytes: float,
                       bytes_per_s: float = HEURISTIC_BYTES_PER_S,
                       overhead_s: float = HEURISTIC_OVERHEAD_S) -> dict[str, np.ndarray]:
    """The no-history estimate described in the module docstring (upper = 1.5 x point estimate)."""
    if overhead_s < 0 or bytes_per_s <= 0:
        raise ValueError(f"heuristic: need heuristic_overhead_s >= 0 and heuristic_bytes_per_s > 0, "
                         f"got {overhead_s} and {bytes_per_s}")
    w = np.asarray(workers, float)
    wall = overhead_s + input_bytes / (bytes_per_s * w * threads)
    # a worker holds its partitions in flight and, during the dedupe shuffle, its share of the whole input
    mem = HEURISTIC_BASE_MEMORY + HEURISTIC_MEMORY_FACTOR * np.maximum(partition_bytes * threads, input_bytes / w)
    return {"wall_s": wall, "wall_s_upper": 1.5 * wall, "peak_memory": mem, "peak_memory_upper": mem}


@dataclass(frozen=True)
class _Heuristic:
    """The no-history heuristic's settings (see ``heuristic_estimate``)."""

    partition_bytes: float
    bytes_per_s: float
    overhead_s: float

    def estimate(self, input_bytes: float, sizes: np.ndarray, threads: int) -> dict[str, np.ndarray]:
        """The heuristic's wall time and peak memory per worker at each of `sizes`."""
        return heuristic_estimate(input_bytes, sizes, threads, self.partition_bytes, self.bytes_per_s,
                                  self.overhead_s)


@dataclass(frozen=True)
class _Limits:
    """What a cluster size must meet: the deadline at the upper wall time, memory under the spill threshold."""

    deadline_s: float
    memory_fraction: float
    memory_per_worker: int
    fallback_tolerance: float
    max_workers: int  # after the host cap


def _check_plan_args(min_workers: int, max_workers: int, deadline_s: float, input_bytes: float) -> None:
    """Refuse an empty size range, a non-positive deadline or a negative input."""
    if min_workers < 1 or max_workers < min_workers:
        raise ValueError(f"plan: need 1 <= min_workers <= max_workers, got {min_workers}..{max_workers}")
    if deadline_s <= 0:
        raise ValueError(f"plan: Param deadline_s must be > 0, got {deadline_s}")
    if input_bytes < 0:
        raise ValueError(f"plan: input_bytes must be >= 0, got {input_bytes}")


def _host_cap(min_workers: int, max_workers: int, threads_per_worker: int, host_cpus: int | None) -> tuple[int, str]:
    """`max_workers` capped at the workers one host of `host_cpus` CPUs runs without contention, and a note
    for the plan's reason when the cap applies (never below `min_workers`)."""
    if host_cpus is None:
        return max_workers, ""
    cap = max(min_workers, int(host_cpus) // max(threads_per_worker, 1), 1)
    if cap >= max_workers:
        return max_workers, ""
    return cap, (f"; capped at {cap} workers: they share this host's {int(host_cpus)} CPUs "
                 f"({threads_per_worker} thread(s) each), more would add contention, not speed")


def _check_quantiles(quantile: float, memory_quantile: float | None) -> None:
    """Refuse a bound level outside (0, 1) (the memory level may be unset: it defaults to the wall's)."""
    for name, q in (("forecast_quantile", quantile), ("forecast_memory_quantile", memory_quantile)):
        if q is not None and not 0.0 < q < 1.0:
            raise ValueError(f"plan: Param {name} must be in (0, 1), got {q}")


def _forecast_why(f: Forecaster, input_bytes: float, partitions: int | None, quantile: float) -> str:
    """How the fitted model's estimate came about: levels, wave model, identifiable terms, memory bound."""
    lv = f.levels
    why = (f"fitted on {f.n_runs} runs; upper = q{lv.inside:.3g} x{f.wall.upper_ratio_inside:.2f} within the "
           f"history's input and cluster sizes, q{lv.beyond:.3g} x{f.wall.upper_ratio:.2f} beyond")
    if max(lv.inside, lv.beyond) > quantile:
        why += (f"; levels raised from q{quantile:g} (adaptive conformal): {lv.misses_inside} run(s) within "
                f"and {lv.misses_beyond} beyond the earlier runs' sizes took longer than their predicted bound")
    if f.waves:
        why += (f"; wave model: ceil({f.tasks_for(input_bytes, partitions)} tasks / slots) x bytes per task "
                f"(leave-one-out MAPE {f.waves_loo_mape:.1%} vs {f.smooth_loo_mape:.1%} smooth)")
    if f.mode == "parallel":
        why += f"; sizes seen {f.sizes_seen[0]}..{f.sizes_seen[1]} too alike: pure parallel scaling assumed"
    elif f.mode == "bytes":
        why += (f"; sizes seen {f.sizes_seen[0]}..{f.sizes_seen[1]} too alike: overhead + parallel scaling "
                "assumed")
    elif f.mode == "amdahl":
        why += f"; two sizes seen ({f.sizes_seen[0]}..{f.sizes_seen[1]}): overhead + parallel + serial work"
    if f.mem is not None:
        why += f"; peak memory upper = q{f.mem_level:.3g} x{f.mem.upper_ratio:.2f}"
        if f.mem_misses:
            why += f" (level raised: {f.mem_misses} run(s) peaked over the spill threshold)"
    return why


def _forecast_estimate(
    f: Forecaster, input_bytes: float, sizes: np.ndarray, threads: int, partitions: int | None, quantile: float,
    heuristic: _Heuristic,
) -> tuple[dict[str, np.ndarray], str]:
    """The fitted model's estimate per size and why; memory from the heuristic when the history has none."""
    est = f.predict(input_bytes, sizes, threads, partitions)
    why = _forecast_why(f, input_bytes, partitions, quantile)
    if "peak_memory" not in est:
        h = heuristic.estimate(input_bytes, sizes, threads)
        est.update(peak_memory=h["peak_memory"], peak_memory_upper=h["peak_memory_upper"])
        why += "; memory from heuristic (no peak-memory history)"
    return est, why


def _heuristic_why(f: Forecaster, min_history: int, heuristic: _Heuristic) -> str:
    """Why the plan is the heuristic's: too few runs, and the throughput and memory it assumed."""
    return (f"only {f.n_runs} successful runs in history (< {min_history}): {heuristic.overhead_s:g}s + "
            f"{heuristic.bytes_per_s / 2**20:.3g} MiB/s per thread, memory {HEURISTIC_MEMORY_FACTOR:g} x partition")


def _pick_size(est: dict[str, np.ndarray], sizes: np.ndarray, lim: _Limits) -> tuple[int, str]:
    """Index into `sizes` of the planned size, and why: the smallest meeting deadline and memory; else the
    smallest near-fastest one that fits memory; else the largest."""
    fits_time = est["wall_s_upper"] <= lim.deadline_s
    fits_mem = est["peak_memory_upper"] <= lim.memory_fraction * lim.memory_per_worker
    ok = np.flatnonzero(fits_time & fits_mem)
    if ok.size:
        return int(ok[0]), (f"smallest size meeting deadline {lim.deadline_s:g}s at the upper bound with peak "
                            f"memory under {lim.memory_fraction:g} x {lim.memory_per_worker} B/worker")
    if fits_mem.any():
        # no size meets the deadline at the upper quantile: near-fastest, not fastest at any price; the
        # smallest size whose upper wall is within `fallback_tolerance` of the fastest one's (on a box
        # where workers barely help, 3x the workers for 5% less time is not bought)
        cand = np.flatnonzero(fits_mem)
        best = float(est["wall_s_upper"][cand].min())
        i = int(cand[np.flatnonzero(est["wall_s_upper"][cand] <= (1 + lim.fallback_tolerance) * best)[0]])
        return i, (f"deadline {lim.deadline_s:g}s cannot be met within {lim.max_workers} workers at the upper "
                   f"bound (best upper {best:.0f}s); using the smallest size within {lim.fallback_tolerance:.0%} "
                   f"of the fastest (upper {est['wall_s_upper'][i]:.0f}s) that fits memory")
    i = len(sizes) - 1
    return i, (f"peak memory per worker (upper {est['peak_memory_upper'][i]:.3g} B) exceeds "
               f"{lim.memory_fraction:g} x memory_per_worker {lim.memory_per_worker} at every size; "
               f"using the maximum ({lim.max_workers})")


def make_plan(
    rows: Sequence[history.StepRun | Mapping[str, Any]],
    input_bytes: float,
    *,
    deadline_s: float,
    min_workers: int = 1,
    max_workers: int = 8,
    threads_per_worker: int = 1,
    memory_per_worker: int = 2 << 30,
    partition_bytes: float = DEFAULT_PARTITION_BYTES,
    min_history: int = MIN_HISTORY,
    quantile: float = QUANTILE,
    memory_quantile: float | None = None,
    heuristic_bytes_per_s: float = HEURISTIC_BYTES_PER_S,
    memory_fraction: float = MEMORY_FRACTION,
    partitions: int | None = None,
    fallback_tolerance: float = FALLBACK_TOLERANCE,
    heuristic_overhead_s: float = HEURISTIC_OVERHEAD_S,
    host_cpus: int | None = None,
) -> ClusterPlan:
    """Smallest cluster meeting `deadline_s` (at the upper quantile) and fitting in memory.

    `quantile` is the wall-time bound's level, `memory_quantile` the peak-memory bound's (default: the
    same); both adapt to the history's misses (see the module docstring).
    `heuristic_bytes_per_s` (setting ``heuristic_bytes_per_s``) is the per-thread throughput the
    no-history heuristic assumes; a deployment sets it from one measured run. Memory fits when
    the upper peak stays under `memory_fraction` x `memory_per_worker` (Dask starts spilling
    to disk at 0.7 of the worker limit, so that is the default). `partitions` (tasks per phase of this
    run, when known) feeds the wave model; without it the history's bytes per partition estimate it.
    When no size meets the deadline, the plan takes the smallest size whose upper wall time is within
    `fallback_tolerance` (setting ``fallback_tolerance``) of the fastest size's.
    `heuristic_overhead_s` (Param) is the heuristic's fixed start-up (0 with an end-to-end measured
    throughput). `host_cpus`: the workers share one host of that many CPUs (``local`` backend), so no
    more than ``host_cpus // threads_per_worker`` workers are planned (never below `min_workers`).
    """
    _check_plan_args(min_workers, max_workers, deadline_s, input_bytes)
    max_workers, cap_note = _host_cap(min_workers, max_workers, threads_per_worker, host_cpus)
    sizes = np.arange(min_workers, max_workers + 1)
    _check_quantiles(quantile, memory_quantile)
    heuristic = _Heuristic(partition_bytes, heuristic_bytes_per_s, heuristic_overhead_s)
    f = Forecaster.fit(rows, quantile, memory_quantile, memory_fraction)
    if f.n_runs >= min_history:
        est, why = _forecast_estimate(f, input_bytes, sizes, threads_per_worker, partitions, quantile, heuristic)
        source = "forecast"
    else:
        est = heuristic.estimate(input_bytes, sizes, threads_per_worker)
        source = "heuristic"
        why = _heuristic_why(f, min_history, heuristic)
    lim = _Limits(deadline_s, memory_fraction, memory_per_worker, fallback_tolerance, max_workers)
    i, reason = _pick_size(est, sizes, lim)
    predicted = {k: round(float(v[i]), 3) for k, v in est.items()}
    predicted["input_bytes"] = float(input_bytes)
    return ClusterPlan(
        workers=int(sizes[i]),
        threads_per_worker=threads_per_worker,
        memory_limit=int(memory_per_worker),
        source=source,
        reason=f"{reason}; {why}{cap_note}",
        predicted=predicted,
    )


def forecast_volume(series: list[tuple[str, float]], target_ds: str) -> tuple[float, str]:
    """Expected input bytes of interval `target_ds` from past (ds, bytes): trend + weekly seasonality."""
    if not series:
        raise ValueError(f"no past interval volumes to forecast {target_ds} from")
    days = np.array([date.fromisoformat(d).toordinal() for d, _ in series], float)
    y = np.log(np.maximum(np.array([v for _, v in series], float), 1.0))
    target = float(date.fromisoformat(target_ds).toordinal())
    if len(series) < 4:
        return float(np.exp(y[-3:].mean())), f"mean of last {min(3, len(series))} intervals"
    t0 = days.min()

    def feats(d: np.ndarray) -> np.ndarray:
        cols = [(d - t0) / 7.0]
        if len(series) >= 14:  # two weeks: enough to estimate day-of-week effects
            dow = (d.astype(int) % 7)[:, None] == np.arange(1, 7)[None, :]
            cols.extend(dow.T.astype(float))
        return np.column_stack(cols)

    model = HuberRegressor(epsilon=1.35, alpha=1e-4, max_iter=500).fit(feats(days), y)
    pred = float(np.exp(model.predict(feats(np.array([target])))[0]))
    how = "trend + day-of-week" if len(series) >= 14 else "trend"
    return pred, f"Huber {how} on {len(series)} intervals"


# ---- step functions -----------------------------------------------------------------------------

def _raw_input(ctx: Any) -> tuple[float, int]:
    lake = ctx.lake
    files = lake.raw_files(ctx.dataset, ctx.ds)
    return float(sum(lake.fs.size(p) for p in files)), len(files)


def plan_stage(ctx: Any, stage: str, input_bytes: float, partitions: int, volume_note: str,
               max_default: int, fixed_workers: int | None = None,
               dask_step: bool = True) -> ClusterPlan:
    """`dask_step`: the step runs on the Dask cluster of ``ctx.cluster``; with the ``local`` backend its
    workers share this host, so the plan is capped at the host's CPUs (``tasks.resources.cluster.local.host_cpus``)."""
    host = None
    if dask_step and backend_for(ctx.cluster).is_local:
        from tasks.resources.cluster.local import host_cpus

        host = host_cpus()
    rows = history.runs(ctx.history_url, stage, ctx.dataset, success_only=True, limit=500)
    partition_bytes = input_bytes / partitions if partitions else ctx.param("partition_bytes")
    quantile = ctx.param("forecast_quantile")
    deadline = ctx.param("clean_deadline_s") if stage == "clean" else ctx.param("train_deadline_s")
    memory_quantile = ctx.param("forecast_memory_quantile")
    plan = make_plan(
        rows,
        input_bytes,
        deadline_s=deadline or ctx.param("deadline_s"),
        min_workers=fixed_workers or ctx.param("min_workers"),
        max_workers=fixed_workers or ctx.param("max_workers") or int(ctx.cluster.get("max_workers", max_default)),
        threads_per_worker=ctx.param("threads_per_worker"),
        memory_per_worker=ctx.param("memory_per_worker") or int(ctx.cluster.get("worker_memory", 2 << 30)),
        partition_bytes=partition_bytes,
        min_history=ctx.param("min_history"),
        quantile=quantile,
        memory_quantile=quantile if memory_quantile is None else memory_quantile,
        heuristic_bytes_per_s=ctx.param("heuristic_bytes_per_s"),
        memory_fraction=ctx.param("memory_fraction"),
        fallback_tolerance=ctx.param("fallback_tolerance"),
        heuristic_overhead_s=ctx.param("heuristic_overhead_s"),
        host_cpus=host,
        # tasks per phase come from the history's bytes per partition: history counts what the step ran
        # (clean: its chunks), which the raw file count seen here need not equal
    )
    if volume_note:
        plan.reason += f"; {volume_note}"
    return plan


def run_plan_clean(ctx: Any) -> dict[str, Any]:
    """Plan the clean step's cluster for ctx's interval (raw input size, or forecast if not landed)."""
    input_bytes, partitions = _raw_input(ctx)
    note = ""
    if not partitions:
        series = [(d, v) for d, v in history.interval_volumes(ctx.history_url, "clean", ctx.dataset) if d < ctx.ds]
        if series:
            input_bytes, how = forecast_volume(series, ctx.ds)
            note = f"raw data not landed yet: input forecast {input_bytes:.3g} B ({how})"
        else:
            note = "raw data not landed and no volume history: sized for empty input"
    plan = plan_stage(ctx, "clean", input_bytes, partitions, note, max_default=8)
    history.record_plan(ctx.history_url, "clean", ctx.dataset, ctx.ds, plan.to_dict(), input_bytes, ctx.run_id)
    log.info("plan_clean %s ds=%s: %d x %d threads, %s (%s)", ctx.dataset, ctx.ds, plan.workers,
             plan.threads_per_worker, plan.predicted, plan.reason)
    return {**plan.to_dict(), "stage": "clean", "input_bytes": input_bytes, "partitions": partitions}


def run_plan_train(ctx: Any) -> dict[str, Any]:
    """Plan training: processes (nproc) and device; input = the train split's bytes (else raw)."""
    import torch  # lazy: only this step needs it

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    max_nproc = torch.cuda.device_count() if cuda else max(1, min(4, (os.cpu_count() or 1) // 2))
    split = ctx.lake.manifest("split", ctx.dataset, ctx.ds)
    if split is not None:
        files = split.group_files("train")
        input_bytes, partitions, note = float(sum(f.bytes for f in files)), len(files), "input = train split"
    else:
        input_bytes, partitions = _raw_input(ctx)
        note = "no split manifest yet: input = raw files"
    nproc = ctx.param("train_nproc")
    plan = plan_stage(ctx, "train", input_bytes, partitions, note, max_default=max_nproc,
                      fixed_workers=nproc, dask_step=False)
    if nproc:
        plan.source, plan.reason = "param", f"Param train_nproc={nproc}; {plan.reason}"
    history.record_plan(ctx.history_url, "train", ctx.dataset, ctx.ds, plan.to_dict(), input_bytes, ctx.run_id)
    log.info("plan_train %s ds=%s: nproc=%d device=%s (%s)", ctx.dataset, ctx.ds, plan.workers, device, plan.reason)
    return {**plan.to_dict(), "stage": "train", "nproc": plan.workers, "device": device,
            "input_bytes": input_bytes, "partitions": partitions}
