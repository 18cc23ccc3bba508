"""Evaluation of the trained model on the held-out test split, and the model loading API.

``run(ctx)`` streams the test split through the shared feature transform,
scores the committed model (loaded only after its manifest sha256 matches, as a
weights-only state dict) and commits an ``evaluation`` manifest: AUC, accuracy,
log loss and calibration (ECE + reliability curve PNG) for classification,
RMSE / MAE for regression.

For other steps: ``load_model(ctx) -> (model, stats, config)`` and
``predict(model, stats, table) -> np.ndarray`` (probabilities or values), and
the metric helpers the training loop uses for early stopping.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from tasks.io.code_version import code_version
from tasks.io.lake import Lake, Manifest, ManifestError
from tasks.training.model import build_model, to_prediction
from tasks.training.stream import StreamDataset

log = logging.getLogger(__name__)



# ---- metrics ----------------------------------------------------------------------------------
def primary_metric(task: str) -> tuple[str, bool]:
    """(name, higher_is_better) of the metric that early stopping and model selection use."""
    return ("auc", True) if task == "classification" else ("rmse", False)


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present (undefined)."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, p))


def metric_value(task: str, y: np.ndarray, p: np.ndarray) -> float:
    if task == "classification":
        value = auc(y, p)
        if value is None:
            log.warning("AUC is undefined (one class in %d rows); using 0.5", len(y))
            return 0.5
        return value
    return float(np.sqrt(np.mean((p - y) ** 2))) if len(y) else float("nan")


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


def classification_metrics(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    eps = 1e-7
    pc = np.clip(p.astype(np.float64), eps, 1 - eps)
    ece, curve = reliability(y, p, bins)
    return {
        "auc": auc(y, p),
        "accuracy": float(((p >= 0.5) == (y >= 0.5)).mean()),
        "log_loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        "ece": ece,
        "positive_rate": float(y.mean()),
        "reliability": curve,
        "rows": int(len(y)),
    }


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    err = p.astype(np.float64) - y
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))), "rows": int(len(y))}


# ---- prediction -------------------------------------------------------------------------------
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


# ---- loading the committed model --------------------------------------------------------------
def read_verified(lake: Lake, manifest: Manifest, name: str) -> bytes:
    """A manifest-listed file's bytes, refused unless its sha256 matches the manifest."""
    entry = manifest.entry(name)
    path = lake.abspath(manifest, entry)
    data = lake.fs.cat_file(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise ManifestError(f"{path}: sha256 {digest[:16]}... does not match the manifest; refusing to load it")
    return data


def load_model(ctx: Any) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The committed model of ctx's interval: (model in eval mode, feature stats, model_config)."""
    lake: Lake = ctx.lake
    m = lake.require("model", ctx.dataset, ctx.ds)
    config = json.loads(read_verified(lake, m, "model_config.json"))
    state = torch.load(io.BytesIO(read_verified(lake, m, "model.pt")), map_location="cpu", weights_only=True)
    stats = config["feature_stats"]
    model = build_model(stats, config["hparams"])
    model.load_state_dict(state)
    return model.eval(), stats, config


# ---- the step ---------------------------------------------------------------------------------
def _reliability_png(curve: list[dict[str, float]], ece: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    ax.plot([c["mean_pred"] for c in curve], [c["frac_pos"] for c in curve], "o-", label=f"model (ECE {ece:.3f})")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive rate")
    ax.set_title("reliability (test split)")
    ax.legend(loc="upper left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def run(ctx: Any) -> dict[str, Any]:
    lake: Lake = ctx.lake
    model_m = lake.require("model", ctx.dataset, ctx.ds)
    split_m = lake.require("split", ctx.dataset, ctx.ds)
    params = ctx.cache_params(__name__)
    batch_size, bins = ctx.param("eval_batch_size"), ctx.param("calibration_bins")
    code = code_version(__name__)
    input_fp = Lake.manifests_fingerprint(model_m, split_m)
    hit = lake.cache_hit("evaluation", ctx.dataset, ctx.ds, input_fp, code, params)
    if hit is not None:
        log.info("evaluation of %s ds=%s is up to date (cache hit)", ctx.dataset, ctx.ds)
        return {"cache_hit": True, **hit.extra.get("metrics", {})}
    test = split_m.group_files("test")
    if not test:
        raise ManifestError(f"split/{ctx.dataset} ds={ctx.ds}: no files in group 'test' to evaluate on")
    model, stats, config = load_model(ctx)
    task = stats["task"]
    urls = [lake.full_url(lake.abspath(split_m, f)) for f in test]
    ds = StreamDataset(urls, stats, batch_size, crypto=ctx.crypto(), shuffle=False)
    y, p = predict_batches(model, ds, task)
    version, vdir = lake.new_version("evaluation", ctx.dataset, ctx.ds)
    try:
        files = []
        if task == "classification":
            metrics = classification_metrics(y, p, bins)
            files.append(lake.put_bytes(vdir, version, "reliability.png", _reliability_png(metrics["reliability"],
                                                                                      metrics["ece"])))
        else:
            metrics = regression_metrics(y, p)
        metrics["task"] = task
        files.append(lake.put_bytes(vdir, version, "metrics.json", json.dumps(metrics, indent=1).encode()))
        manifest = lake.commit(Manifest(
            stage="evaluation", dataset=ctx.dataset, ds=ctx.ds, version=version, files=files,
            input_fingerprint=input_fp, code_version=code, params=params,
            extra={"metrics": metrics, "model_version": model_m.version, "val_metric": config.get("best_val_metric")},
        ))
    except BaseException:
        lake.discard("evaluation", ctx.dataset, ctx.ds, version)
        raise
    log.info("evaluation %s ds=%s on %d test rows: %s", ctx.dataset, ctx.ds, len(y),
             {k: v for k, v in metrics.items() if k != "reliability"})
    paths = {f.path.rsplit("/", 1)[-1]: lake.full_url(lake.abspath(manifest, f)) for f in files}
    return {**metrics, "paths": paths, "version": version}
