"""Distributed validation: chunks on Dask workers, partial results merged into ONE GX result.

GX has no Dask execution engine, so leptonflow evaluates the suite itself, every row:

1. plan: read each file's footer (schema, row groups) on the client; table-level rules
   (columns, types, row count) are decided from footers, naming the offending files;
2. map: one task per chunk (a run of row groups) counts element/missing/unexpected per
   row-level expectation, keeps a few examples, profiles drift columns and hash-partitions
   key hashes into buckets;
3. reduce: partial counts are summed; uniqueness is exact in two rounds: per hash bucket, the
   64-bit key hashes seen twice are the only candidates; only if there are any, the chunks
   send the keys with those hashes and duplicates are counted on the real key values;
4. build: a real ``ExpectationSuiteValidationResult`` of ``ExpectationValidationResult``s
   with GX's result fields (element_count, unexpected_count, unexpected_percent, ...).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed import Client
from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

from tasks.errors import LeptonflowError
from tasks.io import parquet as parquet_io
from tasks.validation import drift, partials
from tasks.validation import expectations as lfx
from tasks.validation.partials import ROW_LEVEL, UNIQUE, Chunk, Profile

log = logging.getLogger(__name__)

CHUNK_ROWS = 256 * 1024  # rows per map task: a few row groups, bounded worker memory
BUCKET_ROWS = 8_000_000  # at most this many keys per uniqueness reduce task (on average)
TABLE_LEVEL = {
    "expect_table_row_count_to_be_between",
    "expect_table_columns_to_match_set",
    "expect_table_columns_to_match_ordered_list",
    "expect_column_values_to_be_of_type",
    "expect_column_values_to_be_in_type_list",
}
SUPPORTED = TABLE_LEVEL | ROW_LEVEL | UNIQUE | lfx.DRIFT_TYPES | lfx.SPLIT_TYPES
MAX_FILES_NAMED = 10


class SuiteNotSupported(LeptonflowError, ValueError):
    """The suite has an expectation type the distributed engine does not evaluate."""


@dataclass
class FileFacts:
    url: str
    columns: list[str]
    types: dict[str, str]
    rows: int


@dataclass
class Outcome:
    result: ExpectationSuiteValidationResult
    exps: list[dict[str, Any]]
    successes: list[bool]
    merged: dict[str, Any]
    chunks: list[Chunk]
    files: list[FileFacts]
    drift: dict[str, Any] = field(default_factory=dict)
    previous_profile: dict[str, Any] | None = None


def resolve(suite: dict[str, Any], suite_params: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's expectations with ``$PARAMETER`` kwargs filled, numbered in suite order."""
    out = []
    for i, cfg in enumerate(suite["expectations"]):
        if cfg["type"] not in SUPPORTED:
            raise SuiteNotSupported(f"suite {suite['name']!r}: expectation {cfg['type']!r} is not supported")
        kw = copy.deepcopy(cfg["kwargs"])
        for k, v in kw.items():
            if isinstance(v, dict) and "$PARAMETER" in v:
                name = v["$PARAMETER"]
                if name not in suite_params:
                    raise SuiteNotSupported(f"suite {suite['name']!r}: no value for suite parameter {name!r}")
                kw[k] = suite_params[name]
        out.append({"i": i, "type": cfg["type"], "kwargs": kw, "meta": cfg.get("meta") or {}})
    return out


def plan(urls: list[str], crypto: Any, chunk_rows: int | None = None) -> tuple[list[Chunk], list[FileFacts]]:
    """Footers of every file -> chunks of consecutive row groups, and per-file schema facts."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    chunks: list[Chunk] = []
    facts: list[FileFacts] = []
    for url in urls:
        pf = parquet_io.open_parquet(url, crypto)
        schema = pf.schema_arrow
        facts.append(FileFacts(url, schema.names, {f.name: str(f.type) for f in schema}, pf.metadata.num_rows))
        run: list[int] = []
        rows = 0
        for g in range(pf.num_row_groups):
            run.append(g)
            rows += pf.metadata.row_group(g).num_rows
            if rows >= chunk_rows:
                chunks.append(Chunk(url, run, rows, len(chunks), schema.names))
                run, rows = [], 0
        if run:
            chunks.append(Chunk(url, run, rows, len(chunks), schema.names))
    return chunks, facts


def _files_named(files: list[str]) -> list[str]:
    return files[:MAX_FILES_NAMED] + (
        [f"... {len(files) - MAX_FILES_NAMED} more"] if len(files) > MAX_FILES_NAMED else []
    )


def _table_level(e: dict[str, Any], files: list[FileFacts], rows: int) -> tuple[bool, dict[str, Any], str | None]:
    kind, kw = e["type"], e["kwargs"]
    if kind == "expect_table_row_count_to_be_between":
        lo, hi = kw.get("min_value"), kw.get("max_value")
        ok = (lo is None or rows >= lo) and (hi is None or rows <= hi)
        return ok, {"observed_value": rows}, None
    if kind in ("expect_table_columns_to_match_set", "expect_table_columns_to_match_ordered_list"):
        want = list(kw.get("column_set") or kw.get("column_list") or [])
        bad: dict[str, dict[str, Any]] = {}
        for f in files:
            missing = [c for c in want if c not in f.columns]
            unexpected = [c for c in f.columns if c not in want]
            exact = kind.endswith("ordered_list") or kw.get("exact_match", True)
            order_ok = not kind.endswith("ordered_list") or f.columns == want
            if missing or (exact and unexpected) or not order_ok:
                bad[f.url] = {"missing": missing, "unexpected": unexpected if exact else [], "observed": f.columns}
        observed = sorted({c for f in files for c in f.columns})
        mism = {
            "missing": sorted({c for b in bad.values() for c in b["missing"]}),
            "unexpected": sorted({c for b in bad.values() for c in b["unexpected"]}),
        }
        details = {"mismatched": mism, "files": {u: bad[u] for u in _files_named(list(bad)) if u in bad}}
        msg = None
        if bad:
            msg = f"columns missing {mism['missing']} / unexpected {mism['unexpected']} in {_files_named(list(bad))}"
        return not bad, {"observed_value": observed, "details": details}, msg
    col = kw["column"]
    allowed = [kw["type_"]] if kind == "expect_column_values_to_be_of_type" else list(kw["type_list"])
    observed: dict[str, list[str]] = {}
    for f in files:
        if col in f.types:
            observed.setdefault(f.types[col], []).append(f.url)
    wrong = {t: us for t, us in observed.items() if t not in allowed}
    absent = [f.url for f in files if col not in f.types]
    details = {
        "files_by_type": {t: _files_named(us) for t, us in observed.items()},
        "files_missing_column": _files_named(absent),
    }
    msg = None
    if wrong:
        msg = "; ".join(f"type {t} (expected {' | '.join(allowed)}) in {_files_named(us)}" for t, us in wrong.items())
    elif absent:
        msg = f"column missing in {_files_named(absent)}"
    return not wrong and not absent, {"observed_value": sorted(observed)}, msg


def _row_level(e: dict[str, Any], m: dict[str, Any] | None) -> tuple[bool, dict[str, Any]]:
    m = m or {"element_count": 0, "missing_count": 0, "unexpected_count": 0, "examples": []}
    n, miss, unexp = m["element_count"], m["missing_count"], m["unexpected_count"]
    nonmissing = n - miss
    pct = lambda a, b: (100.0 * a / b) if b else 0.0  # noqa: E731
    res: dict[str, Any] = {
        "element_count": n,
        "unexpected_count": unexp,
        "unexpected_percent": pct(unexp, nonmissing if e["type"] != "expect_column_values_to_not_be_null" else n),
        "unexpected_percent_total": pct(unexp, n),
        "partial_unexpected_list": m["examples"],
    }
    if e["type"] != "expect_column_values_to_not_be_null":
        res.update(
            missing_count=miss, missing_percent=pct(miss, n), unexpected_percent_nonmissing=pct(unexp, nonmissing)
        )
    mostly = float(e["kwargs"].get("mostly", 1.0))
    denom = n if e["type"] == "expect_column_values_to_not_be_null" else nonmissing
    ok = denom == 0 or (denom - unexp) / denom >= mostly
    obs = m.get("observed")
    if obs is not None:  # the observed range over all rows (and mean for numbers), for the docs
        mean = obs["sum"] / obs["count"] if obs["sum"] is not None and obs["count"] else None
        res["details"] = {"observed_min": _iso(obs["min"]), "observed_max": _iso(obs["max"]), "observed_mean": mean}
    return ok, res


def _iso(v: Any) -> Any:
    return v.isoformat() if hasattr(v, "isoformat") else v


def _n_buckets(client: Client, rows: int) -> int:
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1).get("workers", {}).values())
    return max(1, threads, math.ceil(rows / BUCKET_ROWS))


def _profile_for(exps: list[dict[str, Any]], numeric_bounds: dict[str, tuple[float, float]]) -> Profile:
    prof = Profile()
    for e in exps:
        col = e["kwargs"].get("column")
        if e["type"] == "expect_column_psi_to_be_below" and col in numeric_bounds:
            prof.numeric[col] = numeric_bounds[col]
        elif e["type"] == "expect_column_category_share_delta_to_be_below":
            prof.category.append(col)
        elif e["type"] == "expect_column_null_rate_delta_to_be_below":
            prof.nulls.append(col)
    return prof


def _submit_profile(client: Client, urls: list[str], crypto: Any, prof: Profile) -> list[Any]:
    """Map tasks profiling other files (the previous interval), reading only the profiled columns."""
    chunks, _ = plan(urls, crypto)
    futs = client.map(
        partials.evaluate_chunk, chunks, crypto=crypto, exps=[], profile=prof, key_columns=[], n_buckets=1, pure=False
    )
    return client.map(partials.first, futs, pure=False)


def _submit_split_disjointness(client: Client, urls_by_split: dict[str, list[str]], crypto: Any, column: str) -> list:
    """Reduce tasks counting values of `column` that occur in more than one split (exact, via hash buckets)."""
    chunks_by: list[tuple[Chunk, str]] = []
    for split, urls in urls_by_split.items():
        chunks, _ = plan(urls, crypto)
        chunks_by += [(c, split) for c in chunks]
    b = _n_buckets(client, sum(c.rows for c, _ in chunks_by))
    futs = [client.submit(partials.split_groups_chunk, c, crypto, column, s, b, pure=False) for c, s in chunks_by]
    return [
        client.submit(
            partials.count_shared_groups, *[client.submit(partials.pick, f, j, pure=False) for f in futs], pure=False
        )
        for j in range(b)
    ]


def _merge_shared(reds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"groups": 0, "shared": 0, "examples": []}
    for r in reds:
        out["groups"] += r["groups"]
        out["shared"] += r["shared"]
        out["examples"] += r["examples"][: partials.MAX_EXAMPLES - len(out["examples"])]
    return out


@dataclass
class _Plan:
    """The suite resolved and planned over the files: what the map tasks are given."""

    exps: list[dict[str, Any]]
    chunks: list[Chunk]
    files: list[FileFacts]
    key_cols: list[str]  # the uniqueness rule's key columns; empty: no uniqueness rule
    prof: Profile
    n_buckets: int  # hash buckets of the uniqueness reduce (1 without a key)


@dataclass
class _Futures:
    """Everything ``validate`` submits, before it gathers anything."""

    chunk_f: list[Any] | None  # evaluate_chunk results: held until the candidates are in, then released
    part_f: list[Any]  # each chunk's partial counts
    cand_f: list[Any]  # per hash bucket: key hashes seen twice (uniqueness round 1); empty without a key
    prev_f: list[Any]  # profiles of the previous interval's files, when they are profiled here
    shared_f: list[Any]  # per hash bucket: groups found in more than one split


@dataclass
class _Gathered:
    """The merged results every expectation is judged on."""

    merged: dict[str, Any]  # partials.merge_partials of all chunks
    dups: list[dict[str, Any]]  # uniqueness round 2 (exact duplicate count), when round 1 found candidates
    previous: dict[str, Any] | None  # the drift baseline's profile
    split_info: dict[str, Any]  # the `split` argument, with "disjoint" added when it was checked


def _key_columns(exps: list[dict[str, Any]]) -> list[str]:
    """Key columns of the suite's uniqueness rule (the last one, if several); [] when there is none."""
    key_cols: list[str] = []
    for e in exps:
        if e["type"] in UNIQUE:
            key_cols = partials.exp_columns(e)
    return key_cols


def _plan_suite(
    client: Client,
    suite: dict[str, Any],
    urls: list[str],
    crypto: Any,
    suite_params: dict[str, Any],
    numeric_bounds: dict[str, tuple[float, float]] | None,
) -> _Plan:
    """Resolve the suite, plan chunks from the footers and size the uniqueness buckets."""
    exps = resolve(suite, suite_params)
    chunks, files = plan(urls, crypto)
    rows_footer = sum(f.rows for f in files)
    key_cols = _key_columns(exps)
    prof = _profile_for(exps, numeric_bounds or {})
    b = _n_buckets(client, rows_footer) if key_cols else 1
    log.info(
        "validating %s: %d files, %d rows, %d chunks, %d dup buckets",
        suite["name"],
        len(files),
        rows_footer,
        len(chunks),
        b if key_cols else 0,
    )
    return _Plan(exps, chunks, files, key_cols, prof, b)


def _submit_candidates(client: Client, chunk_f: list[Any], n_buckets: int) -> list[Any]:
    """Uniqueness, round 1: per hash bucket, a reduce task finding the key hashes seen more than once."""
    return [
        client.submit(
            partials.candidate_hashes, *[client.submit(partials.bucket, f, j, pure=False) for f in chunk_f], pure=False
        )
        for j in range(n_buckets)
    ]


def _submit(
    client: Client,
    p: _Plan,
    crypto: Any,
    previous_urls: list[str] | None,
    previous_profile: dict[str, Any] | None,
    split_info: dict[str, Any],
) -> _Futures:
    """Submit every phase's tasks (map, uniqueness round 1, previous profile, split disjointness) at once."""
    row_exps = [e for e in p.exps if e["type"] in ROW_LEVEL or e["type"] in UNIQUE]
    chunk_f = client.map(
        partials.evaluate_chunk,
        p.chunks,
        crypto=crypto,
        exps=row_exps,
        profile=p.prof,
        key_columns=p.key_cols,
        n_buckets=p.n_buckets,
        pure=False,
    )
    part_f = client.map(partials.first, chunk_f, pure=False)
    cand_f = _submit_candidates(client, chunk_f, p.n_buckets) if p.key_cols else []
    prev_f = []
    if previous_urls and previous_profile is None:  # the previous interval is profiled here
        prev_f = _submit_profile(client, previous_urls, crypto, p.prof)
    shared_f = []
    if split_info.get("urls") and any(e["type"] == "expect_split_groups_to_be_disjoint" for e in p.exps):
        shared_f = _submit_split_disjointness(client, split_info["urls"], crypto, split_info["group_column"])
    return _Futures(chunk_f, part_f, cand_f, prev_f, shared_f)


def _exact_duplicates(client: Client, p: _Plan, fut: _Futures, crypto: Any) -> list[dict[str, Any]]:
    """Uniqueness, round 2: duplicates counted on the exact keys whose hashes repeat ([] when none repeat)."""
    if not fut.cand_f:
        return []
    cands = np.concatenate(client.gather(fut.cand_f))
    fut.chunk_f = None  # the map results (with their key hashes) are no longer needed: let the cluster drop them
    if not cands.size:
        return []
    log.info("uniqueness: %d repeated key hashes; comparing their exact keys", cands.size)
    cand = client.scatter(cands, broadcast=True)
    keys_f = client.map(
        partials.keys_with_hashes, p.chunks, crypto=crypto, key_columns=p.key_cols, candidates=cand, pure=False
    )
    return [client.submit(partials.count_duplicates, *keys_f, pure=False).result()]


def _gather(
    client: Client,
    p: _Plan,
    fut: _Futures,
    crypto: Any,
    previous_profile: dict[str, Any] | None,
    split_info: dict[str, Any],
) -> _Gathered:
    """Gather the submitted phases (running uniqueness round 2 when round 1 found candidates)."""
    merged = partials.merge_partials(client.gather(fut.part_f))
    dups = _exact_duplicates(client, p, fut, crypto)
    previous = previous_profile
    if fut.prev_f:
        previous = partials.merge_profiles([pr["profile"] for pr in client.gather(fut.prev_f)])
    if fut.shared_f:
        split_info["disjoint"] = _merge_shared(client.gather(fut.shared_f))
    return _Gathered(merged, dups, previous, split_info)


def _unique(e: dict[str, Any], g: _Gathered) -> tuple[bool, dict[str, Any]]:
    """A uniqueness rule judged on round 2's exact duplicate count, over all rows."""
    unexp = sum(d["unexpected_count"] for d in g.dups)
    ex = [x for d in g.dups for x in d["examples"]][: partials.MAX_EXAMPLES]
    m = {
        "element_count": g.merged["rows"],
        "missing_count": g.merged["key_missing"],
        "unexpected_count": unexp,
        "examples": ex,
    }
    return _row_level(e, m)


def _drift_rule(e: dict[str, Any], g: _Gathered, drift_summary: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """A drift rule against the previous interval's profile; its observed value goes into `drift_summary` too."""
    kind = e["type"]
    ok, res = drift.evaluate(e, g.previous, g.merged["profile"])
    col = e["kwargs"]["column"]
    drift_summary["columns"].setdefault(col, {})[
        kind.removeprefix("expect_column_").removesuffix("_to_be_below")
    ] = res["observed_value"]
    return ok, res


def _split_rows(split_info: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """expect_split_rows_to_match_clean: the splits' rows add up to the clean rows (passes with no split output)."""
    total = sum(split_info.get("rows", {}).values())
    ok = bool(split_info) and total == split_info.get("clean_rows")
    res = {
        "observed_value": total,
        "details": {"clean_rows": split_info.get("clean_rows"), "rows_by_split": split_info.get("rows", {})},
    }
    if not split_info:
        ok, res = True, {"observed_value": None, "details": {"note": "no committed split output"}}
    return ok, res


def _split_disjoint(split_info: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """expect_split_groups_to_be_disjoint: no group in two splits (passes with no split output)."""
    d = split_info.get("disjoint")
    if d is None:
        return True, {"observed_value": None, "details": {"note": "no committed split output"}}
    res = {
        "observed_value": d["shared"],
        "details": {"groups": d["groups"], "shared_examples": d["examples"]},
    }
    return d["shared"] == 0, res


def _judge(
    e: dict[str, Any], files: list[FileFacts], g: _Gathered, drift_summary: dict[str, Any]
) -> tuple[bool, dict[str, Any], str | None]:
    """(success, GX result fields, error message) of one expectation, before chunk errors are applied."""
    kind = e["type"]
    if kind in TABLE_LEVEL:
        return _table_level(e, files, g.merged["rows"])
    if kind in ROW_LEVEL:
        ok, res = _row_level(e, g.merged["exp"].get(e["i"]))
    elif kind in UNIQUE:
        ok, res = _unique(e, g)
    elif kind in lfx.DRIFT_TYPES:
        ok, res = _drift_rule(e, g, drift_summary)
    elif kind == "expect_split_rows_to_match_clean":
        ok, res = _split_rows(g.split_info)
    else:  # expect_split_groups_to_be_disjoint
        ok, res = _split_disjoint(g.split_info)
    return ok, res, None


def _expectation_result(
    e: dict[str, Any], files: list[FileFacts], g: _Gathered, drift_summary: dict[str, Any]
) -> tuple[ExpectationValidationResult, bool]:
    """One expectation's GX result and success; a rule some chunk could not evaluate fails with their messages."""
    ok, res, err = _judge(e, files, g, drift_summary)
    errs = g.merged["errors"].get(e["i"])
    if errs:
        ok = False
        err = "; ".join(errs[:MAX_FILES_NAMED])
    exc_info = {
        "raised_exception": err is not None and e["type"] not in TABLE_LEVEL,
        "exception_message": err,
        "exception_traceback": None,
    }
    cfg = ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"], meta=e["meta"])
    result = ExpectationValidationResult(success=bool(ok), expectation_config=cfg, result=res, exception_info=exc_info)
    return result, bool(ok)


def _suite_result(
    suite: dict[str, Any],
    suite_params: dict[str, Any],
    results: list[ExpectationValidationResult],
    successes: list[bool],
    p: _Plan,
    rows_validated: int,
    meta: dict[str, Any] | None,
) -> ExpectationSuiteValidationResult:
    """The suite's GX result: the expectations' results, GX statistics, and leptonflow's run facts in meta."""
    n_ok = sum(successes)
    stats = {
        "evaluated_expectations": len(results),
        "successful_expectations": n_ok,
        "unsuccessful_expectations": len(results) - n_ok,
        "success_percent": 100.0 * n_ok / len(results) if results else 100.0,
    }
    gx_meta = {
        "leptonflow": {
            **(meta or {}),
            "engine": "dask",
            "files": len(p.files),
            "chunks": len(p.chunks),
            "rows_validated": rows_validated,
        }
    }
    return ExpectationSuiteValidationResult(
        success=all(successes),
        results=results,
        suite_name=suite["name"],
        suite_parameters=suite_params,
        statistics=stats,
        meta=gx_meta,
    )


def validate(
    client: Client,
    suite: dict[str, Any],
    urls: list[str],
    crypto: Any,
    suite_params: dict[str, Any],
    *,
    numeric_bounds: dict[str, tuple[float, float]] | None = None,
    previous_urls: list[str] | None = None,
    previous_profile: dict[str, Any] | None = None,
    split: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Outcome:
    """Validate every row of `urls` against `suite` on the cluster behind `client`.

    Drift baseline: `previous_profile` (a stored merged profile) or else `previous_urls` (the previous
    interval's files, profiled here); neither = no previous interval.
    `split`: {"rows": {group: n}, "clean_rows": n, "urls": {group: [url]}, "group_column": c} for split checks.
    All work is submitted before anything is gathered, so the cluster never idles between phases.
    """
    p = _plan_suite(client, suite, urls, crypto, suite_params, numeric_bounds)
    split_info = dict(split or {})
    fut = _submit(client, p, crypto, previous_urls, previous_profile, split_info)
    g = _gather(client, p, fut, crypto, previous_profile, split_info)
    drift_summary: dict[str, Any] = {"previous": g.previous is not None, "columns": {}}
    results: list[ExpectationValidationResult] = []
    successes: list[bool] = []
    for e in p.exps:
        r, ok = _expectation_result(e, p.files, g, drift_summary)
        results.append(r)
        successes.append(ok)
    result = _suite_result(suite, suite_params, results, successes, p, g.merged["rows"], meta)
    return Outcome(result, p.exps, successes, g.merged, p.chunks, p.files, drift_summary, g.previous)


def failing_row_level(outcome: Outcome) -> list[dict[str, Any]]:
    """Failing expectations whose offending rows can be singled out (for the quarantine policy)."""
    return [e for e, ok in zip(outcome.exps, outcome.successes, strict=True) if not ok and e["type"] in ROW_LEVEL]
