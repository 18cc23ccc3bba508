"""The trend view: one dataset across its last N intervals, read from manifests and run history only.

:func:`collect` turns each committed interval into one :class:`IntervalTrend`. It reads the
signed manifests of that interval (clean accounting, validation suites with drift, secure
anomaly gate, evaluation and compression summaries, stored sizes per stage) and the run
history (wall time per heavy stage, forecast vs actual). It never opens a data file, so 365
intervals cost about 365 x 6 small JSON reads and one query per stage. :func:`html_page`
renders a table and matplotlib plots as one self-contained page: PNGs are inlined as ``data:``
URIs and every text is escaped. The table has one row per interval, formatted with units,
links each interval to its report page, and marks in red a failed check or a crossed
threshold.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tasks.context import StepContext
from tasks.io.lake import Lake, Manifest
from tasks.spec import NAME_MAX, NAME_RE

log = logging.getLogger(__name__)

SIZE_STAGES = ("clean", "quarantine", "split", "model", "compressed")
TIMED_STAGES = ("validate_raw", "clean", "split", "validate_clean", "train")
DEFAULT_N = 30
MAX_N = 1000


@dataclass
class IntervalTrend:
    """What one interval looked like. None means "not there": the step did not run or did not record it."""

    ds: str
    rows_in: int | None = None
    rows_clean: int | None = None
    rows_rejected: int | None = None
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    raw_ok: bool | None = None  # raw validation passed
    clean_ok: bool | None = None
    failing_expectations: int = 0
    drift_psi_max: float | None = None
    drift_failing: list[str] = field(default_factory=list)
    anomaly_rate: float | None = None
    anomaly_max_rate: float | None = None
    anomaly_alert: bool | None = None
    metric_name: str | None = None
    test_metric: float | None = None
    compressed_bytes: int | None = None
    size_ratio: float | None = None
    within_budget: bool | None = None
    bytes_by_stage: dict[str, int] = field(default_factory=dict)  # stored bytes per stage
    bytes_shuffled: int | None = None
    wall_s: dict[str, float] = field(default_factory=dict)  # latest run per heavy stage
    predicted_wall_s: float | None = None  # clean's forecast
    predicted_wall_s_upper: float | None = None
    actual_wall_s: float | None = None

    @property
    def reject_rate(self) -> float | None:
        return self.rows_rejected / self.rows_in if self.rows_in else None

    @property
    def forecast_error(self) -> float | None:
        """(predicted - actual) / actual of the clean step's wall time."""
        if self.predicted_wall_s is None or not self.actual_wall_s:
            return None
        return (self.predicted_wall_s - self.actual_wall_s) / self.actual_wall_s

    def flags(self, psi_max: float | None = None) -> dict[str, str]:
        """The checks this interval failed, by column of the table: column -> why."""
        out = {}
        if self.raw_ok is False:
            out["raw"] = "raw validation failed"
        if self.clean_ok is False:
            out["clean"] = f"clean validation failed ({self.failing_expectations} failing)"
        if self.drift_failing or (psi_max is not None and (self.drift_psi_max or 0) > psi_max):
            out["drift"] = "drift over threshold: " + (", ".join(self.drift_failing) or f"PSI > {psi_max:g}")
        if self.anomaly_alert or (self.anomaly_rate is not None and self.anomaly_max_rate is not None
                                  and self.anomaly_rate > self.anomaly_max_rate):
            out["anomaly"] = "anomaly rate over its maximum"
        if self.within_budget is False:
            out["model"] = "no compressed candidate within the metric budget"
        if self.actual_wall_s and self.predicted_wall_s_upper and self.actual_wall_s > self.predicted_wall_s_upper:
            out["forecast"] = "clean took longer than the forecast's upper bound"
        return out


# ---- collection ---------------------------------------------------------------------------------
def check_dataset(dataset: str) -> None:
    """Raises ``report.NotInLake`` when `dataset` cannot be a dataset name (checked before any lake read)."""
    from tasks.publishing.report import NotInLake

    if not NAME_RE.fullmatch(dataset) or len(dataset) > NAME_MAX:
        raise NotInLake(f"unknown dataset {dataset!r}")


def _read(lake: Lake, stage: str, dataset: str, ds: str) -> Manifest | None:
    try:
        return lake.manifest(stage, dataset, ds)
    except Exception as exc:  # a broken manifest is a gap in the trend, reported in the log
        log.warning("trends: cannot read %s manifest of %s ds=%s: %s", stage, dataset, ds, exc)
        return None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _interval(lake: Lake, dataset: str, ds: str) -> IntervalTrend:
    t = IntervalTrend(ds=ds)
    m = {s: _read(lake, s, dataset, ds) for s in ("clean", "quarantine", "split", "validation", "secure", "model",
                                                   "evaluation", "compressed")}
    if m["clean"] is not None:
        acc = m["clean"].extra.get("accounting") or {}
        t.rows_in, t.rows_clean, t.rows_rejected = acc.get("rows_in"), acc.get("rows_clean"), acc.get("rows_rejected")
        t.rejected_by_reason = dict(acc.get("rejected_by_reason") or {})
        t.bytes_shuffled = acc.get("bytes_shuffled")
    suites = (m["validation"].extra.get("suites") or {}) if m["validation"] is not None else {}
    if "raw" in suites:
        t.raw_ok = bool(suites["raw"].get("success"))
    if "clean" in suites:
        clean = suites["clean"]
        t.clean_ok = bool(clean.get("success"))
        t.failing_expectations = len(clean.get("failing") or [])
        drift = clean.get("drift") or {}
        psis = [_num(c.get("psi")) for c in (drift.get("columns") or {}).values()]
        psis = [p for p in psis if p is not None]
        t.drift_psi_max = max(psis) if psis else None
        t.drift_failing = [str(c) for c in drift.get("failing") or []]
    anomaly = (m["secure"].extra.get("anomaly") if m["secure"] is not None else None) or \
        ((m["clean"].extra.get("anomaly") if m["clean"] is not None else None) or {})
    if anomaly and not anomaly.get("skipped"):
        t.anomaly_rate, t.anomaly_max_rate = _num(anomaly.get("rate")), _num(anomaly.get("max_rate"))
        t.anomaly_alert = bool(anomaly.get("alert"))
    summary = (m["compressed"].extra.get("summary") or {}) if m["compressed"] is not None else {}
    if summary:
        t.metric_name, t.test_metric = summary.get("metric_name"), _num(summary.get("test_metric"))
        chosen = summary.get("chosen") or {}
        t.compressed_bytes = chosen.get("size_bytes")
        t.size_ratio = _num(summary.get("size_ratio"))
        t.within_budget = bool(summary.get("compressed")) if "compressed" in summary else None
    elif m["evaluation"] is not None:  # not compressed (yet): the evaluated model's metric
        metrics = m["evaluation"].extra.get("metrics") or {}
        name = ((m["model"].extra.get("metrics") or {}).get("metric") if m["model"] is not None else None) or "auc"
        t.metric_name, t.test_metric = name, _num(metrics.get(name))
    t.bytes_by_stage = {s: sum(f.bytes for f in m[s].files) for s in SIZE_STAGES if m[s] is not None}
    return t


def _add_history(trends: dict[str, IntervalTrend], history_url: str, dataset: str) -> None:
    """Wall time per heavy stage (the latest recorded run of each interval) and clean's forecast."""
    from tasks.resources import history

    try:
        for stage in TIMED_STAGES:
            for r in history.runs(history_url, stage, dataset=dataset):  # oldest first: the last one wins
                t = trends.get(r.ds)
                if t is None:
                    continue
                t.wall_s[stage] = r.wall_s
                if stage == "clean" and r.success:
                    t.actual_wall_s = r.wall_s
                    t.predicted_wall_s, t.predicted_wall_s_upper = r.predicted_wall_s, r.predicted_wall_s_upper
    except Exception as exc:  # the history DB is advisory: the trend shows the lake's part without it
        log.warning("trends: run history unavailable: %s", exc)


def collect(dataset: str, n: int = DEFAULT_N, **overrides: Any) -> dict[str, Any]:
    """The last `n` committed intervals of `dataset` (oldest first) and the spec's thresholds.

    `overrides` are StepContext fields (lake_url, history_url, keyring_path, ...), as for
    :func:`tasks.publishing.report.collect`.

    Raises:
        tasks.publishing.report.NotInLake: `dataset` is not a dataset name.
    """
    check_dataset(dataset)
    n = max(1, min(int(n), MAX_N))
    ctx = StepContext(dataset=dataset, ds="2000-01-01", **overrides)
    lake = ctx.lake
    dss = lake.intervals("clean", dataset)[-n:]
    trends = {ds: _interval(lake, dataset, ds) for ds in dss}
    _add_history(trends, ctx.history_url, dataset)
    try:
        spec = ctx.spec
        thresholds = {"psi_max": spec.drift.get("psi_max"), "anomaly_max_rate": spec.anomaly.get("max_rate")}
    except Exception as exc:  # a dataset whose spec is gone still has its history
        log.warning("trends: no spec for %s: %s", dataset, exc)
        thresholds = {}
    return {"dataset": dataset, "n": n, "intervals": [trends[d] for d in dss], "thresholds": thresholds}


# ---- formatting ---------------------------------------------------------------------------------
def fmt_bytes(v: float | None) -> str:
    if v is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(v) < 1024 or unit == "TB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TB"


def fmt_count(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def fmt_pct(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def fmt_float(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def fmt_seconds(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


# ---- plots --------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _axes(title: str, ylabel: str) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 2.3))
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return fig, ax


def _xticks(ax: Any, dss: list[str]) -> None:
    step = max(1, len(dss) // 8)
    ax.set_xticks(range(0, len(dss), step))
    ax.set_xticklabels([d[5:10] for d in dss[::step]], rotation=45, fontsize=7)


def _series(ax: Any, ys: list[float | None], bad: list[bool], label: str | None = None, **kw: Any) -> None:
    xs = [i for i, y in enumerate(ys) if y is not None]
    ax.plot(xs, [ys[i] for i in xs], marker="o", markersize=3, label=label, **kw)
    red = [i for i in xs if bad[i]]
    if red:
        ax.scatter(red, [ys[i] for i in red], color="#c33", s=30, zorder=5)


def plots(d: Mapping[str, Any]) -> dict[str, str]:
    """Small multiples as ``data:`` PNG URIs, one per quantity; failing intervals as red dots."""
    items: list[IntervalTrend] = d["intervals"]
    if not items:
        return {}
    th = d.get("thresholds") or {}
    dss = [t.ds for t in items]
    flags = [t.flags(th.get("psi_max")) for t in items]
    out = {}

    fig, ax = _axes("rows in / rejected by reason", "rows")
    ax.bar(range(len(items)), [t.rows_clean or 0 for t in items], color="#9ecae1", label="clean")
    bottom = [t.rows_clean or 0 for t in items]
    reasons = sorted({r for t in items for r in t.rejected_by_reason},
                     key=lambda r: -sum(t.rejected_by_reason.get(r, 0) for t in items))
    shown = reasons[:6]
    for reason in shown:
        vals = [t.rejected_by_reason.get(reason, 0) for t in items]
        ax.bar(range(len(items)), vals, bottom=bottom, label=reason)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    rest = [sum(v for r, v in t.rejected_by_reason.items() if r not in shown) for t in items]
    if any(rest):
        ax.bar(range(len(items)), rest, bottom=bottom, label="other reasons", color="#999")
    ax.legend(fontsize=6, ncol=2)
    _xticks(ax, dss)
    out["rows"] = _png(fig)

    fig, ax = _axes("reject rate", "% of rows in")
    _series(ax, [None if t.reject_rate is None else 100 * t.reject_rate for t in items], [bool(f) for f in flags])
    _xticks(ax, dss)
    out["reject_rate"] = _png(fig)

    fig, ax = _axes("drift: max PSI vs previous interval", "PSI")
    _series(ax, [t.drift_psi_max for t in items], ["drift" in f for f in flags])
    if th.get("psi_max") is not None:
        ax.axhline(th["psi_max"], color="#c33", linestyle="--", linewidth=1, label="threshold")
        ax.legend(fontsize=6)
    _xticks(ax, dss)
    out["drift"] = _png(fig)

    fig, ax = _axes("anomaly rate", "% of rows")
    _series(ax, [None if t.anomaly_rate is None else 100 * t.anomaly_rate for t in items],
            ["anomaly" in f for f in flags])
    if th.get("anomaly_max_rate") is not None:
        ax.axhline(100 * th["anomaly_max_rate"], color="#c33", linestyle="--", linewidth=1)
    _xticks(ax, dss)
    out["anomaly"] = _png(fig)

    fig, ax = _axes("clean wall time: forecast vs actual", "seconds")
    _series(ax, [t.predicted_wall_s for t in items], [False] * len(items), label="predicted")
    _series(ax, [t.actual_wall_s for t in items], ["forecast" in f for f in flags], label="actual")
    ax.legend(fontsize=6)
    _xticks(ax, dss)
    out["forecast"] = _png(fig)

    name = next((t.metric_name for t in items if t.metric_name), "metric")
    fig, ax = _axes(f"test {name}", name)
    _series(ax, [t.test_metric for t in items], ["model" in f for f in flags])
    _xticks(ax, dss)
    out["metric"] = _png(fig)

    fig, ax = _axes("wall time per stage", "seconds")
    for stage in TIMED_STAGES:
        ys = [t.wall_s.get(stage) for t in items]
        if any(y is not None for y in ys):
            _series(ax, ys, [False] * len(items), label=stage)
    ax.legend(fontsize=6, ncol=2)
    _xticks(ax, dss)
    out["wall"] = _png(fig)

    fig, ax = _axes("stored bytes per stage", "MB")
    for stage in SIZE_STAGES:
        ys = [None if stage not in t.bytes_by_stage else t.bytes_by_stage[stage] / 2**20 for t in items]
        if any(y is not None for y in ys):
            _series(ax, ys, [False] * len(items), label=stage)
    ys = [None if t.bytes_shuffled is None else t.bytes_shuffled / 2**20 for t in items]
    if any(y is not None for y in ys):
        _series(ax, ys, [False] * len(items), label="clean shuffle", linestyle=":")
    ax.legend(fontsize=6, ncol=2)
    _xticks(ax, dss)
    out["bytes"] = _png(fig)
    return out


# ---- page ---------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td.ds{text-align:left} tr.bad td.ds{border-left:4px solid #c33}
td.bad{background:#fde2e2;color:#900;font-weight:600} .plots{display:flex;flex-wrap:wrap;gap:8px;margin:1em 0}
.plots img{border:1px solid #eee} .muted{color:#777;font-size:12px}
"""
COLUMNS = ("interval", "rows in", "reject rate", "top reject reason", "raw", "clean", "max PSI", "anomaly rate",
           "forecast err", "metric", "compressed", "clean wall", "train wall", "stored")


def _cells(t: IntervalTrend, flags: dict[str, str]) -> list[tuple[str, str | None, str]]:
    """(text, flag key or None, title) per column after the interval."""
    top = max(t.rejected_by_reason.items(), key=lambda kv: kv[1]) if t.rejected_by_reason else None

    def ok(v: bool | None) -> str:
        return "–" if v is None else ("pass" if v else "FAIL")

    metric = fmt_float(t.test_metric) + (f" {t.metric_name}" if t.metric_name and t.test_metric is not None else "")
    compressed = fmt_bytes(t.compressed_bytes) + (f" ({t.size_ratio:.1f}x)" if t.size_ratio else "")
    return [
        (fmt_count(t.rows_in), None, ""),
        (fmt_pct(t.reject_rate, 2), None, ""),
        (f"{top[0]} ({top[1]:,})" if top else "–", None, ""),
        (ok(t.raw_ok), "raw", flags.get("raw", "")),
        (ok(t.clean_ok), "clean", flags.get("clean", "")),
        (fmt_float(t.drift_psi_max), "drift", flags.get("drift", "")),
        (fmt_pct(t.anomaly_rate, 2), "anomaly", flags.get("anomaly", "")),
        ("–" if t.forecast_error is None else f"{100 * t.forecast_error:+.0f}%", "forecast", flags.get("forecast", "")),
        (metric, None, ""),
        (compressed, "model", flags.get("model", "")),
        (fmt_seconds(t.wall_s.get("clean")), None, ""),
        (fmt_seconds(t.wall_s.get("train")), None, ""),
        (fmt_bytes(sum(t.bytes_by_stage.values()) if t.bytes_by_stage else None), None, ""),
    ]


def html_page(d: Mapping[str, Any], interval_href: Callable[[str], str] | None = None,
              with_plots: bool = True) -> str:
    """The trend page of :func:`collect`'s result: plots, then the table (newest first), all text escaped.

    `interval_href(ds)` is the link of an interval's report page (default: ``report/<dataset>/<ds>``).
    """
    esc = html.escape
    dataset = str(d["dataset"])
    href = interval_href or (lambda ds: f"report/{quote(dataset, safe='')}/{quote(ds, safe='')}")
    th = d.get("thresholds") or {}
    items: list[IntervalTrend] = d["intervals"]
    rows, bad_count = [], 0
    for t in reversed(items):
        flags = t.flags(th.get("psi_max"))
        bad_count += bool(flags)
        cells = "".join(
            f"<td class='bad' title='{esc(why)}'>{esc(text)}</td>" if key and key in flags else f"<td>{esc(text)}</td>"
            for text, key, why in _cells(t, flags))
        rows.append(f"<tr class='{'bad' if flags else 'ok'}'><td class='ds'><a href='{esc(href(t.ds))}'>"
                    f"{esc(t.ds)}</a></td>{cells}</tr>")
    pics = plots(d) if with_plots else {}
    imgs = "".join(f"<img alt='{esc(k)}' src='{v}'>" for k, v in pics.items())
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    limits = ", ".join(f"{esc(k)} {v:g}" for k, v in th.items() if isinstance(v, int | float))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(dataset)} trends</title>"
        f"<style>{_CSS}</style></head><body><h1>{esc(dataset)}: last {len(items)} interval(s)</h1>"
        f"<p class='muted'>{bad_count} interval(s) with a failed check or a crossed threshold (red)"
        f"{'; thresholds: ' + limits if limits else ''}. Read from the lake's manifests and the run history.</p>"
        f"<div class='plots'>{imgs}</div>"
        f"<table><tr>{head}</tr>{''.join(rows) or '<tr><td colspan=14>no committed interval</td></tr>'}</table>"
        f"</body></html>"
    )
