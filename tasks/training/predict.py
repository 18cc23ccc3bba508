"""The trained model: loading the committed one (verified) and predicting with it.

:func:`load_model` is the one loader of the ``model`` stage: its weights and config are read
through :mod:`tasks.io.verified` (size + sha256 against the signed manifest) and the weights
are loaded as tensors only (``weights_only``, no pickle). :func:`predict_batches` is what
training validates with and evaluation scores with; :func:`predict` scores a table of clean rows.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from tasks.errors import IntegrityError, ManifestError
from tasks.io import verified
from tasks.io.lake import Lake, Manifest
from tasks.training.model import build_model, to_prediction


@dataclass
class TrainedModel:
    """A committed model: the module (eval mode), its feature statistics and the model_config.json."""

    model: nn.Module
    stats: dict[str, Any]
    config: dict[str, Any]

    @property
    def hparams(self) -> dict[str, Any]:
        return self.config.get("hparams", self.config)


def load_model(lake: Lake, manifest: Manifest, stats: dict[str, Any] | None = None) -> TrainedModel:
    """The model of a ``model`` manifest, built from verified bytes.

    Args:
        stats: the feature statistics to build the model for (default: the config's ``feature_stats``).

    Raises:
        ManifestError: the manifest lists no model.pt / model_config.json, or there are no feature stats.
        IntegrityError: a file is missing or does not match the manifest, or model.pt is not a plain
            state dict.
    """
    config = json.loads(verified.read_named(lake, manifest, "model_config.json"))
    entry = manifest.entry("model.pt")
    url = verified.file_url(lake, manifest, entry)
    data = verified.read_bytes(lake, manifest, entry)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError for non-tensor payloads
        raise IntegrityError(f"{url}: not a plain state dict (refused by weights_only load): {exc}",
                             path=url, problem="weights") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a checkpoint payload: its model part
    if not isinstance(state, dict):
        raise IntegrityError(f"{url}: expected a state dict, got {type(state).__name__}", path=url, problem="weights")
    stats = stats or config.get("feature_stats")
    if not stats:
        raise ManifestError(f"{verified.file_url(lake, manifest, manifest.entry('model_config.json'))}: "
                            "no feature_stats, and none were given")
    # the de-standardization the model was trained with (regression), whatever stats it is built for
    target = (config.get("arch") or {}).get("target")
    model = build_model(stats, config.get("hparams", config), target=target)
    model.load_state_dict(state)
    return TrainedModel(model.eval(), stats, config)


@torch.no_grad()
def predict_batches(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], task: str, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predictions) over batches of (x_num, x_cat, y); only two float arrays are kept."""
    was_training = model.training
    model.eval()
    ys, ps = [], []
    for x_num, x_cat, y in batches:
        out = model(x_num.to(device), x_cat.to(device)).float()
        ps.append(to_prediction(out, task).cpu().numpy())
        ys.append(y.numpy())
    model.train(was_training)
    if not ys:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(ys), np.concatenate(ps)


def predict(model: nn.Module, stats: dict[str, Any], table: pa.Table, batch_size: int = 8192) -> np.ndarray:
    """Predictions for a table of clean rows (probabilities for classification, values for regression)."""
    from tasks.prep import features

    x_num, x_cat, _ = features.transform(table, stats)
    xn, xc = torch.from_numpy(np.asarray(x_num, np.float32)), torch.from_numpy(np.asarray(x_cat, np.int64))
    batches = (
        (xn[i : i + batch_size], xc[i : i + batch_size], torch.zeros(0)) for i in range(0, len(xn), batch_size)
    )
    _, p = predict_batches(model, batches, stats["task"])
    return p
