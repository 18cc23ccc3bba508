"""Run history: one row per heavy step run, in a SQL database (SQLite file or PostgreSQL).

The forecaster (:mod:`tasks.resources.forecast`) fits on these rows, and the report shows
predicted vs actual from them. Rows carry the plan's predictions when the step
ran under a plan, so forecast error can be measured after the fact.

``record_step`` is called by :func:`tasks.steps.run_step` with the step's
:class:`~tasks.resources.step_metrics.StepMetrics`; ``record_run`` is the lower-level
writer (benchmarks, tests); ``runs`` (typed :class:`StepRun` rows) / ``plan_rows`` are the
queries. The schema is created on first use (``create_all`` is idempotent).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    make_url,
    select,
)

from tasks.resources.step_metrics import StepMetrics

log = logging.getLogger(__name__)

metadata = MetaData()

step_runs = Table(
    "lf_step_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stage", String(64), nullable=False, index=True),
    Column("dataset", String(128), nullable=False, index=True),
    Column("ds", String(32), nullable=False),
    Column("run_id", String(256), nullable=False, default=""),
    Column("input_bytes", Float, nullable=False, default=0.0),
    Column("input_rows", Float, nullable=False, default=0.0),
    Column("partitions", Integer, nullable=False, default=0),
    Column("workers", Integer, nullable=False, default=0),
    Column("threads", Integer, nullable=False, default=0),  # threads per worker
    Column("memory_limit", Float, nullable=False, default=0.0),  # bytes per worker
    Column("wall_s", Float, nullable=False),
    Column("cpu_s", Float, nullable=False, default=0.0),
    Column("peak_memory_per_worker", Float, nullable=False, default=0.0),
    Column("spilled_bytes", Float, nullable=False, default=0.0),
    Column("success", Boolean, nullable=False),
    Column("recorded_at", Float, nullable=False),  # unix seconds
    # what the plan predicted for this run (NULL when the step ran without a plan)
    Column("plan_source", String(32), nullable=True),
    Column("predicted_wall_s", Float, nullable=True),
    Column("predicted_wall_s_upper", Float, nullable=True),
    Column("predicted_peak_memory", Float, nullable=True),
)

plans = Table(
    "lf_plans",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stage", String(64), nullable=False, index=True),
    Column("dataset", String(128), nullable=False, index=True),
    Column("ds", String(32), nullable=False),
    Column("run_id", String(256), nullable=False, default=""),
    Column("workers", Integer, nullable=False),
    Column("threads", Integer, nullable=False),
    Column("memory_limit", Float, nullable=False),
    Column("input_bytes", Float, nullable=False),
    Column("source", String(32), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("predicted_wall_s", Float, nullable=True),
    Column("predicted_wall_s_upper", Float, nullable=True),
    Column("predicted_peak_memory", Float, nullable=True),
    Column("recorded_at", Float, nullable=False),
)

RUN_FIELDS = [c.name for c in step_runs.columns if c.name != "id"]
PLAN_FIELDS = [c.name for c in plans.columns if c.name != "id"]


@dataclass(frozen=True, kw_only=True)
class StepRun:
    """One recorded run of a heavy step: a row of ``lf_step_runs``, one field per column, in column order.

    What :func:`runs` returns and what the forecaster fits on. Synthetic histories (benchmarks,
    simulations, tests) may be given as mappings of these field names instead (:meth:`coerce`);
    only ``wall_s`` and ``success`` are required there. ``plan_source`` is None for a run made
    without a plan, and the ``predicted_*`` fields are then None too.
    """

    id: int | None = None
    stage: str = ""
    dataset: str = ""
    ds: str = ""
    run_id: str = ""
    input_bytes: float = 0.0
    input_rows: float = 0.0
    partitions: int = 0
    workers: int = 0
    threads: int = 0  # per worker
    memory_limit: float = 0.0  # bytes per worker
    wall_s: float
    cpu_s: float = 0.0
    peak_memory_per_worker: float = 0.0
    spilled_bytes: float = 0.0
    success: bool
    recorded_at: float = 0.0  # unix seconds
    plan_source: str | None = None
    predicted_wall_s: float | None = None
    predicted_wall_s_upper: float | None = None
    predicted_peak_memory: float | None = None

    @classmethod
    def coerce(cls, row: StepRun | Mapping[str, Any]) -> StepRun:
        """`row` as a StepRun; a mapping must use the field names (an unknown key is an error, not ignored)."""
        if isinstance(row, StepRun):
            return row
        unknown = set(row) - _STEP_RUN_FIELDS
        if unknown:
            raise ValueError(f"run history: unknown field(s) {sorted(unknown)} in a run; known: {RUN_FIELDS}")
        missing = {"wall_s", "success"} - set(row)
        if missing:
            raise ValueError(f"run history: a run needs {sorted(missing)}, got {dict(row)!r}")
        return cls(**row)

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON-ready values (the report's form)."""
        return asdict(self)


_STEP_RUN_FIELDS = {f.name for f in fields(StepRun)}


def as_runs(rows: Iterable[StepRun | Mapping[str, Any]]) -> list[StepRun]:
    """Every row of `rows` as a :class:`StepRun` (see :meth:`StepRun.coerce`)."""
    return [StepRun.coerce(r) for r in rows]

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def engine(url: str) -> Engine:
    """A cached engine for `url` with the schema in place (created on first use)."""
    with _lock:
        eng = _engines.get(url)
        if eng is None:
            parsed = make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            eng = create_engine(url, pool_pre_ping=True)
            metadata.create_all(eng)  # idempotent: checks before creating
            _engines[url] = eng
        return eng


def dispose(url: str | None = None) -> None:
    """Close pooled connections (all URLs when None), e.g. before a test database is stopped."""
    with _lock:
        for key in [url] if url else list(_engines):
            eng = _engines.pop(key, None)
            if eng is not None:
                eng.dispose()


def _num(value: Any, what: str) -> float:
    if value is None:
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run history: {what} must be a number, got {value!r}") from exc


def record_run(url: str, **fields: Any) -> int:
    """Insert one step run; `stage`, `dataset`, `ds`, `wall_s`, `success` are required. Returns the row id."""
    unknown = set(fields) - set(RUN_FIELDS)
    if unknown:
        raise ValueError(f"run history: unknown field(s) {sorted(unknown)}; known: {RUN_FIELDS}")
    for need in ("stage", "dataset", "ds", "wall_s", "success"):
        if fields.get(need) is None:
            raise ValueError(f"run history: field {need!r} is required")
    if _num(fields["wall_s"], "wall_s") < 0:
        raise ValueError(f"run history: wall_s must be >= 0, got {fields['wall_s']!r}")
    row = dict(fields)
    row.setdefault("recorded_at", time.time())
    row.setdefault("run_id", "")
    with engine(url).begin() as conn:
        return int(conn.execute(insert(step_runs).values(**row)).inserted_primary_key[0])


def record_step(ctx: Any, step: str, metrics: StepMetrics, wall_s: float, cpu_s: float, success: bool) -> int:
    """Record one run of `step` for `ctx`'s interval, with the plan's predictions if a plan existed.

    `metrics`: what the step measured (``StepMetrics.from_result(result)``; all 0 for a step that failed).
    The cluster size the step did not report (0) is the plan's.
    """
    if not isinstance(metrics, StepMetrics):
        raise TypeError(f"run history: record_step needs StepMetrics for step {step!r}, got {type(metrics).__name__}")
    plan = ctx.plan(step) or {}
    predicted = plan.get("predicted") or {}
    fields: dict[str, Any] = {
        "stage": step,
        "dataset": ctx.dataset,
        "ds": ctx.ds,
        "run_id": str(getattr(ctx, "run_id", "") or ""),
        "input_bytes": float(metrics.input_bytes),
        "input_rows": float(metrics.input_rows),
        "partitions": metrics.partitions,
        "workers": metrics.workers or int(_num(plan.get("workers"), "plan workers")),
        "threads": metrics.threads_per_worker or int(_num(plan.get("threads_per_worker"), "plan threads_per_worker")),
        "memory_limit": float(metrics.memory_limit or _num(plan.get("memory_limit"), "plan memory_limit")),
        "wall_s": float(wall_s),
        "cpu_s": float(cpu_s),
        "peak_memory_per_worker": float(metrics.peak_memory_per_worker),
        "spilled_bytes": float(metrics.spilled_bytes),
        "success": bool(success),
        "plan_source": plan.get("source") if plan else None,
        "predicted_wall_s": predicted.get("wall_s"),
        "predicted_wall_s_upper": predicted.get("wall_s_upper"),
        "predicted_peak_memory": predicted.get("peak_memory"),
    }
    row_id = record_run(ctx.history_url, **fields)
    log.info(
        "history: %s %s ds=%s wall=%.2fs workers=%s input=%.0f B (predicted %s)",
        step, ctx.dataset, ctx.ds, wall_s, fields["workers"], fields["input_bytes"], fields["predicted_wall_s"],
    )
    return row_id


def record_plan(url: str, stage: str, dataset: str, ds: str, plan: dict[str, Any], input_bytes: float,
                run_id: str = "") -> int:
    """Store a plan as made (before the step runs), so plans and outcomes can be compared later."""
    predicted = plan.get("predicted") or {}
    row = {
        "stage": stage, "dataset": dataset, "ds": ds, "run_id": run_id,
        "workers": int(plan["workers"]), "threads": int(plan.get("threads_per_worker", 1)),
        "memory_limit": float(plan.get("memory_limit", 0)), "input_bytes": float(input_bytes),
        "source": str(plan.get("source", "")), "reason": str(plan.get("reason", "")),
        "predicted_wall_s": predicted.get("wall_s"), "predicted_wall_s_upper": predicted.get("wall_s_upper"),
        "predicted_peak_memory": predicted.get("peak_memory"), "recorded_at": time.time(),
    }
    with engine(url).begin() as conn:
        return int(conn.execute(insert(plans).values(**row)).inserted_primary_key[0])


def runs(url: str, stage: str, dataset: str | None = None, success_only: bool = False,
         limit: int | None = None) -> list[StepRun]:
    """Recorded runs of `stage` (optionally one dataset), oldest first."""
    q = select(step_runs).where(step_runs.c.stage == stage)
    if dataset is not None:
        q = q.where(step_runs.c.dataset == dataset)
    if success_only:
        q = q.where(step_runs.c.success.is_(True))
    q = q.order_by(step_runs.c.recorded_at.desc(), step_runs.c.id.desc())
    if limit:
        q = q.limit(limit)
    with engine(url).connect() as conn:
        rows = [StepRun(**r._mapping) for r in conn.execute(q)]
    return rows[::-1]


def plan_rows(url: str, stage: str, dataset: str | None = None) -> list[dict[str, Any]]:
    """Stored plans of `stage`, oldest first."""
    q = select(plans).where(plans.c.stage == stage)
    if dataset is not None:
        q = q.where(plans.c.dataset == dataset)
    with engine(url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q.order_by(plans.c.recorded_at, plans.c.id))]


def interval_volumes(url: str, stage: str, dataset: str) -> list[tuple[str, float]]:
    """(ds, input_bytes) of the latest successful run per interval, ordered by ds: the volume series."""
    latest: dict[str, float] = {}
    for r in runs(url, stage, dataset, success_only=True):
        if r.input_bytes > 0:
            latest[r.ds] = r.input_bytes
    return sorted(latest.items())


def accuracy(url: str, stage: str, dataset: str | None = None) -> dict[str, Any]:
    """Predicted vs actual wall time over runs that had a forecast: MAPE and upper-bound coverage."""
    rows = [r for r in runs(url, stage, dataset, success_only=True) if r.predicted_wall_s and r.wall_s > 0]
    if not rows:
        return {"n": 0, "wall_mape": None, "upper_coverage": None}
    ape = [abs(r.predicted_wall_s - r.wall_s) / r.wall_s for r in rows]
    upper = [r for r in rows if r.predicted_wall_s_upper]
    covered = sum(r.wall_s <= r.predicted_wall_s_upper for r in upper)
    return {
        "n": len(rows),
        "wall_mape": sum(ape) / len(ape),
        "upper_coverage": covered / len(upper) if upper else None,
    }
