"""Evaluation of the trained model on the held-out test split.

``run(ctx)`` streams the test split through the shared feature transform, scores the
committed model (:func:`tasks.training.predict.load_model`: size + sha256 checked against the
manifest, weights-only) and commits an ``evaluation`` manifest: AUC, accuracy, log loss and
calibration (ECE + reliability curve PNG) for classification, RMSE / MAE for regression
(:mod:`tasks.training.metrics`). A test split with a single label class is refused
(:class:`tasks.training.metrics.MetricError`), not scored with a made-up AUC.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from tasks.errors import ManifestError
from tasks.io.code_version import code_version
from tasks.io.lake import Lake, Manifest
from tasks.training.metrics import classification_metrics, regression_metrics
from tasks.training.predict import load_model, predict_batches
from tasks.training.stream import StreamDataset

log = logging.getLogger(__name__)


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
    """Pipeline step: score the committed model on the test split and commit the ``evaluation`` stage."""
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
    trained = load_model(lake, model_m)
    model, stats, config = trained.model, trained.stats, trained.config
    task = stats["task"]
    urls = [lake.full_url(lake.abspath(split_m, f)) for f in test]
    ds = StreamDataset(urls, stats, batch_size, crypto=ctx.crypto(), shuffle=False)
    y, p = predict_batches(model, ds, task)
    version, vdir = lake.new_version("evaluation", ctx.dataset, ctx.ds)
    try:
        files = []
        if task == "classification":
            metrics = classification_metrics(y, p, bins, split="test")
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
