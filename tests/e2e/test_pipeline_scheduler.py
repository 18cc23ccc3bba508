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


def test_no_key_material_in_logs_xcom_db_lake_artifacts_or_report(pipeline_run):
    """Every secret of the keyring, raw / hex / base64: in no task or service log, XCom, trigger argument,
    rendered template field, manifest, lake file, artifact or the report page."""
    from tasks.publishing import report
    from tasks.security import keyring
    from tests import secret_scan

    ring = keyring.load(pipeline_run["env"]["LEPTONFLOW_KEYRING"])
    stack = pipeline_run["stack"]
    items = [("logs", p.relative_to(stack.home).as_posix(), p.read_bytes())
             for p in sorted(stack.home.rglob("*.log")) if p.is_file()]
    db = sqlite3.connect(stack.home / "airflow.db")
    for kind, query in (("xcom", "select key, value from xcom"), ("trigger", "select classpath, kwargs from trigger"),
                        ("rendered fields", "select task_id, rendered_fields from rendered_task_instance_fields"),
                        ("dag run conf", "select run_id, conf from dag_run")):
        items += [(kind, str(name), str(value).encode()) for name, value in db.execute(query)]
    db.close()
    lf_home = Path(pipeline_run["env"]["LEPTONFLOW_HOME"])
    items += secret_scan.files(lf_home, exclude=("keys",))
    facts = report.collect("events", pipeline_run["ds"])
    items.append(("html", "report page", report.html_page(facts).encode()))
    result = secret_scan.scan(ring, items)
    print(result.summary(len(keyring.secret_forms(ring)), len(ring.master_keys) + len(ring.signing_keys)))
    assert result.by_kind.get("logs", 0) >= len(ORDER) and result.by_kind.get("xcom", 0) >= len(ORDER)
    assert result.by_kind.get("manifests", 0) >= 8 and result.by_kind.get("artifacts", 0) >= 5
    assert result.hits == []


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
