"""The whole pipeline DAG through the REAL scheduler, dag-processor, triggerer and
LocalExecutor (not dag.test(): child processes behave differently under the executor)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.steps import ORDER
from tests.e2e.conftest import failed_logs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_run(airflow_stack, scheduled_run):
    return {**scheduled_run, "stack": airflow_stack, "env": airflow_stack.env_vars}


def test_every_task_succeeded(pipeline_run):
    failed = {t: s for t, s in pipeline_run["states"].items() if s != "success"}
    if failed:
        logs = failed_logs(pipeline_run["stack"], pipeline_run["run_id"], failed)
        pytest.fail(f"tasks not successful: {failed}\n{logs}")
    assert pipeline_run["state"] == "success"
    assert set(pipeline_run["states"]) == set(ORDER)


def test_rows_are_accounted_for_exactly(pipeline_run):
    from tasks.context import StepContext

    ctx = StepContext(dataset="events", ds=pipeline_run["ds"])
    raw_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in ctx.lake.raw_files("events", ctx.ds))
    clean = ctx.lake.require("clean", "events", ctx.ds)
    quarantine = ctx.lake.require("quarantine", "events", ctx.ds)
    acc = clean.extra["accounting"]
    assert acc["rows_in"] == raw_rows
    assert acc["rows_in"] == acc["rows_clean"] + acc["rows_rejected"]
    assert clean.rows == acc["rows_clean"] and quarantine.rows == acc["rows_rejected"]
    split = ctx.lake.require("split", "events", ctx.ds)
    assert sum(split.rows_in(g) for g in ("train", "val", "test")) == clean.rows
    for stage in ("secure", "model", "evaluation", "compressed"):
        assert ctx.lake.require(stage, "events", ctx.ds).signature


def test_published_model_predicts_better_than_chance(pipeline_run):
    from sklearn.metrics import roc_auc_score

    from tasks.context import StepContext
    from tasks.io.parquet import read_table
    from tasks.prep import features
    from tasks.publishing import publish
    from tasks.training import predict

    ctx = StepContext(dataset="events", ds=pipeline_run["ds"])
    pointer = json.loads(Path(ctx.artifacts_url, "models", "events", "latest.json").read_text())
    url = str(Path(ctx.artifacts_url, "models", "events", pointer["version"]))
    model = publish.load_published(url, ctx.keys)
    split = ctx.lake.require("split", "events", ctx.ds)
    stats = split.extra["feature_stats"]
    crypto = ctx.crypto()
    tables = [read_table(ctx.lake.abspath(split, f), crypto) for f in split.group_files("test")]
    import pyarrow as pa

    table = pa.concat_tables(tables)
    _, _, y = features.transform(table, stats)
    scores = predict.predict(model, stats, table)
    auc = roc_auc_score(y, np.asarray(scores))
    assert auc > 0.65, auc


def test_no_key_material_in_logs_or_xcom(pipeline_run):
    from tasks.security import keyring
    from tasks.security.keyring import key_material_fingerprints

    ring = keyring.load(pipeline_run["env"]["LEPTONFLOW_KEYRING"], create=False)
    needles = key_material_fingerprints(ring)
    assert needles
    home = pipeline_run["stack"].home
    texts = [p.read_text(errors="replace") for p in (home / "logs").rglob("*.log")]
    db = sqlite3.connect(home / "airflow.db")
    texts += [str(v) for (v,) in db.execute("select value from xcom")]
    db.close()
    assert texts
    for needle in needles:
        assert not any(needle in t for t in texts), "key material leaked into a log or XCom"


def test_publish_emitted_an_asset_event(pipeline_run):
    """Downstream DAGs can be scheduled on new models: publish's outlet produced an Asset event."""
    db = sqlite3.connect(pipeline_run["stack"].home / "airflow.db")
    rows = db.execute(
        "select a.name, e.extra from asset_event e join asset a on a.id = e.asset_id where a.name = ?",
        ("leptonflow_model_events",),
    ).fetchall()
    db.close()
    assert rows, "no Asset event for leptonflow_model_events"
    extra = json.loads(rows[-1][1]) if isinstance(rows[-1][1], str) else rows[-1][1]
    assert extra.get("verified") is True and extra.get("artifact_url")
