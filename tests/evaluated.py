"""A committed ``evaluation`` whose baseline comparison passes the publish gate, for publishing tests that
build their compressed model directly (the gate itself is tested in tests/unit/test_baselines.py and,
with real training, tests/integration/test_baseline_gate.py)."""

from __future__ import annotations

from tasks.io.lake import Lake, Manifest
from tasks.training import baselines


def commit_evaluation(lake: Lake, dataset: str, ds: str, model_version: str | None = None, *,
                      task: str = "classification", model: float = 0.80, trivial: float = 0.50,
                      linear: float = 0.80) -> Manifest:
    """An evaluation of `model_version` with these primary-metric values (AUC, or RMSE for regression)."""
    version, _ = lake.new_version("evaluation", dataset, ds)
    g = baselines.gate(task, model, trivial, linear, 0.15)
    comparison = {"task": task, "metric": g.metric, "higher_is_better": g.higher_is_better, "model": model,
                  "trivial": trivial, "linear": linear}
    return lake.commit(Manifest("evaluation", dataset, ds, version, extra={
        "metrics": {g.metric: model, "task": task}, "model_version": model_version, "comparison": comparison,
        "gate": g.to_json()}))
