"""The one metrics module: parity with scikit-learn on random data, and undefined metrics refused."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from tasks.errors import LeptonflowError
from tasks.training import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 3000))
    p = rng.random(n).astype(np.float32)
    y = (rng.random(n) < p).astype(np.float32)
    assert metrics.auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    expected = skm.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7))  # computed in float32 by sklearn
    assert metrics.log_loss(y, p) == pytest.approx(expected, rel=1e-6)
    assert metrics.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    got = metrics.classification_metrics(y, p)
    assert got["rows"] == n and got["positive_rate"] == pytest.approx(y.mean())
    assert metrics.metric_value("classification", y, p) == got["auc"]
    logits = np.log(p / (1 - p))  # AUC depends only on the order: logits score as probabilities do
    assert metrics.metric_value("classification", y, logits) == pytest.approx(got["auc"], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(3.0, 2.0, 1000).astype(np.float32)
    p = (y + rng.normal(0.0, 0.7, 1000)).astype(np.float32)
    assert metrics.rmse(y, p) == pytest.approx(np.sqrt(skm.mean_squared_error(y, p)), rel=1e-6)
    assert metrics.mae(y, p) == pytest.approx(skm.mean_absolute_error(y, p), rel=1e-6)
    assert metrics.r2(y, p) == pytest.approx(skm.r2_score(y, p), rel=1e-6)
    assert metrics.regression_metrics(y, p) == {"rmse": metrics.rmse(y, p), "mae": metrics.mae(y, p), "rows": 1000}
    assert metrics.metric_value("regression", y, p) == metrics.rmse(y, p)
    assert np.isnan(metrics.rmse([], []))


def test_calibration_error_of_a_constant_forecast():
    ece, curve = metrics.reliability(np.array([0, 1] * 50, dtype=float), np.full(100, 0.9))
    assert ece == pytest.approx(0.4) and len(curve) == 1 and curve[0]["n"] == 100


def test_single_class_split_is_refused_naming_the_metric_and_the_split():
    """One label class has no AUC: an error, never a 0.5 that would hide a broken split."""
    with pytest.raises(metrics.MetricError, match=r"val split has a single label class \(5 rows, all 1\): "
                                                  r"metric auc is undefined"):
        metrics.metric_value("classification", np.ones(5), np.linspace(0, 1, 5))
    with pytest.raises(metrics.MetricError, match="test split has a single label class"):
        metrics.classification_metrics(np.zeros(3, np.float32), np.full(3, 0.2, np.float32))
    with pytest.raises(metrics.MetricError, match="train split .* no rows"):
        metrics.auc(np.zeros(0), np.zeros(0), split="train")
    with pytest.raises(metrics.MetricError, match="test split: all 4 labels are equal: metric r2"):
        metrics.r2(np.full(4, 2.0), np.arange(4.0))
    assert issubclass(metrics.MetricError, LeptonflowError) and issubclass(metrics.MetricError, ValueError)


def test_missing_labels_and_unknown_tasks_are_named():
    with pytest.raises(metrics.MetricError, match="val split: 2 rows have no label value.*metric rmse"):
        metrics.metric_value("regression", np.array([0.0, np.nan, 1.0, np.nan]), np.zeros(4))
    with pytest.raises(metrics.MetricError, match="unknown task 'ranking'"):
        metrics.primary_metric("ranking")
    assert metrics.primary_metric("classification") == ("auc", True)
    assert metrics.primary_metric("regression") == ("rmse", False)
