"""Data Docs: one static HTML page per validation run, committed in the lake.

``<lake>/validation/<dataset>/ds=<ds>/v=<version>/<kind>/index.html`` is a self-contained page
(no CDN, readable offline) built from the GX result; next to it ``gx.html`` is GX's own
``ValidationResultsPageRenderer`` page (its styling loads from CDNs) and ``result.json``
is the GX result JSON. One ``validation`` manifest per interval lists the files of every
suite kind run so far (raw and clean runs are separate steps; each keeps the other's pages,
which stay in the version folder they were committed in).
"""

from __future__ import annotations

import copy
import html
import json
import logging
from collections.abc import Collection
from typing import Any

from great_expectations.core import ExpectationSuiteValidationResult

from tasks.io.lake import Lake, Manifest
from tasks.validation.partials import exp_columns
from tasks.validation.pii import mask_result, mask_summary

log = logging.getLogger(__name__)

STAGE = "validation"
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0} tr.fail td{background:#fde8e8} tr.ok td{background:#eefaee}
.badge{padding:2px 8px;border-radius:4px;color:#fff} .pass{background:#2a7} .failb{background:#c33}
code{font-size:12px;white-space:pre-wrap}
"""


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, dict | list):
        return f"<code>{html.escape(json.dumps(v, default=str)[:600])}</code>"
    return html.escape(str(v))


def mask_validation(
    result: ExpectationSuiteValidationResult, pii: Collection[str] | None
) -> ExpectationSuiteValidationResult:
    """A copy of `result` whose expectation results carry no example value of a PII column."""
    masked = copy.deepcopy(result)
    for r in masked.results:
        cols = exp_columns({"kwargs": dict(r.expectation_config.kwargs)})
        r.result = mask_result(dict(r.result or {}), cols, pii)
    return masked


def render_html(d: dict[str, Any], title: str, summary: dict[str, Any], gx_page: bool = True) -> str:
    """A self-contained HTML page with one row per expectation result (`d`: the GX result as JSON)."""
    rows = []
    for r in d["results"]:
        cfg, res = r["expectation_config"], r.get("result") or {}
        kw = dict(cfg["kwargs"])
        col = kw.pop("column", None) or kw.pop("column_list", None) or ""
        exc = (r.get("exception_info") or {}).get("exception_message")
        observed = res.get("observed_value", res.get("partial_unexpected_list"))
        rows.append(
            f"<tr class={'ok' if r['success'] else 'fail'}><td>{'✓' if r['success'] else '✗'}</td>"
            f"<td>{_cell(cfg['type'])}</td><td>{_cell(col)}</td><td>{_cell(kw)}</td>"
            f"<td>{_cell(res.get('element_count'))}</td><td>{_cell(res.get('unexpected_count'))}</td>"
            f"<td>{_cell(round(res['unexpected_percent'], 4) if 'unexpected_percent' in res else None)}</td>"
            f"<td>{_cell(observed)}</td><td>{_cell(res.get('details'))}{_cell(exc)}</td></tr>"
        )
    st = d["statistics"]
    gx_link = "<a href='gx.html'>GX rendering</a> · " if gx_page else ""
    badge = '<span class="badge pass">PASSED</span>' if d["success"] else '<span class="badge failb">FAILED</span>'
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in summary.items())
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)} {badge}</h1>"
        f"<p>{st['successful_expectations']} of {st['evaluated_expectations']} expectations passed "
        f"({st['success_percent']:.1f}%). Suite <b>{html.escape(d['suite_name'])}</b>, evaluated on every row "
        f"by leptonflow's Dask engine. {gx_link}<a href='result.json'>GX result JSON</a>"
        f"</p><table>{facts}</table><h2>Expectations</h2><table><tr><th></th><th>expectation</th><th>column</th>"
        f"<th>kwargs</th><th>elements</th><th>unexpected</th><th>unexpected %</th><th>observed / examples</th>"
        f"<th>details</th></tr>{''.join(rows)}</table></body></html>"
    )


def render_gx_html(result: ExpectationSuiteValidationResult) -> str | None:
    """GX's own validation page, or None when its renderer cannot handle the result."""
    try:
        from great_expectations.render.renderer import ValidationResultsPageRenderer
        from great_expectations.render.view import DefaultJinjaPageView

        return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))
    except Exception:  # GX rendering is a nicety: never fail a validation because of it
        log.warning("GX renderer could not render %s", result.suite_name, exc_info=True)
        return None


def doc_kind(path: str) -> str:
    """The suite kind of a Data Docs file path: ``v=<version>/raw/index.html`` (and format-1 ``raw/index.html``)."""
    parts = path.split("/")
    return parts[1] if parts[0].startswith("v=") and len(parts) > 2 else parts[0]


def publish(
    lake: Lake,
    dataset: str,
    ds: str,
    kind: str,
    result: ExpectationSuiteValidationResult,
    summary: dict[str, Any],
    fingerprint: str,
    params: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
    suite_extra: dict[str, Any] | None = None,
    gx_page: bool = True,
    code: str = "",
    *,
    pii_columns: Collection[str] | None,
) -> str:
    """Write and commit the Data Docs of one run; returns the URL of its index.html.

    Example values of `pii_columns` (the spec's ``pii: true`` columns; None: unknown, mask every
    column) are masked in every page and in result.json: only counts and percents stay.

    `extra_files` (e.g. the drift profile the next interval compares against) are committed
    beside the pages; `suite_extra` is recorded with this suite's entry in the manifest.
    `gx_page=False` skips GX's own page (its Jinja rendering costs ~1 s per run).
    """
    result, summary = mask_validation(result, pii_columns), mask_summary(summary, pii_columns)
    doc = result.to_json_dict()  # GX's serialization is slow-ish: once for both pages
    pages = {
        "index.html": render_html(doc, f"{dataset} {kind} validation ds={ds}", summary, gx_page).encode(),
        "result.json": json.dumps(doc, indent=1, default=str).encode(),
    }
    gx_html = render_gx_html(result) if gx_page else None
    if gx_html is not None:
        pages["gx.html"] = gx_html.encode()
    pages.update(extra_files or {})
    # Pages go into this run's own version folder (v=<version>/<kind>/...), never over committed ones: a run
    # that fails or is superseded leaves the committed pages as they were signed.
    version, vdir = lake.new_version(STAGE, dataset, ds)
    entries = [lake.put_bytes(vdir, version, f"{kind}/{name}", data) for name, data in pages.items()]
    prev = lake.manifest(STAGE, dataset, ds)
    keep = [f for f in (prev.files if prev else []) if doc_kind(f.path) != kind]  # the other suites' pages
    suites = dict(prev.extra.get("suites", {})) if prev else {}
    suites[kind] = {**summary, **(suite_extra or {}), "input_fingerprint": fingerprint, "params": params}
    lake.commit(
        Manifest(
            STAGE,
            dataset,
            ds,
            version,
            files=keep + entries,
            input_fingerprint=fingerprint,
            code_version=code,
            params=params,
            extra={"suites": suites},
        ),
        expect={STAGE: prev.version if prev else None},  # merged from `prev`: refused if another run came between
    )
    return lake.full_url(f"{vdir}/{kind}/index.html")
