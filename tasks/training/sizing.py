"""How much training a split gets: the batch bounded by its rows, a minimum of optimizer steps, the LR schedule.

A fixed number of epochs at a fixed batch size is not a training budget: ~1,000 train rows at a
batch of 1024 is one optimizer step per epoch, and 3 epochs are 3 steps (a model no better than
the train mean). The rules, all from settings of :mod:`tasks.params` (Training section):

* **Batch bounded by the rows.** The global batch is at most ``train_rows // min_epoch_steps``,
  so an epoch has at least ``min_epoch_steps`` steps, but not below ``MIN_AUTO_BATCH`` rows
  (or the whole split when it is smaller): gradients of a few rows are noise. ``batch_size`` is
  the upper bound, never raised.
* **A minimum of optimizer steps.** Epochs are ``max(epochs, ceil(min_steps / steps_per_epoch))``;
  early stopping may end training only once ``min_steps`` steps are done (a noisy validation
  metric of a small split must not stop it after a handful of steps).
* **A learning-rate schedule.** Linear warmup over ``warmup_fraction`` of the planned steps, then
  cosine decay to 0 at the last planned step (``lr_schedule`` "cosine") or flat (``"constant"``).
  The rate is a pure function of the global step (:func:`lr_at`), so a resumed run continues the
  schedule exactly without any scheduler state in the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

MIN_AUTO_BATCH = 32  # the smallest batch the row bound picks (a smaller batch_size setting is kept)
MAX_EPOCHS = 10_000  # the epochs setting's own maximum


def batch_for(train_rows: int, batch_size: int, min_epoch_steps: int) -> int:
    """The global batch for `train_rows`: ``batch_size``, lowered so an epoch has ``min_epoch_steps`` steps."""
    if train_rows < 1:
        return max(1, batch_size)
    bound = max(train_rows // max(1, min_epoch_steps), min(MIN_AUTO_BATCH, train_rows))
    return max(1, min(batch_size, bound))


@dataclass(frozen=True)
class Sizing:
    """The training budget of one run (recorded in the model manifest and ``model_config.json``)."""

    train_rows: int
    batch_size: int  # global batch used
    requested_batch_size: int  # setting batch_size (the upper bound)
    steps_per_epoch: int
    epochs: int  # planned: at least setting epochs, more when min_steps needs them
    total_steps: int
    min_steps: int
    warmup_steps: int
    schedule: str
    lr: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan(train_rows: int, batch_size: int, steps_per_epoch: int, hp: dict[str, Any]) -> Sizing:
    """The budget for `steps_per_epoch` steps of `batch_size` rows (hp: the train step's settings)."""
    steps = max(1, steps_per_epoch)
    min_steps = int(hp.get("min_steps") or 0)
    epochs = min(MAX_EPOCHS, max(int(hp["epochs"]), math.ceil(min_steps / steps)))
    total = epochs * steps
    warmup = min(total - 1, int(round(float(hp.get("warmup_fraction") or 0.0) * total))) if total > 1 else 0
    return Sizing(train_rows=train_rows, batch_size=batch_size, requested_batch_size=int(hp["batch_size"]),
                  steps_per_epoch=steps, epochs=epochs, total_steps=total, min_steps=min_steps,
                  warmup_steps=max(0, warmup), schedule=str(hp.get("lr_schedule") or "constant"),
                  lr=float(hp["lr"]))


def lr_at(step: int, s: Sizing) -> float:
    """The learning rate of optimizer step `step` (0-based global step) under sizing `s`."""
    if s.warmup_steps and step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.schedule != "cosine":
        return s.lr
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.total_steps - s.warmup_steps))
    return s.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
