"""The model against simple baselines on the same test split, and the gate that publishing applies.

A model is worth publishing only if it beats what needs no training and is not much worse than
what a one-line fit gives, on the same test rows:

* **trivial**: the train prior (classification: every row gets the train positive rate, AUC 0.5)
  or the train mean (regression), from the split's label statistics (``stats["target"]``).
* **linear**: scikit-learn ``LogisticRegression`` / ``Ridge`` on the SAME transformed features
  (:func:`tasks.prep.features.transform`: standardized numeric columns, plus the categorical
  vocabulary indices one-hot encoded), fitted on a uniform sample of at most ``baseline_max_rows``
  train rows. The sample reads whole train files in a seeded random order until it has enough
  rows (each file verified against the manifest as it is read); clean files are hash buckets of
  the interval's rows, so a few files are a fair sample, and memory stays bounded by the sample.

:func:`gate` is the rule (setting ``baseline_tolerance``): the model's primary metric must beat
the trivial predictor's, and its error (RMSE, or 1 - AUC for classification) may exceed the linear
baseline's by at most that fraction: with tolerance 0.15, a linear AUC of 0.80 needs a model AUC
of at least 0.77, a ridge RMSE of 9,000 a model RMSE of at most 10,350. One scale-free number for
both tasks; it is a fraction of the error because on a day's test split (~100 rows) the model's
and the linear model's AUCs differ by a few points by chance alone. :func:`enforce` applies it to
the committed ``evaluation`` manifest of the model about to be published and raises
:class:`BaselineGateError` naming the three figures when it fails.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tasks.errors import LeptonflowError
from tasks.training.metrics import accuracy, auc, log_loss, mae, primary_metric, rmse

log = logging.getLogger(__name__)

SAMPLE_BATCH = 65536  # rows per batch while sampling train


class BaselineGateError(LeptonflowError, RuntimeError):
    """The model does not beat the trivial predictor, or falls too far behind the linear baseline, or was not
    evaluated against them; the message names the metric, the three values and the tolerance."""


# ---- the linear baseline ------------------------------------------------------------------------
@dataclass
class LinearBaseline:
    """A fitted logistic / ridge regression on the transformed features (numeric + one-hot categorical)."""

    task: str
    estimator: Any
    cardinalities: list[int]
    train_rows: int

    def design(self, x_num: np.ndarray, x_cat: np.ndarray) -> Any:
        """The sparse design matrix: standardized numeric columns, then one column per vocabulary index."""
        from scipy import sparse

        n = len(x_num)
        blocks = [sparse.csr_matrix(np.asarray(x_num, np.float64))]
        for j, card in enumerate(self.cardinalities):
            idx = np.clip(np.asarray(x_cat[:, j], np.int64), 0, card - 1)
            blocks.append(sparse.csr_matrix((np.ones(n), (np.arange(n), idx)), shape=(n, card)))
        return sparse.hstack(blocks, format="csr")

    def predict(self, x_num: np.ndarray, x_cat: np.ndarray) -> np.ndarray:
        """Probabilities of the positive class (classification) or values (regression)."""
        x = self.design(x_num, x_cat)
        if self.task == "classification":
            return self.estimator.predict_proba(x)[:, 1].astype(np.float64)
        return self.estimator.predict(x).astype(np.float64)

    @property
    def name(self) -> str:
        return type(self.estimator).__name__


def fit_linear(task: str, stats: dict[str, Any], x_num: np.ndarray, x_cat: np.ndarray, y: np.ndarray) -> LinearBaseline:
    """Logistic (classification) or ridge (regression) regression on a train sample; scikit-learn defaults
    (L2, C = 1 / alpha = 1), which on standardized features need no tuning to be a fair bar."""
    from sklearn.linear_model import LogisticRegression, Ridge

    cards = [len(stats["categorical"][c]["vocab"]) + 1 for c in stats["categorical_features"]]
    est = LogisticRegression(max_iter=2000) if task == "classification" else Ridge(alpha=1.0)
    lin = LinearBaseline(task, est, cards, int(len(y)))
    est.fit(lin.design(x_num, x_cat), y)
    return lin


def train_sample(lake: Any, split_m: Any, stats: dict[str, Any], crypto: Any, max_rows: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A uniform sample of at most `max_rows` transformed train rows (see the module docstring)."""
    from tasks.io import verified
    from tasks.training.stream import StreamDataset

    entries = list(split_m.group_files("train"))
    order = np.random.default_rng([seed, 0xBA5E]).permutation(len(entries))
    chosen, rows = [], 0
    for i in order:
        if rows >= max_rows:
            break
        chosen.append(entries[i])
        rows += entries[i].rows
    if not chosen:
        return np.zeros((0, len(stats["numeric_features"])), np.float32), np.zeros(
            (0, len(stats["categorical_features"])), np.int64), np.zeros(0, np.float32)
    urls = [verified.file_url(lake, split_m, f) for f in chosen]
    ds = StreamDataset(urls, stats, SAMPLE_BATCH, crypto=crypto, shuffle=False, entries=chosen)
    rng = np.random.default_rng([seed, 0x5A3])
    kept: list[tuple[np.ndarray, ...]] = []
    held = 0
    for x_num, x_cat, y in ds:
        prio = rng.random(len(y))
        kept.append((x_num.numpy(), x_cat.numpy(), y.numpy(), prio))
        held += len(y)
        if held > 2 * max_rows:  # bottom-k by random priority: a uniform sample in bounded memory
            kept, held = [_bottom_k(kept, max_rows)], max_rows
    x_num, x_cat, y, _ = _bottom_k(kept, max_rows)
    return x_num, x_cat, y


def _bottom_k(parts: list[tuple[np.ndarray, ...]], k: int) -> tuple[np.ndarray, ...]:
    cols = [np.concatenate([p[i] for p in parts]) for i in range(4)]
    if len(cols[3]) > k:
        keep = np.sort(np.argpartition(cols[3], k - 1)[:k])
        cols = [c[keep] for c in cols]
    return tuple(cols)


def tee_linear(batches: Iterable[tuple[Any, ...]], linear: LinearBaseline | None,
               out: list[np.ndarray]) -> Iterator[tuple[Any, ...]]:
    """The batches unchanged, the linear baseline's predictions of each appended to `out` on the way."""
    for batch in batches:
        if linear is not None:
            out.append(linear.predict(batch[0].numpy(), batch[1].numpy()))
        yield batch


# ---- metrics of the three predictors --------------------------------------------------------------
def predictor_metrics(task: str, y: np.ndarray, p: np.ndarray, split: str = "test") -> dict[str, float]:
    """The comparable metrics of one predictor: AUC, log loss, accuracy (classification) or RMSE, MAE."""
    p = np.asarray(p, np.float64)
    if task == "classification":
        return {"auc": auc(y, p, split), "log_loss": log_loss(y, p), "accuracy": accuracy(y, p)}
    return {"rmse": rmse(y, p), "mae": mae(y, p)}


def trivial_value(task: str, stats: dict[str, Any], y_train: np.ndarray) -> float:
    """The trivial prediction: the train prior / mean from the split's label statistics (else the sample's)."""
    t = stats.get("target") or {}
    if t.get("count"):
        return float(t["mean"])
    return float(np.mean(y_train)) if len(y_train) else 0.0


# ---- the gate -------------------------------------------------------------------------------------
@dataclass
class Gate:
    """The verdict of the publish gate on one evaluation: the primary metric of the three predictors."""

    task: str
    metric: str
    higher_is_better: bool
    model: float
    trivial: float
    linear: float | None
    tolerance: float
    passed: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        lin = f"{self.linear:.4f}" if self.linear is not None else "n/a"
        return (f"test {self.metric}: model {self.model:.4f}, trivial {self.trivial:.4f}, linear {lin} "
                f"(tolerance {self.tolerance:g})")


def error_of(task: str, value: float) -> float:
    """The primary metric as an error (lower is better): 1 - AUC, or the RMSE."""
    return 1.0 - value if primary_metric(task)[1] else value


def gate(task: str, model: float, trivial: float, linear: float | None, tolerance: float) -> Gate:
    """Beat the trivial predictor; have at most (1 + `tolerance`) x the linear baseline's error."""
    metric, higher = primary_metric(task)
    g = Gate(task, metric, higher, float(model), float(trivial), None if linear is None else float(linear),
             float(tolerance))
    if not np.isfinite(g.model):
        g.reasons.append(f"the model's {metric} is {g.model}")
    elif higher and not g.model > g.trivial:
        g.reasons.append(f"the model's {metric} {g.model:.4f} does not beat the trivial predictor's {g.trivial:.4f}")
    elif not higher and not g.model < g.trivial:
        g.reasons.append(f"the model's {metric} {g.model:.4f} is not below the trivial predictor's {g.trivial:.4f}")
    if g.linear is None:
        g.reasons.append("the linear baseline could not be fitted")
    elif not error_of(task, g.model) <= error_of(task, g.linear) * (1 + g.tolerance):
        what = "1 - AUC" if higher else metric
        g.reasons.append(f"the model's {what} {error_of(task, g.model):.4f} is more than {g.tolerance:.0%} above the "
                         f"linear baseline's {error_of(task, g.linear):.4f}")
    g.passed = not g.reasons
    return g


def enforce(evaluation: Any, model_m: Any, tolerance: float, what: str = "publish") -> Gate:
    """The gate on a committed ``evaluation`` manifest (of `model_m`, the model about to be published).

    Raises:
        BaselineGateError: no evaluation, an evaluation of another model or without the baselines, or a
            failed gate; the message names the metric, the three values and the tolerance.
    """
    if evaluation is None:
        raise BaselineGateError(f"refusing to {what}: the model was not evaluated against the baselines "
                                "(no committed evaluation for this interval: run evaluate first)")
    where = f"evaluation/{evaluation.dataset} ds={evaluation.ds} (version {evaluation.version})"
    if model_m is not None and evaluation.extra.get("model_version") != model_m.version:
        raise BaselineGateError(f"refusing to {what}: {where} scored model version "
                                f"{evaluation.extra.get('model_version')}, not the current {model_m.version}: "
                                "run evaluate again")
    cmp = evaluation.extra.get("comparison")
    if not cmp:
        raise BaselineGateError(f"refusing to {what}: {where} has no baseline comparison (written by an older "
                                "leptonflow): run evaluate again")
    g = gate(cmp["task"], cmp["model"], cmp["trivial"], cmp.get("linear"), tolerance)
    if not g.passed:
        raise BaselineGateError(f"refusing to {what} {evaluation.dataset} ds={evaluation.ds}: "
                                f"{'; '.join(g.reasons)} ({g.describe()})")
    log.info("baseline gate passed: %s", g.describe())
    return g
