"""Train step inputs: Params with defaults and clear errors, and where the ranks run (plan, Param, device)."""

from __future__ import annotations

import pytest
import torch

from tasks import params
from tasks.context import StepContext
from tasks.errors import SettingError
from tasks.io.lake import ManifestError
from tasks.training.train import auto_workers, hparams_from, placement, run


def ctx(params=None, plan=None) -> StepContext:
    return StepContext(dataset="events", ds="2026-11-08", params=params or {},
                       upstream={"plan_train": plan} if plan else {})


def test_hparams_defaults_none_params_and_errors():
    hp = hparams_from(ctx({"epochs": 7, "hidden": 128, "lr": "0.01", "seed": None}))
    assert hp["epochs"] == 7 and hp["hidden"] == [128] and hp["lr"] == 0.01 and hp["seed"] == params.get("seed").default
    assert hp["train_workers"] is None and hparams_from(ctx({"train_workers": "2"}))["train_workers"] == 2
    with pytest.raises(SettingError, match="setting batch_size: must be an integer"):
        hparams_from(ctx({"batch_size": "big"}))
    with pytest.raises(SettingError, match="setting epochs: must be >= 1"):
        hparams_from(ctx({"epochs": 0}))


def test_auto_workers():
    assert auto_workers("cpu", 1) == 0
    assert 1 <= auto_workers("cuda", 8) <= auto_workers("cuda", 1) <= 4


def test_placement_plan_then_param_then_default():
    assert placement(ctx({"train_nproc": 3}, plan={"nproc": 2, "device": "cpu"})) == (2, "cpu")
    assert placement(ctx({"train_nproc": 3})) == (3, "cpu" if not torch.cuda.is_available() else "cuda")
    if not torch.cuda.is_available():
        assert placement(ctx({}, plan={"nproc": 2, "device": "cuda"})) == (2, "cpu")  # plan is advisory
        assert placement(ctx({})) == (1, "cpu")


def test_missing_split_or_groups_are_named(lf_home):
    with pytest.raises(ManifestError, match="no committed split output for events ds=2026-11-08"):
        run(ctx({"encrypt": False}))
