"""Model metrics, one implementation each, used by training, evaluation and compression.

Classification: ROC AUC (the primary metric), log loss, accuracy at 0.5, expected calibration
error with its reliability curve. Regression: RMSE (the primary metric), MAE, R2. Inputs are
labels and predictions of one split; ``split`` only names it in errors.

A split whose labels hold a single class has no AUC. That is refused with a
:class:`MetricError` naming the metric and the split, never replaced by a number: a 0.5
published as a result, or used to stop training early, would hide a broken split assignment.
AUC depends only on the order of the scores, so logits and probabilities give the same value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.errors import LeptonflowError

TASKS = ("classification", "regression")
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] for log loss


class MetricError(LeptonflowError, ValueError):
    """A metric is undefined on a split (one label class, missing labels) or the task is unknown; the
    message names the metric and the split."""


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise MetricError(f"unknown task {task!r}: expected one of {list(TASKS)}")


def primary_metric(task: str) -> tuple[str, bool]:
    """(name, higher_is_better) of the metric that early stopping, model selection and compression use."""
    _check_task(task)
    return ("auc", True) if task == "classification" else ("rmse", False)


def _labels(y: Any, metric: str, split: str) -> np.ndarray:
    """`y` as a flat array, refused when a row has no label value."""
    y = np.asarray(y).reshape(-1)
    missing = int(np.isnan(y).sum()) if np.issubdtype(y.dtype, np.floating) else 0
    if missing:
        raise MetricError(f"{split} split: {missing} rows have no label value (missing label column?); "
                          f"metric {metric} is undefined")
    return y


# ---- classification ---------------------------------------------------------------------------
def auc(y: Any, p: Any, split: str = "test") -> float:
    """ROC AUC of scores `p` (probabilities or logits) against 0/1 labels `y`."""
    from sklearn.metrics import roc_auc_score

    y = _labels(y, "auc", split)
    classes = np.unique(y)
    if len(classes) < 2:
        only = f"all {float(classes[0]):g}" if len(classes) else "no rows"
        raise MetricError(f"{split} split has a single label class ({len(y)} rows, {only}): metric auc is "
                          "undefined; check the split assignment")
    return float(roc_auc_score(y, np.asarray(p).reshape(-1)))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities `p` (clipped to [EPS, 1 - EPS]) against labels `y`."""
    pc = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))


def accuracy(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    """Share of rows whose probability is on the same side of `threshold` as the label."""
    return float(((p >= threshold) == (y >= threshold)).mean())


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error and the reliability curve over `bins` equal-width probability bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    curve, ece = [], 0.0
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        if n == 0:
            continue
        conf, acc = float(p[mask].mean()), float(y[mask].mean())
        ece += n / len(y) * abs(conf - acc)
        curve.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "mean_pred": conf, "frac_pos": acc, "n": n})
    return float(ece), curve


def classification_metrics(y: np.ndarray, p: np.ndarray, bins: int = 10, split: str = "test") -> dict[str, Any]:
    """AUC, accuracy, log loss, ECE, positive rate and the reliability curve of probabilities `p`."""
    ece, curve = reliability(y, p, bins)
    return {
        "auc": auc(y, p, split),
        "accuracy": accuracy(y, p),
        "log_loss": log_loss(y, p),
        "ece": ece,
        "positive_rate": float(y.mean()),
        "reliability": curve,
        "rows": int(len(y)),
    }


# ---- regression -------------------------------------------------------------------------------
def _errors(y: Any, p: Any) -> np.ndarray:
    return np.asarray(p, dtype=np.float64).reshape(-1) - np.asarray(y, dtype=np.float64).reshape(-1)


def rmse(y: Any, p: Any) -> float:
    """Root mean squared error (NaN on an empty split)."""
    err = _errors(y, p)
    return float(np.sqrt(np.mean(err**2))) if len(err) else float("nan")


def mae(y: Any, p: Any) -> float:
    """Mean absolute error (NaN on an empty split)."""
    err = _errors(y, p)
    return float(np.mean(np.abs(err))) if len(err) else float("nan")


def r2(y: Any, p: Any, split: str = "test") -> float:
    """Coefficient of determination, 1 - SSE / SST (as scikit-learn's ``r2_score``); undefined when every
    label is equal."""
    y64 = np.asarray(y, dtype=np.float64).reshape(-1)
    sst = float(np.sum((y64 - y64.mean()) ** 2)) if len(y64) else 0.0
    if sst == 0.0:
        raise MetricError(f"{split} split: all {len(y64)} labels are equal: metric r2 is undefined")
    return 1.0 - float(np.sum(_errors(y64, p) ** 2)) / sst


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """RMSE, MAE and the row count of predictions `p`."""
    return {"rmse": rmse(y, p), "mae": mae(y, p), "rows": int(len(y))}


# ---- the primary metric -----------------------------------------------------------------------
def metric_value(task: str, y: Any, p: Any, split: str = "val") -> float:
    """The task's primary metric (:func:`primary_metric`) of predictions or scores `p` on one split."""
    name, _ = primary_metric(task)
    y = _labels(y, name, split)
    return auc(y, p, split) if name == "auc" else rmse(y, p)
