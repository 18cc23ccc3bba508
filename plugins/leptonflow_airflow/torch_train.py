"""TorchTrainOperator: the train step (`tasks.training.train`) as an Airflow task.

Thin: it builds the StepContext (Params, interval, ``plan_train`` XCom, Connections)
and runs the step, which launches the ranks with torchrun in a fresh subprocess
that never imports Airflow. Defaults to the ``gpu`` pool so GPU jobs queue
instead of oversubscribing devices (create it with as many slots as training
jobs a GPU host may run at once: ``airflow pools set gpu 1 "training"``).

Retries resume: an Airflow retry of the same interval finds the checkpoints
under ``<lake>/model/<dataset>/ds=<ds>/checkpoints`` (keyed by input, code and
params) and continues from the last one; ``on_kill`` stops the ranks and keeps
the checkpoints for that retry.
"""

from __future__ import annotations

from typing import Any

from leptonflow_airflow.operators import LeptonflowStepOperator


class TorchTrainOperator(LeptonflowStepOperator):
    """Distributed PyTorch training of one data interval (DDP; NCCL + bf16 on GPU, gloo on CPU)."""

    ui_color = "#ede9fe"

    def __init__(self, *, dataset: str, pool: str = "gpu", **kwargs: Any) -> None:
        kwargs.pop("step", None)  # always the train step
        super().__init__(step="train", dataset=dataset, pool=pool, **kwargs)

    def execute(self, context: Any) -> dict[str, Any]:
        ti = context.get("ti")
        attempt = getattr(ti, "try_number", 1) or 1
        if attempt > 1:
            self.log.info("attempt %s: training resumes from the interval's last checkpoint if there is one", attempt)
        result = super().execute(context)
        self.log.info("train: %s epochs, best val %s %.4f, %.0f samples/s on %s x %s (resumed from step %s)",
                      result.get("epochs_run"), result.get("metric"), result.get("best_val_metric") or 0.0,
                      result.get("train_samples_per_s") or 0.0, result.get("workers"), result.get("device"),
                      result.get("resumed_from_step"))
        return result

    def on_kill(self) -> None:
        from tasks.training.train import stop_running

        stop_running()
