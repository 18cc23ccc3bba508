"""The tabular network: standardized numeric features + one embedding per categorical, then an MLP.

Everything needed to rebuild the network is in ``model_arch(stats, hparams)``, a
small JSON dict stored in ``model_config.json`` next to the weights, so
compression, publishing and serving rebuild it with ``build_model`` and load a
plain ``state_dict``.

Regression targets are standardized with the train statistics (``stats["target"]``: mean and
std): the MLP's head predicts ``(y - mean) / std`` and ``forward`` returns ``head * std + mean``,
so every consumer (evaluation, compression, export, serving) gets values on the label's own scale,
while :func:`loss_fn` trains on the standardized scale (a label in the thousands would otherwise
give a loss of ~1e9 and gradients no learning rate suits). The pair is in ``arch["target"]`` and
is a constant of the graph (not a weight), so older weights still load.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

DEFAULT_HPARAMS: dict[str, Any] = {"hidden": [64, 32], "dropout": 0.1}


def embedding_dim(cardinality: int) -> int:
    """Embedding width from vocabulary size (the fast.ai rule of thumb, capped: tabular vocabularies are small)."""
    return int(min(32, max(2, round(1.6 * cardinality**0.56))))


def parse_hidden(value: Any) -> list[int]:
    """Hidden layer widths from a Param: 64, [64, 32] or "64,32"."""
    if isinstance(value, int):
        widths = [value]
    elif isinstance(value, str):
        widths = [int(v) for v in value.replace(" ", "").split(",") if v]
    elif isinstance(value, list | tuple):
        widths = [int(v) for v in value]
    else:
        raise ValueError(f"hidden: expected an int, a list of ints or 'a,b', got {value!r}")
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"hidden: layer widths must be positive, got {value!r}")
    return widths


def model_arch(stats: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    """The network's shape as JSON: what `build_model` needs besides the weights."""
    missing = [k for k in ("numeric_features", "categorical_features", "categorical", "task") if k not in stats]
    if missing:
        raise ValueError(f"feature stats lack {missing}: not a split manifest's extra['feature_stats']")
    merged = {**DEFAULT_HPARAMS, **{k: v for k, v in hparams.items() if k in DEFAULT_HPARAMS}}
    return {
        "n_numeric": len(stats["numeric_features"]),
        # +1: index 0 is the reserved out-of-vocabulary / null slot
        "cardinalities": [len(stats["categorical"][c]["vocab"]) + 1 for c in stats["categorical_features"]],
        "hidden": parse_hidden(merged["hidden"]),
        "dropout": float(merged["dropout"]),
        "task": stats["task"],
        "target": target_scale(stats),
    }


def target_scale(stats: dict[str, Any]) -> dict[str, float]:
    """``{"loc", "scale"}`` the network's output is de-standardized with: the train label mean and std for
    regression (std 0 or unknown: 1), the identity for classification (logits)."""
    t = stats.get("target") or {}
    if stats.get("task") != "regression" or not t:
        return {"loc": 0.0, "scale": 1.0}
    std = float(t.get("std") or 0.0)
    return {"loc": float(t.get("mean") or 0.0), "scale": std if std > 0 else 1.0}


class TabularNet(nn.Module):
    def __init__(self, n_numeric: int, cardinalities: list[int], hidden: list[int], dropout: float = 0.0,
                 target: dict[str, float] | None = None):
        super().__init__()
        target = target or {"loc": 0.0, "scale": 1.0}
        self.loc, self.scale = float(target["loc"]), float(target["scale"])
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim(c)) for c in cardinalities)
        width = n_numeric + sum(e.embedding_dim for e in self.embeddings)
        if width == 0:
            raise ValueError("the model has no input features (no numeric and no categorical features)")
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        self.arch: dict[str, Any] = {}

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        parts = [x_num] + [emb(x_cat[:, i]) for i, emb in enumerate(self.embeddings)]
        out = self.head(self.mlp(torch.cat(parts, dim=1))).squeeze(-1)
        if self.scale != 1.0 or self.loc != 0.0:  # float32 even under bf16 autocast: labels may be large
            out = out.float() * self.scale + self.loc
        return out


def build_model(stats: dict[str, Any], hparams: dict[str, Any] | None = None,
                target: dict[str, float] | None = None) -> TabularNet:
    """The network for these feature stats and hparams (hidden, dropout); ``model.arch`` records its shape.

    `target` overrides the de-standardization of ``stats`` (a trained model's recorded ``arch["target"]``).
    """
    arch = model_arch(stats, hparams or {})
    if target is not None:
        arch["target"] = {"loc": float(target["loc"]), "scale": float(target["scale"])}
    model = TabularNet(arch["n_numeric"], arch["cardinalities"], arch["hidden"], arch["dropout"], arch["target"])
    model.arch = arch
    return model


def init_output(model: TabularNet, stats: dict[str, Any]) -> None:
    """Start from the trivial predictor: the head's bias is the train prior's logit (classification) or 0,
    the train mean on the standardized scale (regression)."""
    t = stats.get("target") or {}
    bias = 0.0
    if stats.get("task") == "classification" and t.get("count"):
        prior = min(max(float(t["mean"]), 1e-4), 1 - 1e-4)
        bias = math.log(prior / (1 - prior))
    with torch.no_grad():
        model.head.bias.fill_(bias)


class StandardizedMSE(nn.Module):
    """Mean squared error on the standardized scale: ``mse((out - loc) / scale, (y - loc) / scale)``."""

    def __init__(self, loc: float, scale: float):
        super().__init__()
        self.loc, self.scale = float(loc), float(scale)

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss((out.float() - self.loc) / self.scale, (y.float() - self.loc) / self.scale)


def loss_fn(task: str, target: dict[str, float] | None = None) -> nn.Module:
    """The training loss of `task`; for regression with `target` (``arch["target"]``) on the standardized scale."""
    if task == "classification":
        return nn.BCEWithLogitsLoss()
    if task == "regression":
        if target and (target["scale"] != 1.0 or target["loc"] != 0.0):
            return StandardizedMSE(target["loc"], target["scale"])
        return nn.MSELoss()
    raise ValueError(f"label task must be classification or regression, got {task!r}")


def to_prediction(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """Network outputs -> predictions: probabilities for classification, values for regression."""
    return torch.sigmoid(outputs) if task == "classification" else outputs
