"""What happened to one interval, read back from the lake: the demo summary and the report pages.

Everything comes from committed, signature-checked manifests (and the run-history
DB for forecast vs actual), so the report shows what is really in the lake,
not what a task claimed. Pages escape everything they render; URL parts are checked
(:func:`check_request`) before they touch the lake; Data Docs files are served only when
their signed ``validation`` manifest lists them and their sha256 matches (:func:`docs_file`);
example values of the spec's PII columns are masked.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import mimetypes
import posixpath
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import quote

import fsspec

from tasks.context import StepContext
from tasks.errors import LeptonflowError, UsageError
from tasks.io import verified
from tasks.io.lake import Manifest
from tasks.spec import NAME_MAX, NAME_RE, parse_interval
from tasks.validation.pii import mask_summary

log = logging.getLogger(__name__)

STAGES = ("clean", "quarantine", "split", "validation", "secure", "model", "evaluation", "compressed")
# The only stage whose files are served: Data Docs pages and GX JSON (tasks.validation.datadocs.STAGE;
# not imported from there, it imports Great Expectations and every Airflow process imports the plugin).
DOCS_STAGE = "validation"
DOCS_SUFFIXES = (".html", ".json", ".png")
# An interval as the lake names it: an ISO date or date-time (what StepContext parses), nothing else.


class ReportRequestError(LeptonflowError):
    """A report request names no valid dataset, interval or file; the message says which part."""


class MalformedRequest(ReportRequestError, ValueError):
    """A URL part is not of its form (an interval that is not an ISO date, a path with ``..``)."""


class NotInLake(ReportRequestError, LookupError):
    """The dataset, interval or file is not (committed) in the lake, or is not one the report serves."""


def check_request(dataset: str, ds: str) -> None:
    """Refuse a dataset that is not a dataset name and an interval that is not an ISO date or hour.

    Raises:
        NotInLake: `dataset` cannot be a dataset (names are ``[a-z][a-z0-9_]*``, as DAG ids need).
        MalformedRequest: `ds` is not an interval.
    """
    if not NAME_RE.fullmatch(dataset) or len(dataset) > NAME_MAX:
        raise NotInLake(f"unknown dataset {dataset!r}")
    try:
        parse_interval(ds)  # the same interval grammar as the steps: an ISO date or an ISO hour
    except UsageError:
        raise MalformedRequest(f"interval {ds!r} is not an ISO date (YYYY-MM-DD) or hour (YYYY-MM-DDTHH)") from None


def committed_intervals(url: str) -> list[tuple[str, str]]:
    """(dataset, ds) of every interval with a clean-stage folder in the lake at `url`, newest first.
    Folders that are not a dataset name or an interval (hostile or stray names) are left out."""
    fs, root = fsspec.core.url_to_fs(url)
    pairs = []
    for p in fs.glob(f"{root.rstrip('/')}/clean/*/ds=*"):
        dataset, ds = posixpath.basename(posixpath.dirname(p)), posixpath.basename(p)[3:]
        try:
            check_request(dataset, ds)
        except ReportRequestError:
            log.warning("report index: ignoring lake folder %r (not a dataset interval)", p)
            continue
        pairs.append((dataset, ds))
    return sorted(pairs, key=lambda pair: (pair[1], pair[0]), reverse=True)


def pii_columns(ctx: StepContext) -> list[str] | None:
    """The spec's PII columns, or None (mask every column) when the dataset's spec cannot be read."""
    try:
        return list(ctx.spec.pii_columns)
    except Exception as exc:  # an unreadable spec must not unmask anything
        log.warning("spec of %s unavailable (%s): masking example values of every column", ctx.dataset, exc)
        return None


def _masked_extra(stage: str, extra: dict[str, Any], pii: Collection[str] | None) -> dict[str, Any]:
    if stage != DOCS_STAGE or not isinstance(extra.get("suites"), dict):
        return extra
    suites = {k: mask_summary(v, pii) for k, v in extra["suites"].items()}
    return {**extra, "suites": suites}


def unversioned(path: str) -> str:
    """A manifest file path without its ``v=<version>/`` folder: how the report names files
    (``raw/index.html``); :func:`docs_file` accepts both forms."""
    return path.split("/", 1)[1] if path.startswith("v=") and "/" in path else path


def _manifest(ctx: StepContext, stage: str) -> Manifest | None:
    try:
        return ctx.lake.manifest(stage, ctx.dataset, ctx.ds)
    except Exception as exc:  # a broken manifest is reported, not hidden
        log.warning("cannot read %s manifest: %s", stage, exc)
        return None


def _history(ctx: StepContext) -> list[dict[str, Any]]:
    try:
        from tasks.resources import history
        out = []
        for stage in ("validate_raw", "clean", "split", "validate_clean", "train"):
            out += [r.to_dict() for r in history.runs(ctx.history_url, stage, dataset=ctx.dataset) if r.ds == ctx.ds]
        return out
    except Exception as exc:
        log.warning("run history unavailable: %s", exc)
        return []


def _published(ctx: StepContext) -> dict[str, Any]:
    fs, root = fsspec.core.url_to_fs(ctx.artifacts_url)
    pointer = f"{root.rstrip('/')}/models/{ctx.dataset}/latest.json"
    if not fs.exists(pointer):
        return {}
    try:
        doc = json.loads(fs.cat_file(pointer))
    except ValueError:
        return {}
    doc["artifact_url"] = f"{ctx.artifacts_url.rstrip('/')}/models/{ctx.dataset}/{doc.get('version')}"
    return doc


def collect(dataset: str, ds: str, **overrides: Any) -> dict[str, Any]:
    """All facts about one interval as plain JSON (PII example values masked).

    Raises:
        ReportRequestError: `dataset` or `ds` is not valid (see :func:`check_request`).
    """
    check_request(dataset, ds)
    ctx = StepContext(dataset=dataset, ds=ds, **overrides)
    pii = pii_columns(ctx)
    out: dict[str, Any] = {"dataset": dataset, "ds": ds, "lake": ctx.lake_url, "artifacts": ctx.artifacts_url}
    raw = ctx.lake.raw_files(dataset, ds)
    out["raw_files"] = len(raw)
    stages: dict[str, Any] = {}
    for stage in STAGES:
        m = _manifest(ctx, stage)
        if m is None:
            continue
        stages[stage] = {
            "rows": m.rows,
            "files": len(m.files),
            "bytes": sum(f.bytes for f in m.files),
            "version": m.version,
            "signed": bool(m.signature),
            "groups": {g: m.rows_in(g) for g in sorted({f.group for f in m.files}) if g},
            "extra": _masked_extra(stage, m.extra, pii),
            "file_paths": {unversioned(f.path): ctx.lake.abspath(m, f) for f in m.files},
        }
    out["stages"] = stages
    out["history"] = _history(ctx)
    out["published"] = _published(ctx)
    return out


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def summary_lines(d: dict[str, Any]) -> list[str]:
    st = d.get("stages", {})
    lines = [f"leptonflow — dataset {d['dataset']}, interval {d['ds']}", f"lake: {d['lake']}", ""]
    acc = st.get("clean", {}).get("extra", {}).get("accounting", {})
    if acc:
        rin, rclean, rrej = acc.get("rows_in", 0), acc.get("rows_clean", 0), acc.get("rows_rejected", 0)
        lines.append(f"rows in {rin:,} -> clean {rclean:,} + rejected {rrej:,}  (balanced: {rin == rclean + rrej})")
        for reason, n in sorted(acc.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1]):
            lines.append(f"    rejected {reason:<32} {n:>10,}")
    if "split" in st:
        g = st["split"]["groups"]
        lines.append("split: " + ", ".join(f"{k} {v:,}" for k, v in g.items()))
    val = st.get("validation", {})
    for suite, res in sorted((val.get("extra", {}).get("suites") or {}).items()):
        docs = val.get("file_paths", {}).get(f"{suite}/index.html", "")
        lines.append(
            f"validation {suite}: {'PASSED' if res.get('success') else 'FAILED'} "
            f"({res.get('successful_expectations')}/{res.get('evaluated_expectations')} expectations, "
            f"{res.get('rows_validated', 0):,} rows, policy {res.get('policy', '?')})  docs: {docs}"
        )
        drift = res.get("drift") or {}
        if suite == "clean":
            lines.append(f"    drift vs previous interval: {drift.get('previous_ds') or 'none committed yet'}")
        for f in res.get("failing", [])[:5]:
            lines.append(f"    failing {f.get('expectation')} {f.get('column', '')}: {f.get('unexpected_count')}")
    for h in d.get("history", []):
        pred, upper = h.get("predicted_wall_s"), h.get("predicted_wall_s_upper")
        planned = "no plan"
        if pred is not None and upper is not None:
            planned = f"predicted {pred:.1f} s (upper {upper:.1f} s)"
        lines.append(
            f"forecast vs actual {h.get('stage'):<15} {h.get('workers')} workers x {h.get('threads')} threads: "
            f"{planned}, actual {h.get('wall_s', 0):.1f} s"
            + (f" [{h.get('plan_source')}]" if h.get("plan_source") else "")
        )
    if "secure" in st:
        checked = st["secure"]["extra"].get("checked", {})
        files = sum(c.get("files", 0) for c in checked.values())
        lines.append(
            f"secure: {files} files in {', '.join(sorted(checked))}: encrypted, decryptable, "
            "checksums and manifest signatures verified"
        )
    model = st.get("model", {}).get("extra", {}).get("metrics", {})
    if model:
        lines.append(
            f"training: {model.get('epochs_run', '?')} epochs ({model.get('global_step', '?')} steps, batch "
            f"{model.get('batch_size', '?')}), best val "
            f"{model.get('metric', 'metric')} {model.get('best_val_metric', float('nan')):.4f} on "
            f"{model.get('workers', 1)}x {model.get('device', 'cpu')}, "
            f"{model.get('train_samples_per_s', 0):,.0f} samples/s"
        )
    ev = st.get("evaluation", {}).get("extra", {})
    if ev:
        metrics = ev.get("metrics", ev)
        lines.append("test: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        g = ev.get("gate")
        if g:  # the same test rows scored by the model, the trivial predictor and the linear baseline
            lin = f"{g['linear']:.4f}" if g.get("linear") is not None else "n/a"
            lines.append(f"baselines: test {g['metric']} model {g['model']:.4f} | trivial {g['trivial']:.4f} | "
                         f"linear {lin}  gate {'PASSED' if g['passed'] else 'FAILED'} (tolerance {g['tolerance']:g})"
                         + ("" if g["passed"] else ": " + "; ".join(g.get("reasons", []))))
    comp = st.get("compressed", {}).get("extra", {})
    if comp:
        summ, cands = comp.get("summary", {}), comp.get("candidates", [])
        ch = summ.get("chosen", {})
        base = next((c for c in cands if c.get("prune_ratio") == 0 and not c.get("quantized")), {})
        lines.append(
            f"compressed: {ch.get('name', '?')} {_fmt_bytes(ch.get('size_bytes', 0))} "
            f"(fp32 {_fmt_bytes(base.get('size_bytes', 0))}), {summ.get('metric_name', 'metric')} "
            f"{ch.get('metric', float('nan')):.4f} vs {summ.get('baseline_metric', float('nan')):.4f} "
            f"(budget {summ.get('budget')}), batch-256 latency {ch.get('latency_b256_ms', 0):.3f} ms"
            f" vs {base.get('latency_b256_ms', 0):.3f} ms"
        )
    pub = d.get("published") or {}
    if pub:
        sha = pub.get("manifest_sha256", "")[:16]
        lines.append(f"published: {pub['artifact_url']} (signed manifest, sha256 {sha}…)")
        lines.append(f"    verify with: python -m tasks verify-artifact {pub['artifact_url']}")
    lines.append(f"artifacts: {d['artifacts']}")
    return lines


def summary_text(d: dict[str, Any]) -> str:
    return "\n".join(summary_lines(d))


def _img(path: str) -> str:
    try:
        fs, p = fsspec.core.url_to_fs(path)
        data = base64.b64encode(fs.cat_file(p)).decode()
        return f'<img alt="{html.escape(path)}" src="data:image/png;base64,{data}" style="max-width:640px">'
    except Exception as exc:
        return f"<p>(picture {html.escape(path)} unavailable: {html.escape(str(exc))})</p>"


def index_page(pairs: list[tuple[str, str]]) -> str:
    """The list of committed intervals (links relative to the index: ``report/<dataset>/<ds>``), escaped."""
    esc = html.escape
    rows = [
        f"<li><a href='report/{esc(quote(dataset, safe=''))}/{esc(quote(ds, safe=''))}'>"
        f"{esc(dataset)} — {esc(ds)}</a></li>"
        for dataset, ds in pairs
    ]
    body = "".join(rows) or "<li>no committed intervals yet: trigger a leptonflow DAG</li>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>leptonflow runs</title></head>"
        f"<body><h1>leptonflow runs</h1><ul>{body}</ul></body></html>"
    )


def html_page(d: dict[str, Any], docs_href: Callable[[str, str], str] | None = None) -> str:
    """The report page: the summary, then every stage's facts and its pictures; everything escaped.

    `docs_href(stage, path)` gives the link of a Data Docs page (a manifest-relative path of the
    ``validation`` stage); without it the pages are not linked.
    """
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>leptonflow {esc(d['dataset'])} {esc(d['ds'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}pre{background:#f6f6f6;padding:1em}</style>",
        "</head><body>",
        f"<h1>leptonflow report — {esc(d['dataset'])} / {esc(d['ds'])}</h1>",
        f"<pre id='summary'>{esc(summary_text(d))}</pre>",
    ]
    for stage, info in d.get("stages", {}).items():
        parts.append(f"<h2 id='stage-{esc(stage)}'>{esc(stage)}</h2>")
        parts.append(
            f"<p>{int(info['rows']):,} rows in {int(info['files'])} files ({_fmt_bytes(info['bytes'])}), "
            f"version {esc(str(info['version']))}, manifest signed: {bool(info['signed'])}</p>"
        )
        if info["groups"]:
            parts.append("<table><tr><th>group</th><th>rows</th></tr>")
            parts += [f"<tr><td>{esc(str(g))}</td><td>{int(n):,}</td></tr>" for g, n in info["groups"].items()]
            parts.append("</table>")
        for rel, url in info["file_paths"].items():
            if rel.endswith(".png"):
                parts.append(_img(url))
            elif rel.endswith(".html") and docs_href and stage == DOCS_STAGE:
                # `rel` is unversioned (see collect): the link, and the page's relative links, stay stable
                parts.append(f"<p><a href='{esc(docs_href(stage, rel))}'>Data Docs: {esc(rel)}</a></p>")
        extra = {k: v for k, v in info["extra"].items() if k not in ("feature_stats",)}
        if extra:
            blob = esc(json.dumps(extra, indent=1, default=str))
            parts.append(f"<details><summary>details</summary><pre>{blob}</pre></details>")
    if d.get("history"):
        parts.append("<h2>forecast vs actual</h2><table>")
        parts.append("<tr><th>stage</th><th>workers</th><th>predicted s</th><th>actual s</th></tr>")
        for h in d["history"]:
            cells = (h.get("stage"), h.get("workers"), h.get("predicted_wall_s"), h.get("wall_s"))
            parts.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    pub = d.get("published") or {}
    if pub:
        parts.append(f"<h2>published artifact</h2><pre>{esc(json.dumps(pub, indent=1, default=str))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def check_docs_path(path: str) -> None:
    """Refuse a Data Docs path that is not a plain relative path with a served suffix.

    Raises:
        MalformedRequest: an absolute path, a ``..``/``.``/empty segment or a backslash.
        NotInLake: a suffix the report does not serve (data files, keyrings, manifests' siblings).
    """
    if path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in path.split("/")):
        raise MalformedRequest(f"Data Docs path {path!r} is not a plain relative path")
    if not path.endswith(DOCS_SUFFIXES):
        raise NotInLake(f"{path!r} is not a Data Docs file (served: {', '.join(DOCS_SUFFIXES)})")


def docs_file(dataset: str, ds: str, path: str, **overrides: Any) -> tuple[bytes, str]:
    """The bytes and media type of Data Docs file `path` of one interval.

    Served only when the interval's signed ``validation`` manifest lists `path` (so nothing outside
    the Data Docs zone: no data file, no keyring, no traversal) with a served suffix, and its size and
    sha256 match that manifest.

    Raises:
        ReportRequestError: a bad URL part, or `path` is not a committed Data Docs file.
        tasks.errors.IntegrityError: the file is not the one the manifest signed for.
    """
    check_request(dataset, ds)
    check_docs_path(path)
    ctx = StepContext(dataset=dataset, ds=ds, **overrides)
    m = ctx.lake.manifest(DOCS_STAGE, dataset, ds)
    entry = next((f for f in (m.files if m else []) if path in (f.path, unversioned(f.path))), None)
    if m is None or entry is None:
        raise NotInLake(f"no Data Docs file {path!r} committed for {dataset} ds={ds}")
    data = verified.read_bytes(ctx.lake, m, entry)
    return data, mimetypes.guess_type(path)[0] or "application/octet-stream"


def docs_location(lake_url: str, path: str) -> tuple[str, str, str]:
    """(dataset, ds, manifest-relative path) of a Data Docs file named by its lake path or URL (as the
    validation steps report it); anything outside ``<lake>/validation/<dataset>/ds=<ds>/`` is refused.

    Raises:
        ReportRequestError: `path` is not under the lake's Data Docs zone, or not a plain path there.
    """
    fs, root = fsspec.core.url_to_fs(lake_url)
    zone = f"{root.rstrip('/')}/{DOCS_STAGE}/"
    inner = fs._strip_protocol(path) if "://" in path else path
    rest = inner[len(zone):].split("/", 2) if inner.startswith(zone) else []
    if len(rest) != 3 or not rest[1].startswith("ds="):
        raise NotInLake(f"{path!r} is not a Data Docs file of this lake")
    check_request(rest[0], rest[1][3:])
    check_docs_path(rest[2])
    return rest[0], rest[1][3:], rest[2]


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tasks report")
    p.add_argument("--dataset", required=True)
    p.add_argument("--ds", required=True)
    p.add_argument("--html", help="write the HTML report to this file")
    p.add_argument("--json", action="store_true", help="print the collected facts as JSON")
    args = p.parse_args(argv)
    d = collect(args.dataset, args.ds)
    if args.html:
        with open(args.html, "w") as fh:
            fh.write(html_page(d))
    print(json.dumps(d, indent=1, default=str) if args.json else summary_text(d))
    return 0
