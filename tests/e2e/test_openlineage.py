"""OpenLineage events of one whole scheduled DAG run, through the real scheduler and the provider.

The e2e stack (tests/e2e/conftest.py) turns the OpenLineage provider on with its file transport:
every event the scheduler (DAG run) and the task processes (task runs) emit lands as one JSON
file. This module reads the events of the scheduled run and checks the run/job hierarchy, the
datasets each task read and wrote, and their facets, against the lake's manifests.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tasks.steps import ORDER
from tests.e2e.conftest import DAG_ID

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("LEPTONFLOW_TEST_ARTIFACTS", REPO / "test-artifacts"))


def _events(folder: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(folder.glob("event*.json")):
        text = p.read_text().strip()
        if text:  # a file being written right now is read on the next poll
            try:
                out.append(json.loads(text))
            except json.JSONDecodeError:
                continue
    return out


def _dag_run_id(event: dict[str, Any]) -> str | None:
    """The Airflow run id of the DAG run an event belongs to (task or DAG event)."""
    facets = event.get("run", {}).get("facets", {})
    for key in ("airflow", "airflowDagRun"):
        run = (facets.get(key) or {}).get("dagRun") or {}
        if run.get("run_id"):
            return run["run_id"]
    return None


@pytest.fixture(scope="module")
def lineage(airflow_stack, scheduled_run):
    """The scheduled run's events, once the DAG run's COMPLETE event (sent by the scheduler) is in."""
    folder = Path(airflow_stack.openlineage["log_file_path"]).parent
    run_id = scheduled_run["run_id"]
    deadline = time.time() + 120
    while True:
        events = [e for e in _events(folder) if _dag_run_id(e) == run_id]
        dag_done = [e for e in events if e["job"]["name"] == DAG_ID and e["eventType"] in ("COMPLETE", "FAIL")]
        if dag_done or time.time() > deadline:
            break
        time.sleep(3)
    tasks: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for e in events:
        name = e["job"]["name"]
        if name.startswith(f"{DAG_ID}."):
            tasks.setdefault(name.split(".", 1)[1], {}).setdefault(e["eventType"], []).append(e)
    counts = {t: dict(Counter({k: len(v) for k, v in kinds.items()})) for t, kinds in sorted(tasks.items())}
    log.info("OpenLineage events per task: %s", counts)
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "openlineage-event-counts.json").write_text(json.dumps(
        {"dag": Counter(e["eventType"] for e in events if e["job"]["name"] == DAG_ID), "tasks": counts}, indent=1))
    return {"events": events, "dag": [e for e in events if e["job"]["name"] == DAG_ID], "tasks": tasks,
            "run": scheduled_run, "stack": airflow_stack, "folder": folder}


def _complete(lineage: dict[str, Any], task: str) -> dict[str, Any]:
    done = lineage["tasks"].get(task, {}).get("COMPLETE")
    assert done, f"no COMPLETE event for {task}: {sorted(lineage['tasks'].get(task, {}))}"
    return done[-1]


def _by_stage(datasets: list[dict[str, Any]], stage: str, ds: str) -> dict[str, Any]:
    suffix = f"/{stage}/events/ds={ds}"
    found = [d for d in datasets if d["name"].endswith(suffix)]
    assert found, f"no {stage} dataset among {[d['name'] for d in datasets]}"
    return found[0]


def test_run_succeeded_and_every_task_emitted_start_and_complete(lineage):
    assert lineage["run"]["state"] == "success", lineage["run"]["states"]
    kinds = {e["eventType"] for e in lineage["dag"]}
    assert {"START", "COMPLETE"} <= kinds, kinds
    for task in ORDER:
        events = lineage["tasks"].get(task, {})
        assert events.get("START") and events.get("COMPLETE"), (task, sorted(events))
        assert not events.get("FAIL"), task


def test_task_runs_are_children_of_the_dag_run(lineage):
    dag_run_ids = {e["run"]["runId"] for e in lineage["dag"]}
    assert len(dag_run_ids) == 1, dag_run_ids
    (dag_run_id,) = dag_run_ids
    namespace = lineage["dag"][0]["job"]["namespace"]
    assert namespace == "leptonflow"
    for task in ORDER:
        for event in (lineage["tasks"][task]["START"][0], _complete(lineage, task)):
            parent = event["run"]["facets"]["parent"]
            assert parent["run"]["runId"] == dag_run_id, task
            assert (parent["job"]["namespace"], parent["job"]["name"]) == (namespace, DAG_ID), task
            assert event["job"]["namespace"] == namespace
        # one task run: its START and COMPLETE share the run id, which is not the DAG run's
        assert lineage["tasks"][task]["START"][0]["run"]["runId"] == _complete(lineage, task)["run"]["runId"]
        assert _complete(lineage, task)["run"]["runId"] != dag_run_id
        facet = _complete(lineage, task)["run"]["facets"]["leptonflow"]
        assert facet["step"] == task and facet["ds"] == lineage["run"]["ds"]


def test_every_lake_input_was_written_by_an_earlier_task(lineage):
    ds = lineage["run"]["ds"]
    written: set[tuple[str, str]] = set()
    for task in ORDER:
        event = _complete(lineage, task)
        for d in event["inputs"]:
            key = (d["namespace"], d["name"])
            assert d["namespace"] == "file"
            if d["name"].endswith(f"/raw/events/ds={ds}"):
                continue  # the landing zone: nobody in the DAG writes it
            assert key in written, f"{task} reads {d['name']}, which no earlier task wrote"
            assert d["facets"]["version"]["datasetVersion"]
        for d in event["outputs"]:
            written.add((d["namespace"], d["name"]))
        assert event["inputs"], f"{task} reports no input"
    produced = {name.split("/events/")[0].rsplit("/", 1)[-1] for _, name in written if "/events/ds=" in name}
    assert {"validation", "clean", "quarantine", "split", "secure", "model", "evaluation", "compressed"} <= produced


def test_clean_reports_schema_row_counts_and_column_lineage(lineage):
    from tasks.context import StepContext
    from tasks.spec import spec_for

    ds = lineage["run"]["ds"]
    ctx = StepContext(dataset="events", ds=ds)
    spec = spec_for("events")
    event = _complete(lineage, "clean")
    raw = _by_stage(event["inputs"], "raw", ds)
    assert raw["name"] == ctx.lake.interval_dir("raw", "events", ds)
    assert [f["name"] for f in raw["facets"]["schema"]["fields"]] == spec.column_names
    clean = _by_stage(event["outputs"], "clean", ds)
    quarantine = _by_stage(event["outputs"], "quarantine", ds)
    cm, qm = ctx.lake.require("clean", "events", ds), ctx.lake.require("quarantine", "events", ds)
    assert clean["outputFacets"]["outputStatistics"]["rowCount"] == cm.rows
    assert clean["outputFacets"]["outputStatistics"]["size"] == sum(f.bytes for f in cm.files)
    assert quarantine["outputFacets"]["outputStatistics"]["rowCount"] == qm.rows
    assert raw["inputFacets"]["inputStatistics"]["rowCount"] == cm.rows + qm.rows  # every row accounted
    assert clean["facets"]["version"]["datasetVersion"] == cm.version
    types = {f["name"]: f["type"] for f in clean["facets"]["schema"]["fields"]}
    assert types["price"] == "double" and types["event_ts"].startswith("timestamp") and types["purchased"] == "boolean"
    lineage_facet = clean["facets"]["columnLineage"]
    assert set(lineage_facet["fields"]) == set(spec.column_names)
    for col, f in lineage_facet["fields"].items():
        (src,) = f["inputFields"]
        assert (src["namespace"], src["name"], src["field"]) == (raw["namespace"], raw["name"], col)
    assert lineage_facet["fields"]["email"]["transformationType"] == "TRANSFORMATION"  # normalize: lower
    assert "clip" in lineage_facet["fields"]["quantity"]["transformationDescription"]
    assert lineage_facet["fields"]["event_id"]["transformationType"] == "IDENTITY"
    indirect = {(i["field"], i["transformations"][0]["subtype"]) for i in lineage_facet["dataset"]}
    assert ("event_id", "FILTER") in indirect and ("user_id", "CONDITIONAL") in indirect
    split = _by_stage(_complete(lineage, "split")["outputs"], "split", ds)
    src = split["facets"]["columnLineage"]["fields"]["price"]["inputFields"][0]
    assert src["name"] == clean["name"]


def test_validation_reports_the_gx_results_as_assertions(lineage):
    ds = lineage["run"]["ds"]
    for task, stage in (("validate_raw", "raw"), ("validate_clean", "clean")):
        event = _complete(lineage, task)
        validated = _by_stage(event["inputs"], stage, ds)
        assertions = validated["inputFacets"]["dataQualityAssertions"]["assertions"]
        result = event["run"]["facets"]["leptonflow"]["summary"]
        assert len(assertions) == result["evaluated_expectations"] > 5
        assert sum(a["success"] for a in assertions) == result["successful_expectations"]
        assert any(a["assertion"] == "expect_column_values_to_not_be_null" and a["column"] == "event_id"
                   for a in assertions)
        metrics = validated["inputFacets"]["dataQualityMetrics"]
        assert metrics["rowCount"] == result["rows_validated"]
        assert "event_id" in metrics["columnMetrics"]
        assert _by_stage(event["outputs"], "validation", ds)["facets"]["version"]["datasetVersion"]


def test_publish_reports_the_model_artifact_with_its_version(lineage):
    from tasks.context import StepContext

    ctx = StepContext(dataset="events", ds=lineage["run"]["ds"])
    pointer = json.loads(Path(ctx.artifacts_url, "models", "events", "latest.json").read_text())
    event = _complete(lineage, "publish")
    (model,) = [d for d in event["outputs"] if d["name"] == str(Path(ctx.artifacts_url, "models", "events"))]
    assert model["namespace"] == "file"
    assert model["facets"]["version"]["datasetVersion"] == pointer["version"]
    assert model["outputFacets"]["outputStatistics"]["size"] > 0
    assert "prediction" in [f["name"] for f in model["facets"]["schema"]["fields"]]
    assert {_by_stage(event["inputs"], s, ctx.ds)["name"] for s in ("compressed", "evaluation")}
    train = _by_stage(_complete(lineage, "train")["outputs"], "model", ctx.ds)
    assert train["facets"]["version"]["datasetVersion"] == ctx.lake.require("model", "events", ctx.ds).version


def test_no_key_material_in_lineage_events(lineage):
    from tasks.security import keyring
    from tasks.security.keyring import key_material_fingerprints

    ring = keyring.load(lineage["stack"].env_vars["LEPTONFLOW_KEYRING"])
    texts = [p.read_text() for p in lineage["folder"].glob("event*.json")]
    assert texts
    for needle in key_material_fingerprints(ring):
        assert not any(needle in t for t in texts), "key material leaked into an OpenLineage event"
