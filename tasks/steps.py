"""The pipeline's steps by name, and one runner that times them and records history.

Both the Airflow operators and the CLI call :func:`run_step`; it is the only
place that knows which module implements which step.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks import params as settings
from tasks.context import StepContext
from tasks.errors import UsageError

log = logging.getLogger(__name__)

def _validate_raw(ctx: StepContext) -> dict[str, Any]:
    from tasks.validation import validate

    return validate.run_raw(ctx)


def _plan_clean(ctx: StepContext) -> dict[str, Any]:
    from tasks.resources import forecast

    return forecast.run_plan_clean(ctx)


def _clean(ctx: StepContext) -> dict[str, Any]:
    from tasks.prep import clean

    return clean.run(ctx)


def _split(ctx: StepContext) -> dict[str, Any]:
    from tasks.prep import split

    return split.run(ctx)


def _validate_clean(ctx: StepContext) -> dict[str, Any]:
    from tasks.validation import validate

    return validate.run_clean(ctx)


def _secure(ctx: StepContext) -> dict[str, Any]:
    from tasks.security import secure

    return secure.run(ctx)


def _plan_train(ctx: StepContext) -> dict[str, Any]:
    from tasks.resources import forecast

    return forecast.run_plan_train(ctx)


def _train(ctx: StepContext) -> dict[str, Any]:
    from tasks.training import train

    return train.run(ctx)


def _evaluate(ctx: StepContext) -> dict[str, Any]:
    from tasks.training import evaluate

    return evaluate.run(ctx)


def _compress(ctx: StepContext) -> dict[str, Any]:
    from tasks.compression import compress

    return compress.run(ctx)


def _publish(ctx: StepContext) -> dict[str, Any]:
    from tasks.publishing import publish

    return publish.run(ctx)


@dataclass(frozen=True)
class Step:
    """A pipeline step: its name (the DAG's task id), what runs it, and the module holding its code.

    `module` is where the step's code version and its settings are looked up
    (:func:`tasks.io.code_version.code_version`, :func:`tasks.params.step_settings`); each runner
    imports its module when called, so a process imports only the engines of the step it runs.
    """

    name: str
    run: Callable[[StepContext], dict[str, Any]]
    module: str


STEPS: dict[str, Step] = {s.name: s for s in (
    Step("validate_raw", _validate_raw, "tasks.validation.validate"),
    Step("plan_clean", _plan_clean, "tasks.resources.forecast"),
    Step("clean", _clean, "tasks.prep.clean"),
    Step("split", _split, "tasks.prep.split"),
    Step("validate_clean", _validate_clean, "tasks.validation.validate"),
    Step("secure", _secure, "tasks.security.secure"),
    Step("plan_train", _plan_train, "tasks.resources.forecast"),
    Step("train", _train, "tasks.training.train"),
    Step("evaluate", _evaluate, "tasks.training.evaluate"),
    Step("compress", _compress, "tasks.compression.compress"),
    Step("publish", _publish, "tasks.publishing.publish"),
)}
ORDER = list(STEPS)
HEAVY = {"clean", "split", "validate_raw", "validate_clean", "train"}  # recorded in run history


def resolve(step: str) -> Step:
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; steps are: {', '.join(ORDER)}")
    return STEPS[step]


def _cpu_seconds() -> float:
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


def run_step(step: str, ctx: StepContext) -> dict[str, Any]:
    """Run one step, time it, and record heavy steps in the run-history database.

    A heavy step's result carries its :class:`~tasks.resources.step_metrics.StepMetrics` fields at the
    top level; they are read back here, once, and recorded with the wall and CPU time.
    """
    fn = resolve(step).run
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
            from tasks.resources import history
            from tasks.resources.step_metrics import StepMetrics
            try:
                metrics = StepMetrics.from_result(result if isinstance(result, dict) else None, step)
                history.record_step(ctx, step, metrics, wall_s=wall, cpu_s=cpu, success=ok)
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
    params.update(settings.cli_overrides(args))
    cluster = json.loads(args.cluster) if args.cluster else {"backend": "local"}
    try:
        ctx = StepContext(dataset=args.dataset, ds=args.ds, lake_url=args.lake or "", params=params, cluster=cluster)
    except UsageError as exc:
        raise UsageError("--ds", exc.problem) from None
    ctx.settings  # noqa: B018 -- resolve now: a bad flag fails before any work, naming the setting
    ctx.check_interval("--ds")  # the dataset's grammar: an ISO date (daily) or hour (hourly)
    return ctx


def _usage_checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> StepContext:
    """The run's context; a bad argument is a usage error naming it (exit status 2), before any work."""
    try:
        return _context_from_args(args)
    except UsageError as exc:
        parser.error(str(exc))


def _parser(prog: str, step: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--dataset", required=True)
    p.add_argument("--ds", required=True, help="the data interval: YYYY-MM-DD (daily datasets), YYYY-MM-DDTHH (hourly)")
    p.add_argument("--lake", help="lake root URL (default $LEPTONFLOW_LAKE or ./var/lake)")
    p.add_argument("--cluster", help='cluster backend JSON, e.g. {"backend":"address","address":"tcp://..."}')
    p.add_argument("--param", action="append", help="k=v, another way to give a setting (v parsed as JSON)")
    names = None if step is None else settings.settings_read_by(STEPS[step].module)
    settings.add_cli_flags(p, None if names is None else tuple(n for n in names if n != "interval_date"))
    return p


def step_cli(step: str, argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    resolve(step)
    parser = _parser(f"python -m tasks {step}", step)
    args = parser.parse_args(argv)
    ctx = _usage_checked(parser, args)
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
    parser = _parser("python -m tasks pipeline", None)
    print(json.dumps(run_pipeline(_usage_checked(parser, parser.parse_args(argv))), indent=1, default=str))
    return 0


# ---- python -m tasks params -------------------------------------------------------------------

def describe() -> list[dict[str, Any]]:
    """Every setting as a JSON-ready dict, with the steps that read it (found in their source)."""
    readers: dict[str, list[str]] = {s.name: [] for s in settings.SETTINGS}
    for step in STEPS.values():
        for name in settings.settings_read_by(step.module):
            readers.setdefault(name, []).append(step.name)
    out = []
    for s in settings.SETTINGS:
        d = {"name": s.name, "type": s.type, "default": s.default, "section": s.section, "doc": s.doc,
             "affects_output": s.affects_output, "nullable": s.nullable, "steps": readers[s.name],
             "schema": s.schema(), "flag": settings.flag(s.name)}
        if s.spec_default:
            d["spec_default"] = s.spec_default
        out.append(d)
    return out


def markdown_table() -> str:
    """The settings as the README's Markdown table (one row per setting, by section)."""
    lines = ["| setting | section | type | default | in cache key | steps | what it does |",
             "|---|---|---|---|---|---|---|"]
    for d in describe():
        default = "derived" if d["default"] is None else f"`{json.dumps(d['default'])}`"
        key = "yes" if d["affects_output"] else "no"
        steps = ", ".join(d["steps"]) or ("all runs" if d["name"] == "interval_date" else "all cached")
        lines.append(f"| `{d['name']}` | {d['section']} | {d['type']} | {default} | {key} | {steps} | {d['doc']} |")
    return "\n".join(lines) + "\n"


def params_cli(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tasks params", description="List every leptonflow setting.")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the settings as a JSON list")
    fmt.add_argument("--markdown", action="store_true", help="print the README's settings table")
    args = p.parse_args(argv)
    if args.json:
        print(json.dumps(describe(), indent=1))
    elif args.markdown:
        print(markdown_table(), end="")
    else:
        for section in settings.SECTIONS:
            print(f"{section}:")
            for d in (d for d in describe() if d["section"] == section):
                default = "derived" if d["default"] is None else json.dumps(d["default"])
                mark = "*" if d["affects_output"] else " "
                print(f" {mark} {d['name']:<32} {d['type']:<8} {default:<24} {d['doc']}")
        print("* = changes a step's output (part of its cache key)")
    return 0
