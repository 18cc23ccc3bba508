"""Evaluation of the trained model on the held-out test split.

``run(ctx)`` streams the test split through the shared feature transform, scores the
committed model (:func:`tasks.training.predict.load_model`: size + sha256 checked against the
manifest, weights-only) and commits an ``evaluation`` manifest: AUC, accuracy, log loss and
calibration (ECE + reliability curve PNG) for classification, RMSE / MAE for regression
(:mod:`tasks.training.metrics`). The test files are verified against the split manifest as they
are streamed (size, rows, sha256: :class:`tasks.io.verified.VerifyingFile`). A test split with a
single label class is refused (:class:`tasks.training.metrics.MetricError`), not scored with a made-up AUC.

The same test rows are scored by the trivial predictor (train prior / mean) and a linear baseline
(logistic / ridge regression on the same features, fitted on a bounded train sample:
:mod:`tasks.training.baselines`). The manifest and the step result carry the three side by side
(``baselines``, ``comparison``) and the verdict of the publish gate (``gate``, setting
``baseline_tolerance``); publishing refuses a model whose gate failed.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from tasks.errors import ManifestError
from tasks.io import verified
from tasks.io.code_version import code_version
from tasks.io.lake import Lake, Manifest
from tasks.training import baselines
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
    max_rows, tolerance, seed = ctx.param("baseline_max_rows"), ctx.param("baseline_tolerance"), ctx.param("seed")
    code = code_version(__name__)
    input_fp = Lake.manifests_fingerprint(model_m, split_m)
    hit = lake.cache_hit("evaluation", ctx.dataset, ctx.ds, input_fp, code, params)
    if hit is not None:
        log.info("evaluation of %s ds=%s is up to date (cache hit)", ctx.dataset, ctx.ds)
        return {"cache_hit": True, **hit.extra.get("metrics", {}),
                **{k: hit.extra[k] for k in ("baselines", "comparison", "gate") if k in hit.extra}}
    test = split_m.group_files("test")
    if not test:
        raise ManifestError(f"split/{ctx.dataset} ds={ctx.ds}: no files in group 'test' to evaluate on")
    trained = load_model(lake, model_m)
    model, stats, config = trained.model, trained.stats, trained.config
    task = stats["task"]
    linear, lin_info, trivial = _fit_baselines(ctx, split_m, stats, max_rows, seed)
    urls = [verified.file_url(lake, split_m, f) for f in test]
    # each test file's size, rows and sha256 are checked as it is read (no extra pass); a file that is
    # not the manifest's fails here, naming it, before any metric is computed
    ds = StreamDataset(urls, stats, batch_size, crypto=ctx.crypto(), shuffle=False, entries=test)
    lin_parts: list = []
    y, p = predict_batches(model, baselines.tee_linear(ds, linear, lin_parts), task)  # one pass, same rows
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
        compared = _compare(task, y, p, trivial, linear, lin_parts, lin_info, tolerance)
        files.append(lake.put_bytes(vdir, version, "metrics.json", json.dumps({**metrics, **compared},
                                                                                indent=1).encode()))
        manifest = lake.commit(Manifest(
            stage="evaluation", dataset=ctx.dataset, ds=ctx.ds, version=version, files=files,
            input_fingerprint=input_fp, code_version=code, params=params,
            extra={"metrics": metrics, "model_version": model_m.version, "val_metric": config.get("best_val_metric"),
                   **compared},
        ))
    except BaseException:
        lake.discard("evaluation", ctx.dataset, ctx.ds, version)
        raise
    log.info("evaluation %s ds=%s on %d test rows: %s", ctx.dataset, ctx.ds, len(y),
             {k: v for k, v in metrics.items() if k != "reliability"})
    g = compared["gate"]
    (log.info if g["passed"] else log.warning)("baseline gate %s: %s", "passed" if g["passed"] else "FAILED: "
                                               + "; ".join(g["reasons"]), baselines.Gate(**g).describe())
    paths = {f.path.rsplit("/", 1)[-1]: lake.full_url(lake.abspath(manifest, f)) for f in files}
    return {**metrics, **compared, "paths": paths, "version": version}


def _fit_baselines(ctx: Any, split_m: Manifest, stats: dict[str, Any], max_rows: int,
                   seed: int) -> tuple[baselines.LinearBaseline | None, dict[str, Any], float]:
    """(the linear baseline or None, what it was fitted on, the trivial prediction) from a train sample."""
    task = stats["task"]
    x_num, x_cat, y_tr = baselines.train_sample(ctx.lake, split_m, stats, ctx.crypto(), max_rows, seed)
    trivial = baselines.trivial_value(task, stats, y_tr)
    info: dict[str, Any] = {"train_rows": int(len(y_tr))}
    try:
        linear = baselines.fit_linear(task, stats, x_num, x_cat, y_tr)
        info["estimator"] = linear.name
    except ValueError as exc:  # e.g. one label class in the sample: no linear fit, the gate says so
        log.warning("linear baseline of %s ds=%s could not be fitted on %d train rows: %s", ctx.dataset, ctx.ds,
                    len(y_tr), exc)
        linear, info["error"] = None, str(exc)
    return linear, info, trivial


def _compare(task: str, y: Any, p: Any, trivial: float, linear: baselines.LinearBaseline | None,
             lin_parts: list, lin_info: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """The three predictors' metrics on the test rows, the primary metric side by side, the gate verdict."""
    import numpy as np

    from tasks.training.metrics import primary_metric

    name, higher = primary_metric(task)
    model_m = baselines.predictor_metrics(task, y, p)
    trivial_m = {**baselines.predictor_metrics(task, y, np.full(len(y), trivial)), "prediction": trivial}
    linear_m = None
    if linear is not None:
        lin_p = np.concatenate(lin_parts) if lin_parts else np.zeros(0)
        linear_m = {**baselines.predictor_metrics(task, y, lin_p), **lin_info}
    g = baselines.gate(task, model_m[name], trivial_m[name], linear_m[name] if linear_m else None, tolerance)
    return {
        "baselines": {"model": model_m, "trivial": trivial_m, "linear": linear_m or lin_info},
        "comparison": {"task": task, "metric": name, "higher_is_better": higher, "model": model_m[name],
                       "trivial": trivial_m[name], "linear": linear_m[name] if linear_m else None},
        "gate": g.to_json(),
    }
