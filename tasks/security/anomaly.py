"""Poisoned-data detection: an IsolationForest fitted on committed history scores new rows.

History = the committed ``clean`` outputs of the intervals before this one (at most
``anomaly_history_intervals`` of them), sampled with a bound: at most
``anomaly_history_rows`` rows in all, from at most ``anomaly_row_groups_per_interval``
random row groups per interval (only the feature columns are read, decrypted as any
lake read). Features per row: the spec's numeric columns (label excluded), the hour
of the time column, and each categorical column as the log of the value's share in
history (unseen values get a tiny share), so a burst of rare combinations stands out.

The threshold is the ``1 - contamination`` quantile of the history's own scores
(``spec.anomaly.contamination``, setting ``anomaly_contamination``): a normal interval
flags about that share of rows. Flagged rows go to quarantine with reason
``anomaly`` (the clean step calls :func:`split_table` (Arrow) or :func:`split_partition` (pandas) per
partition with a model from :func:`fit_for_context`, then :func:`judge` on the totals). An interval
whose flagged share exceeds ``anomaly_max_rate`` (default ``spec.anomaly.max_rate``)
alerts: setting ``anomaly_policy`` ``fail`` raises :class:`AnomalyAlert`, ``warn`` logs
and reports. A model is fitted on history, never on the interval it scores, so a
tight poisoned cluster cannot mask itself.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.errors import KeyringError, LeptonflowError
from tasks.io import parquet as parquet_io
from tasks.spec import DatasetSpec

if TYPE_CHECKING:  # scikit-learn costs ~1 s to import: only steps that fit or score a model pay it
    from sklearn.ensemble import IsolationForest

log = logging.getLogger(__name__)

REASON = "anomaly"
UNSEEN_SHARE = 1e-6


class AnomalyAlert(LeptonflowError, RuntimeError):
    """An interval's anomaly rate is over its limit; the message names dataset, interval and rates."""


def feature_columns(spec: DatasetSpec) -> tuple[list[str], list[str]]:
    """(numeric, categorical) source columns used as features."""
    numeric = [c.name for c in spec.columns if c.type in ("int", "float") and c.name != spec.label.column]
    categorical = [c.name for c in spec.columns if c.type == "category" and c.name != spec.label.column]
    return numeric, categorical


def _frame(data: pa.Table | pd.DataFrame, needed: list[str], where: str) -> pd.DataFrame:
    names = data.column_names if isinstance(data, pa.Table) else list(data.columns)
    missing = [c for c in needed if c not in names]
    if missing:
        raise ValueError(f"{where}: anomaly features need column(s) {missing}, not found")
    return data.select(needed).to_pandas() if isinstance(data, pa.Table) else data


@dataclass
class AnomalyModel:
    """Picklable (sent to Dask workers by the clean step): a fitted forest plus its feature maps."""

    numeric: list[str]
    categorical: list[str]
    time_column: str
    fill: dict[str, float]  # history medians for null numeric values
    log_share: dict[str, dict[str, float]]  # categorical value -> log share in history
    forest: IsolationForest
    threshold: float  # rows scoring above it are anomalies
    contamination: float
    history_rows: int
    history_intervals: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical, *([self.time_column] if self.time_column else [])]

    def features(self, data: pa.Table | pd.DataFrame, where: str = "table") -> np.ndarray:
        df = _frame(data, self.columns, where)
        cols = [pd.to_numeric(df[c], errors="coerce").astype("float64").fillna(self.fill[c]) for c in self.numeric]
        if self.time_column:
            ts = pd.to_datetime(df[self.time_column], utc=True, errors="coerce")
            cols.append(ts.dt.hour.astype("float64").fillna(0.0))
        floor = math.log(UNSEEN_SHARE)
        for c in self.categorical:
            cols.append(df[c].astype("object").map(self.log_share[c]).astype("float64").fillna(floor))
        return np.column_stack([np.asarray(c, dtype=np.float64) for c in cols]) if len(df) else np.empty((0, 0))

    def scores(self, data: pa.Table | pd.DataFrame, where: str = "table") -> np.ndarray:
        """Anomaly score per row (higher = more anomalous)."""
        x = self.features(data, where)
        if x.shape[0] == 0:
            return np.empty(0)
        return -self.forest.score_samples(x)

    def flags(self, data: pa.Table | pd.DataFrame, where: str = "table") -> np.ndarray:
        return self.scores(data, where) > self.threshold


def fit(history: pd.DataFrame, spec: DatasetSpec, contamination: float, intervals: list[str] | None = None,
        seed: int = 0) -> AnomalyModel:
    """Fit on a (bounded) history sample of clean rows."""
    from sklearn.ensemble import IsolationForest

    if not 0 < contamination < 0.5:
        raise ValueError(f"anomaly contamination must be in (0, 0.5), got {contamination}")
    numeric, categorical = feature_columns(spec)
    df = _frame(history, [*numeric, *categorical, spec.time_column], "history")
    fill = {c: float(pd.to_numeric(df[c], errors="coerce").median()) if len(df) else 0.0 for c in numeric}
    fill = {c: (0.0 if math.isnan(v) else v) for c, v in fill.items()}
    log_share = {
        c: {str(k): math.log(v) for k, v in df[c].astype("object").value_counts(normalize=True).items()}
        for c in categorical
    }
    model = AnomalyModel(
        numeric=numeric, categorical=categorical, time_column=spec.time_column, fill=fill, log_share=log_share,
        forest=IsolationForest(n_estimators=200, max_samples=min(512, len(df)), random_state=seed, n_jobs=1),
        threshold=math.inf, contamination=contamination, history_rows=len(df), history_intervals=intervals or [],
    )
    x = model.features(df, "history")
    model.forest.fit(x)
    model.threshold = float(np.quantile(-model.forest.score_samples(x), 1.0 - contamination))
    return model


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:4], "little")


def sample_manifest(lake: Any, m: Any, crypto: Any, columns: list[str], rows: int, max_row_groups: int,
                    rng: np.random.Generator) -> list[pa.Table]:
    """About `rows` random rows of a committed manifest's files, read from at most `max_row_groups`
    random row groups (only `columns`; decrypted as any lake read, AES-GCM authenticating pages)."""
    groups: list[tuple[str, int]] = []
    handles = {}
    for entry in m.files:
        url = lake.full_url(lake.abspath(m, entry))
        pf = parquet_io.open_parquet(url, crypto if entry.key_id else None)
        handles[url] = pf
        groups += [(url, i) for i in range(pf.num_row_groups)]
    if not groups:
        return []
    chosen = rng.choice(len(groups), size=min(max_row_groups, len(groups)), replace=False)
    k = max(1, rows // len(chosen))
    parts = []
    for gi in sorted(chosen):
        url, i = groups[gi]
        try:
            rg = handles[url].read_row_group(int(i), columns=columns)
        except KeyringError as exc:
            raise parquet_io.ParquetReadError(f"{url}: row group {i}: cannot decrypt: {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            raise parquet_io.ParquetReadError(f"{url}: row group {i}: {exc}") from exc
        if rg.num_rows > k:
            rg = rg.take(pa.array(np.sort(rng.choice(rg.num_rows, size=k, replace=False))))
        parts.append(rg)
    return parts


def _feature_source_columns(spec: DatasetSpec) -> list[str]:
    numeric, categorical = feature_columns(spec)
    return [*numeric, *categorical, spec.time_column]


def history_sample(ctx: Any) -> tuple[pd.DataFrame, list[str]]:
    """A bounded random sample of the committed clean rows of earlier intervals."""
    lake = ctx.lake
    n_int = int(ctx.param("anomaly_history_intervals"))
    budget = int(ctx.param("anomaly_history_rows"))
    max_rgs = int(ctx.param("anomaly_row_groups_per_interval"))
    earlier = [d for d in lake.intervals("clean", ctx.dataset) if d < ctx.ds][-n_int:]
    if not earlier:
        return pd.DataFrame(), []
    columns = _feature_source_columns(ctx.spec)
    crypto = ctx.crypto()
    per_interval = max(1, budget // len(earlier))
    parts: list[pa.Table] = []
    for ds in earlier:
        m = lake.require("clean", ctx.dataset, ds)  # signature verified
        rng = np.random.default_rng(_seed(ctx.dataset, ctx.ds, ds))
        parts += sample_manifest(lake, m, crypto, columns, per_interval, max_rgs, rng)
    if not parts:
        return pd.DataFrame(), earlier
    return pa.concat_tables(parts).to_pandas(), earlier


def score_committed(ctx: Any, model: AnomalyModel | None = None) -> dict[str, Any]:
    """Estimate the anomaly rate of the interval's COMMITTED clean output from a bounded sample
    (setting ``anomaly_sample_rows``, from at most ``anomaly_sample_row_groups``
    row groups) and apply the interval rule. A gate for when the clean step did not score."""
    _rule(ctx)
    model = model if model is not None else fit_for_context(ctx)
    if model is None:
        return {"skipped": "no history", "rows": 0, "anomalies": 0, "rate": 0.0, "alert": False}
    lake = ctx.lake
    m = lake.require("clean", ctx.dataset, ctx.ds)
    rows = int(ctx.param("anomaly_sample_rows"))
    max_rgs = int(ctx.param("anomaly_sample_row_groups"))
    rng = np.random.default_rng(_seed(ctx.dataset, ctx.ds, "interval"))
    parts = sample_manifest(lake, m, ctx.crypto(), model.columns, rows, max_rgs, rng)
    data = pa.concat_tables(parts) if parts else pa.table({c: pa.array([], pa.null()) for c in model.columns})
    flags = model.flags(data, f"{ctx.dataset} ds={ctx.ds}")
    out = judge(ctx, int(len(flags)), int(flags.sum()))
    out.update(sampled_from=m.rows, threshold=round(model.threshold, 6), contamination=model.contamination,
               history_rows=model.history_rows, history_intervals=model.history_intervals)
    return out


def fit_for_context(ctx: Any) -> AnomalyModel | None:
    """The model for ctx's interval, or None when history is too small (first intervals)."""
    contamination = float(ctx.param("anomaly_contamination"))
    min_rows = int(ctx.param("anomaly_min_history_rows"))
    history, intervals = history_sample(ctx)
    if len(history) < min_rows:
        log.info("anomaly: %d history rows for %s ds=%s (< %d): no model yet", len(history), ctx.dataset, ctx.ds,
                 min_rows)
        return None
    model = fit(history, ctx.spec, contamination, intervals, seed=_seed(ctx.dataset, ctx.ds))
    log.info("anomaly: fitted on %d rows of %d intervals, threshold %.4f", len(history), len(intervals),
             model.threshold)
    return model


def split_partition(df: pd.DataFrame, model: AnomalyModel | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept rows, anomalous rows with ``_reason = "anomaly"``) of one clean partition."""
    if model is None or len(df) == 0:
        return df, df.iloc[0:0].assign(_reason=pd.Series(dtype="object"))
    flags = model.flags(df, "partition")
    bad = df[flags].assign(_reason=REASON)
    return df[~flags], bad


def _rule(ctx: Any) -> tuple[float, str]:
    max_rate = float(ctx.param("anomaly_max_rate"))
    policy = str(ctx.param("anomaly_policy"))
    if policy not in ("fail", "warn"):
        raise ValueError(f"Param anomaly_policy must be 'fail' or 'warn', got {policy!r}")
    if not 0.0 <= max_rate <= 1.0:
        raise ValueError(f"Param anomaly_max_rate must be in [0, 1], got {max_rate}")
    return max_rate, policy


def split_table(table: pa.Table, model: AnomalyModel | None) -> tuple[pa.Table, pa.Table]:
    """(kept rows, anomalous rows) of one clean Arrow table (the caller adds its quarantine columns)."""
    if model is None or table.num_rows == 0:
        return table, table.slice(0, 0)
    flags = pa.array(model.flags(table, "partition"))
    return table.filter(pc.invert(flags)), table.filter(flags)


def judge(ctx: Any, rows: int, anomalies: int) -> dict[str, Any]:
    """Apply the interval-level rule: rate over ``anomaly_max_rate`` alerts (fail raises, warn logs)."""
    max_rate, policy = _rule(ctx)
    rate = anomalies / rows if rows else 0.0
    alert = rate > max_rate
    out = {"rows": rows, "anomalies": anomalies, "rate": round(rate, 6), "max_rate": max_rate, "policy": policy,
           "alert": alert}
    if alert:
        msg = (f"{ctx.dataset} ds={ctx.ds}: anomaly rate {rate:.2%} ({anomalies} of {rows} rows) exceeds "
               f"anomaly_max_rate {max_rate:.2%}: possible poisoned data")
        if policy == "fail":
            raise AnomalyAlert(msg)
        log.warning("%s (policy warn: continuing)", msg)
    return out


def score_interval(ctx: Any, data: pa.Table | pd.DataFrame, model: AnomalyModel | None = None) -> dict[str, Any]:
    """Score every row of an interval's clean rows in hand (the committed output is scored from a
    bounded sample by :func:`score_committed`).

    Returns small JSON (counts, rate, threshold, alert); raises :class:`AnomalyAlert` when the
    rate is over the limit and the policy is ``fail``.
    """
    _rule(ctx)  # bad Params fail before any work
    model = model if model is not None else fit_for_context(ctx)
    if model is None:
        return {"skipped": "no history", "rows": 0, "anomalies": 0, "rate": 0.0, "alert": False}
    flags = model.flags(data, f"{ctx.dataset} ds={ctx.ds}")
    out = judge(ctx, int(len(flags)), int(flags.sum()))
    out.update(threshold=round(model.threshold, 6), contamination=model.contamination,
               history_rows=model.history_rows, history_intervals=model.history_intervals)
    return out
