"""Steps validate_raw and validate_clean: Great Expectations suites evaluated on every row, on Dask.

``run_raw(ctx)`` validates the interval's landing-zone files against ``<dataset>.raw.json``;
``run_clean(ctx)`` validates the committed clean output (and the split's row accounting and
group disjointness) against ``<dataset>.clean.json``, including drift vs the previous
committed clean interval. The engine (``tasks.validation.engine``) merges per-chunk partial
results into one GX ``ExpectationSuiteValidationResult``; Data Docs go to
``<lake>/validation/<dataset>/ds=<ds>/v=<version>/<kind>/index.html``.

Data Docs: GX 1.x renders a page from a result object offline (``ValidationResultsPageRenderer``),
but that page loads its CSS/JS from CDNs, so the page we link is our own self-contained
``index.html``; setting ``gx_data_docs`` also writes GX's page as ``gx.html``
(its Jinja rendering costs 0.5-1 s per run).

setting ``validation_policy``:
- ``fail`` (default): raise :class:`ValidationFailed` listing each failing expectation;
- ``warn``: log the failures and return ``success: False``;
- ``quarantine``: write the raw rows that break failing row-level expectations to the
  ``quarantine_validation`` stage (reason ``validation:<expectation>``) and return
  ``success: False``. Table-level failures (schema, types, row count) cannot be fixed by
  removing rows and still raise. For the clean suite, committed clean output is not
  rewritten: quarantine behaves as warn there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np

from tasks.context import StepContext
from tasks.errors import LeptonflowError
from tasks.io.code_version import code_version
from tasks.io.lake import Manifest, fingerprint
from tasks.resources.cluster import client_for, describe, reachable_dashboard
from tasks.resources.step_metrics import StepMetrics, cluster_metrics
from tasks.validation import datadocs, engine, suites
from tasks.validation.partials import HIST_BINS, exp_columns, quarantine_chunk

log = logging.getLogger(__name__)

QUARANTINE_STAGE = "quarantine_validation"


class ValidationFailed(LeptonflowError, RuntimeError):
    """A suite failed under policy ``fail``; the message lists each failing expectation."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


def _policy(ctx: StepContext) -> str:
    return ctx.param("validation_policy")


def _suite_params(ctx: StepContext) -> dict[str, Any]:
    return {"interval_start": ctx.interval_start.isoformat(), "interval_end": ctx.interval_end.isoformat()}


def _suite_hash(suite: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(suite, sort_keys=True).encode()).hexdigest()[:16]


def _failing(outcome: engine.Outcome) -> list[dict[str, Any]]:
    out = []
    for r in outcome.result.results:
        if r.success:
            continue
        cfg, res = r.expectation_config, r.result or {}
        cols = exp_columns({"kwargs": cfg.kwargs})
        entry = {
            "expectation": cfg.type,
            "column": cols[0] if len(cols) == 1 else (cols or None),
            "unexpected_count": res.get("unexpected_count"),
            "element_count": res.get("element_count"),
        }
        if "observed_value" in res:
            entry["observed_value"] = res["observed_value"]
        msg = (r.exception_info or {}).get("exception_message")
        if msg:
            entry["error"] = msg
        out.append(entry)
    return out


def _describe(f: dict[str, Any]) -> str:
    s = f"{f['expectation']}"
    if f.get("column"):
        s += f" on column {f['column']!r}"
    if f.get("unexpected_count") is not None:
        s += f": {f['unexpected_count']} unexpected of {f['element_count']} rows"
    elif "observed_value" in f:
        s += f": observed {json.dumps(f['observed_value'], default=str)[:200]}"
    if f.get("error"):
        s += f" ({f['error']})"
    return s


def _summary(ctx: StepContext, kind: str, outcome: engine.Outcome, policy: str) -> dict[str, Any]:
    st = outcome.result.statistics
    return {
        "suite": outcome.result.suite_name,
        "kind": kind,
        "dataset": ctx.dataset,
        "ds": ctx.ds,
        "policy": policy,
        "success": bool(outcome.result.success),
        "evaluated_expectations": st["evaluated_expectations"],
        "successful_expectations": st["successful_expectations"],
        "failing": _failing(outcome),
        "rows_validated": outcome.merged["rows"],
        "files": len(outcome.files),
        "chunks": len(outcome.chunks),
    }


def _quarantine(ctx: StepContext, client: Any, outcome: engine.Outcome, crypto: Any) -> dict[str, Any]:
    exps = engine.failing_row_level(outcome)
    lake = ctx.lake
    version, vdir = lake.new_version(QUARANTINE_STAGE, ctx.dataset, ctx.ds)
    futs = (
        []
        if not exps
        else [
            client.submit(
                quarantine_chunk,
                c,
                None,
                exps,
                lake.full_url(f"{vdir}/part-{c.chunk_id:05d}.parquet"),
                f"v={version}/part-{c.chunk_id:05d}.parquet",
                write_crypto=crypto,
                pure=False,
            )
            for c in outcome.chunks
        ]
    )
    entries = [e for e in client.gather(futs) if e is not None]
    # committed with this run's Data Docs by the same commit record (both or neither)
    m = lake.prepare(
        Manifest(
            QUARANTINE_STAGE,
            ctx.dataset,
            ctx.ds,
            version,
            files=entries,
            input_fingerprint=lake.files_fingerprint(ctx.lake.raw_files(ctx.dataset, ctx.ds)),
            code_version=code_version(__name__),
            params={"validation_policy": "quarantine"},
            extra={"expectations": [{"type": e["type"], "column": exp_columns(e)[0]} for e in exps]},
        )
    )
    log.warning("quarantined %d raw rows of %s ds=%s into %s", m.rows, ctx.dataset, ctx.ds, QUARANTINE_STAGE)
    return {"stage": QUARANTINE_STAGE, "rows": m.rows, "files": len(entries)}


def _finish(
    ctx: StepContext,
    kind: str,
    outcome: engine.Outcome,
    policy: str,
    fingerprint: str,
    extra: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    suite_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    summary = _summary(ctx, kind, outcome, policy)
    summary.update(extra or {})
    summary["data_docs"] = datadocs.publish(
        ctx.lake,
        ctx.dataset,
        ctx.ds,
        kind,
        outcome.result,
        summary,
        fingerprint,
        ctx.cache_params(__name__),
        extra_files=extra_files,
        suite_extra=suite_extra,
        gx_page=bool(ctx.param("gx_data_docs")),
        code=code_version(__name__),
        pii_columns=ctx.spec.pii_columns,
    )
    return _apply_policy(summary)


def _apply_policy(summary: dict[str, Any]) -> dict[str, Any]:
    if summary["success"]:
        log.info(
            "%s passed: %d expectations over %d rows",
            summary["suite"],
            summary["evaluated_expectations"],
            summary["rows_validated"],
        )
        return summary
    lines = "\n".join(f"  - {_describe(f)}" for f in summary["failing"])
    msg = (
        f"suite {summary['suite']} failed for ds={summary['ds']}: {len(summary['failing'])} of "
        f"{summary['evaluated_expectations']} expectations failing over {summary['rows_validated']} rows:\n{lines}"
        f"\nData Docs: {summary['data_docs']}"
    )
    table_fail = any(f["expectation"] not in engine.ROW_LEVEL for f in summary["failing"])
    if summary["policy"] == "fail" or (summary["policy"] == "quarantine" and summary["kind"] == "raw" and table_fail):
        raise ValidationFailed(msg, summary)
    log.warning("%s (policy %s: continuing)", msg, summary["policy"])
    return summary


def _metrics(outcome: engine.Outcome, input_bytes: int, size: dict[str, Any]) -> StepMetrics:
    """What a validation run measured: its input, tasks and cluster (not part of the Data Docs summary)."""
    return StepMetrics(input_bytes=input_bytes, input_rows=outcome.merged["rows"], partitions=len(outcome.chunks),
                       **cluster_metrics(size))


def _cached(ctx: StepContext, kind: str, fingerprint: str) -> dict[str, Any] | None:
    m = ctx.lake.manifest(datadocs.STAGE, ctx.dataset, ctx.ds)
    if m is None or m.code_version != code_version(__name__):
        return None
    prev = m.extra.get("suites", {}).get(kind)
    if not prev or prev.get("input_fingerprint") != fingerprint or prev.get("params") != ctx.cache_params(__name__):
        return None
    if not all(ctx.lake.fs.exists(ctx.lake.abspath(m, f)) for f in m.files if datadocs.doc_kind(f.path) == kind):
        return None
    log.info("validation %s of %s ds=%s: cache hit (same input, suite, code and settings)", kind, ctx.dataset, ctx.ds)
    hidden = ("input_fingerprint", "profile_of", "profile_key", "params")
    return _apply_policy({**{k: v for k, v in prev.items() if k not in hidden}, "cache_hit": True})


def run_raw(ctx: StepContext) -> dict[str, Any]:
    """Validate the interval's raw files (every row) against the stored raw suite."""
    policy = _policy(ctx)
    suite = suites.load_suite(ctx.dataset, "raw")
    lake = ctx.lake
    paths = lake.raw_files(ctx.dataset, ctx.ds)
    fp = f"{lake.files_fingerprint(paths)}:{_suite_hash(suite)}:{code_version(__name__)}"
    cached = _cached(ctx, "raw", fp)
    if cached is not None:
        return cached
    if not paths:
        log.warning("no raw files for %s ds=%s under %s", ctx.dataset, ctx.ds, lake.url)
    urls = [lake.full_url(p) for p in paths]
    raw_crypto = None  # the landing zone is written by sources in plain Parquet
    with client_for(ctx.cluster, ctx.plan("clean")) as client:
        outcome = engine.validate(
            client,
            suite,
            urls,
            raw_crypto,
            _suite_params(ctx),
            meta={"dataset": ctx.dataset, "ds": ctx.ds, "run_id": ctx.run_id},
        )
        extra: dict[str, Any] = {}
        table_fail = any(
            not ok and e["type"] not in engine.ROW_LEVEL for e, ok in zip(outcome.exps, outcome.successes, strict=True)
        )
        if policy == "quarantine" and not table_fail:
            # committed even when empty: a re-run must not leave an earlier run's quarantine behind
            extra["quarantine"] = _quarantine(ctx, client, outcome, ctx.crypto())
        size = describe(client)
    metrics = _metrics(outcome, sum(lake.fs.size(p) for p in paths), size)
    return {**_finish(ctx, "raw", outcome, policy, fp, extra), **metrics.to_json(),
            **reachable_dashboard(ctx.cluster, size)}


def _bounds(ctx: StepContext) -> dict[str, tuple[float, float]]:
    return {
        c.name: (float(c.min), float(c.max))
        for c in ctx.spec.columns
        if c.type in ("int", "float") and c.min is not None and c.max is not None
    }


def _urls(ctx: StepContext, m: Manifest, group: str | None = None) -> list[str]:
    return [ctx.lake.full_url(ctx.lake.abspath(m, f)) for f in m.group_files(group)]


PROFILE_FILE = "profile.json"


def _profile_key(suite: dict[str, Any], bounds: dict[str, tuple[float, float]]) -> str:
    drift_rules = [e for e in suite["expectations"] if e["type"] in engine.lfx.DRIFT_TYPES]
    return fingerprint(drift_rules, bounds, HIST_BINS)


def _stored_profile(ctx: StepContext, previous: Manifest, key: str) -> dict[str, Any] | None:
    """The drift profile committed when `previous` was validated, if it was made the same way."""
    vm = ctx.lake.manifest(datadocs.STAGE, ctx.dataset, previous.ds)
    info = vm.extra.get("suites", {}).get("clean", {}) if vm is not None else {}
    if info.get("profile_of") != previous.digest() or info.get("profile_key") != key:
        return None
    entry = next((f for f in vm.files if datadocs.doc_kind(f.path) == "clean" and f.path.endswith(f"/{PROFILE_FILE}")),
                 None)
    if entry is None or not ctx.lake.fs.exists(ctx.lake.abspath(vm, entry)):
        return None
    data = ctx.lake.fs.cat_file(ctx.lake.abspath(vm, entry))
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        log.warning("stored drift profile of ds=%s does not match its manifest checksum: recomputing", previous.ds)
        return None
    prof = json.loads(data)
    prof["hist"] = {c: np.asarray(h, dtype=np.int64) for c, h in prof["hist"].items()}
    log.info("drift baseline: stored profile of %s ds=%s (no re-read of its files)", ctx.dataset, previous.ds)
    return prof


def _profile_bytes(profile: dict[str, Any]) -> bytes:
    return json.dumps({**profile, "hist": {c: h.tolist() for c, h in profile["hist"].items()}}, default=str).encode()


def run_clean(ctx: StepContext) -> dict[str, Any]:
    """Validate the committed clean output (every row), split accounting, and drift vs the previous interval."""
    policy = _policy(ctx)
    suite = suites.load_suite(ctx.dataset, "clean")
    lake = ctx.lake
    clean = lake.require("clean", ctx.dataset, ctx.ds)
    previous = lake.previous_manifest("clean", ctx.dataset, ctx.ds)
    split = lake.manifest("split", ctx.dataset, ctx.ds)
    fp = f"{lake.manifests_fingerprint(clean, previous, split)}:{_suite_hash(suite)}:{code_version(__name__)}"
    cached = _cached(ctx, "clean", fp)
    if cached is not None:
        return cached
    split_info = None
    if split is not None:
        groups = sorted({f.group for f in split.files})
        split_info = {
            "rows": {g: split.rows_in(g) for g in groups},
            "clean_rows": clean.rows,
            "urls": {g: _urls(ctx, split, g) for g in groups},
            "group_column": ctx.spec.group_column,
        }
    bounds = _bounds(ctx)
    pkey = _profile_key(suite, bounds)
    stored = _stored_profile(ctx, previous, pkey) if previous is not None else None
    crypto = ctx.crypto()
    with client_for(ctx.cluster, ctx.plan("clean")) as client:
        outcome = engine.validate(
            client,
            suite,
            _urls(ctx, clean),
            crypto,
            _suite_params(ctx),
            numeric_bounds=bounds,
            previous_urls=_urls(ctx, previous) if previous is not None else None,
            previous_profile=stored,
            split=split_info,
            meta={"dataset": ctx.dataset, "ds": ctx.ds, "run_id": ctx.run_id, "clean_version": clean.version},
        )
        size = describe(client)
    metrics = _metrics(outcome, sum(f.bytes for f in clean.files), size)
    drift = dict(outcome.drift)
    drift["previous_ds"] = previous.ds if previous is not None else None
    drift["baseline"] = "stored profile" if stored is not None else ("recomputed" if previous is not None else None)
    drift["failing"] = [f["column"] for f in _failing(outcome) if f["expectation"] in engine.lfx.DRIFT_TYPES]
    summary = _finish(
        ctx,
        "clean",
        outcome,
        policy,
        fp,
        {"drift": drift},
        extra_files={PROFILE_FILE: _profile_bytes(outcome.merged["profile"])},
        suite_extra={"profile_of": clean.digest(), "profile_key": pkey},
    )
    return {**summary, **metrics.to_json(), **reachable_dashboard(ctx.cluster, size)}


def read_quarantine(ctx: StepContext) -> list[str]:
    """URLs of the committed validation quarantine files of the interval (for readers and tests)."""
    m = ctx.lake.require(QUARANTINE_STAGE, ctx.dataset, ctx.ds)
    return [ctx.lake.full_url(ctx.lake.abspath(m, f)) for f in m.files]
