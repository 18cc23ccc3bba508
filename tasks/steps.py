"""The pipeline's steps by name, and one runner that times them and records history.

Both the Airflow operators and the CLI call :func:`run_step`; it is the only
place that knows which module implements which step.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import resource
import time
from typing import Any

from tasks.context import StepContext

log = logging.getLogger(__name__)

# step name -> "module:function"; each function takes a StepContext and returns small JSON.
STEPS: dict[str, str] = {
    "validate_raw": "tasks.validate:run_raw",
    "plan_clean": "tasks.forecast:run_plan_clean",
    "clean": "tasks.clean:run",
    "split": "tasks.split:run",
    "validate_clean": "tasks.validate:run_clean",
    "secure": "tasks.secure:run",
    "plan_train": "tasks.forecast:run_plan_train",
    "train": "tasks.train:run",
    "evaluate": "tasks.evaluate:run",
    "compress": "tasks.compress:run",
    "publish": "tasks.publish:run",
}
ORDER = list(STEPS)
HEAVY = {"clean", "split", "validate_raw", "validate_clean", "train"}  # recorded in run history


def resolve(step: str):
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; steps are: {', '.join(ORDER)}")
    module, func = STEPS[step].split(":")
    return getattr(importlib.import_module(module), func)


def _cpu_seconds() -> float:
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


def run_step(step: str, ctx: StepContext) -> dict[str, Any]:
    """Run one step, time it, and record heavy steps in the run-history database."""
    fn = resolve(step)
    log.info("step %s: dataset=%s ds=%s lake=%s", step, ctx.dataset, ctx.ds, ctx.lake_url)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    ok = False
    result: dict[str, Any] = {}
    try:
        result = fn(ctx) or {}
        ok = True
        return result
    finally:
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        if isinstance(result, dict):
            result.setdefault("wall_s", round(wall, 3))
        if step in HEAVY and not (isinstance(result, dict) and result.get("cache_hit")):
            from tasks import history

            try:
                history.record_step(ctx, step, result, wall_s=wall, cpu_s=cpu, success=ok)
            except Exception:  # history is advisory: never fail a step because of it
                log.exception("could not record run history for step %s", step)


def _context_from_args(args: argparse.Namespace) -> StepContext:
    params: dict[str, Any] = {}
    for kv in args.param or []:
        k, _, v = kv.partition("=")
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    cluster = json.loads(args.cluster) if args.cluster else {"backend": "local"}
    return StepContext(dataset=args.dataset, ds=args.ds, lake_url=args.lake or "", params=params, cluster=cluster)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--dataset", required=True)
    p.add_argument("--ds", required=True, help="data interval start, YYYY-MM-DD")
    p.add_argument("--lake", help="lake root URL (default $LEPTONFLOW_LAKE or ./var/lake)")
    p.add_argument("--cluster", help='cluster backend JSON, e.g. {"backend":"address","address":"tcp://..."}')
    p.add_argument("--param", action="append", help="k=v (v parsed as JSON when it can be)")
    return p


def step_cli(step: str, argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser(f"python -m tasks {step}").parse_args(argv)
    ctx = _context_from_args(args)
    print(json.dumps(run_step(step, ctx), indent=1, default=str))
    return 0


def run_pipeline(ctx: StepContext) -> dict[str, Any]:
    """All steps in order, each step seeing the earlier results (what XCom does in Airflow)."""
    results: dict[str, Any] = {}
    for step in ORDER:
        ctx.upstream = results
        results[step] = run_step(step, ctx)
    return results


def pipeline_cli(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser("python -m tasks pipeline").parse_args(argv)
    print(json.dumps(run_pipeline(_context_from_args(args)), indent=1, default=str))
    return 0
