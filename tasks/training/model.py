"""The tabular network: standardized numeric features + one embedding per categorical, then an MLP.

Everything needed to rebuild the network is in ``model_arch(stats, hparams)``, a
small JSON dict stored in ``model_config.json`` next to the weights, so
compression, publishing and serving rebuild it with ``build_model`` and load a
plain ``state_dict``.
"""

from __future__ import annotations

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
    }


class TabularNet(nn.Module):
    def __init__(self, n_numeric: int, cardinalities: list[int], hidden: list[int], dropout: float = 0.0):
        super().__init__()
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
        return self.head(self.mlp(torch.cat(parts, dim=1))).squeeze(-1)


def build_model(stats: dict[str, Any], hparams: dict[str, Any] | None = None) -> TabularNet:
    """The network for these feature stats and hparams (hidden, dropout); ``model.arch`` records its shape."""
    arch = model_arch(stats, hparams or {})
    model = TabularNet(arch["n_numeric"], arch["cardinalities"], arch["hidden"], arch["dropout"])
    model.arch = arch
    return model


def loss_fn(task: str) -> nn.Module:
    if task == "classification":
        return nn.BCEWithLogitsLoss()
    if task == "regression":
        return nn.MSELoss()
    raise ValueError(f"label task must be classification or regression, got {task!r}")


def to_prediction(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """Network outputs -> predictions: probabilities for classification, values for regression."""
    return torch.sigmoid(outputs) if task == "classification" else outputs
