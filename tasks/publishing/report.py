"""What happened to one interval, read back from the lake: the demo summary and the report page.

Everything comes from committed, signature-checked manifests (and the run-history
DB for forecast vs actual), so the report shows what is really in the lake,
not what a task claimed.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
from typing import Any

import fsspec

from tasks.context import StepContext
from tasks.io.lake import Manifest

log = logging.getLogger(__name__)

STAGES = ("clean", "quarantine", "split", "validation", "secure", "model", "evaluation", "compressed")


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
    """All facts about one interval as plain JSON."""
    ctx = StepContext(dataset=dataset, ds=ds, **overrides)
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
            "extra": m.extra,
            "file_paths": {f.path: ctx.lake.abspath(m, f) for f in m.files},
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
            f"training: {model.get('epochs_run', '?')} epochs ({model.get('global_step', '?')} steps), best val "
            f"{model.get('metric', 'metric')} {model.get('best_val_metric', float('nan')):.4f} on "
            f"{model.get('workers', 1)}x {model.get('device', 'cpu')}, "
            f"{model.get('train_samples_per_s', 0):,.0f} samples/s"
        )
    ev = st.get("evaluation", {}).get("extra", {})
    if ev:
        metrics = ev.get("metrics", ev)
        lines.append("test: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
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


def html_page(d: dict[str, Any], docs_href: Any = None) -> str:
    """The report page: the summary, then every stage's facts and its pictures."""
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
            f"<p>{info['rows']:,} rows in {info['files']} files ({_fmt_bytes(info['bytes'])}), "
            f"version {esc(info['version'])}, manifest signed: {info['signed']}</p>"
        )
        if info["groups"]:
            parts.append("<table><tr><th>group</th><th>rows</th></tr>")
            parts += [f"<tr><td>{esc(g)}</td><td>{n:,}</td></tr>" for g, n in info["groups"].items()]
            parts.append("</table>")
        for rel, url in info["file_paths"].items():
            if rel.endswith(".png"):
                parts.append(_img(url))
            elif rel.endswith(".html") and docs_href:
                parts.append(f"<p><a href='{esc(docs_href(url))}'>Data Docs: {esc(rel)}</a></p>")
        extra = {k: v for k, v in info["extra"].items() if k not in ("feature_stats",)}
        if extra:
            blob = esc(json.dumps(extra, indent=1, default=str))
            parts.append(f"<details><summary>details</summary><pre>{blob}</pre></details>")
    if d.get("history"):
        parts.append("<h2>forecast vs actual</h2><table>")
        parts.append("<tr><th>stage</th><th>workers</th><th>predicted s</th><th>actual s</th></tr>")
        for h in d["history"]:
            parts.append(
                f"<tr><td>{esc(str(h.get('stage')))}</td><td>{h.get('workers')}</td>"
                f"<td>{h.get('predicted_wall_s')}</td><td>{h.get('wall_s')}</td></tr>"
            )
        parts.append("</table>")
    pub = d.get("published") or {}
    if pub:
        parts.append(f"<h2>published artifact</h2><pre>{esc(json.dumps(pub, indent=1, default=str))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


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
