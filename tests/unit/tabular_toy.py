"""A small tabular model and synthetic data with the pipeline's shape conventions.

forward(x_num: float32[n, k], x_cat: int64[n, m]) -> logits[n], like tasks.training.model's models;
used by the compression/export/publish tests (and bench/compress.py when the trained demo
model is unavailable) so they do not depend on the training step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ToyTabular(nn.Module):
    def __init__(self, n_num: int = 4, vocab: tuple[int, ...] = (4, 9, 4, 9), emb: int = 4,
                 hidden: tuple[int, ...] = (64, 32), dropout: float = 0.0):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(v, emb) for v in vocab)
        layers: list[nn.Module] = []
        width = n_num + emb * len(vocab)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        embs = [e(x_cat[:, i]) for i, e in enumerate(self.embeddings)]
        return self.mlp(torch.cat([x_num, *embs], dim=1)).squeeze(-1)


def make_data(n: int, seed: int = 0, n_num: int = 4, vocab: tuple[int, ...] = (4, 9, 4, 9),
              task: str = "classification") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic rows whose label depends non-linearly on numeric and categorical inputs."""
    rng = np.random.default_rng(seed)
    x_num = rng.standard_normal((n, n_num)).astype(np.float32)
    x_cat = np.stack([rng.integers(0, v, n) for v in vocab], axis=1).astype(np.int64)
    cat_effect = np.sin(x_cat * 1.3).sum(axis=1)
    score = 1.5 * x_num[:, 0] - x_num[:, 1] * x_num[:, 2] + 0.8 * np.abs(x_num[:, 3]) + cat_effect
    if task == "regression":
        return x_num, x_cat, (score + 0.3 * rng.standard_normal(n)).astype(np.float32)
    y = (score + 0.5 * rng.standard_normal(n) > 0.5).astype(np.float32)
    return x_num, x_cat, y


def train_toy(model: nn.Module, x_num: np.ndarray, x_cat: np.ndarray, y: np.ndarray, epochs: int = 5,
              task: str = "classification", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    xn, xc, yy = torch.from_numpy(x_num), torch.from_numpy(x_cat), torch.from_numpy(y)
    loss_fn: nn.Module = nn.BCEWithLogitsLoss() if task == "classification" else nn.MSELoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(yy))
        for s in range(0, len(yy), 256):
            idx = perm[s:s + 256]
            opt.zero_grad()
            loss_fn(model(xn[idx], xc[idx]), yy[idx]).backward()
            opt.step()
    return model.eval()
