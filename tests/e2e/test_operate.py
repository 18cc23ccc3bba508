"""Operating the DAG the way Airflow users do: backfills (and reprocessing them),
concurrent runs of different and of the same interval, REST API triggers with bad Params,
and a scheduler that dies mid-run."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tasks.context import StepContext
from tasks.io.parquet import read_table
from tasks.io.verified import verified_paths
from tests.e2e.conftest import DAG_ID, FAST, day, failed_logs

pytestmark = pytest.mark.slow
BACKFILL_DAYS = [day(8), day(7), day(6)]
STAGES = ("clean", "quarantine", "split", "model", "evaluation", "compressed")
# Intervals of a backfill run in parallel, so which earlier intervals are committed (the anomaly model's
# history) depends on timing; off here so reprocessing must reproduce each interval exactly.
BACKFILL_CONF = {**FAST, "anomaly_check": False}


def _runs_for(stack, days: list[str]) -> dict[str, dict]:
    runs = {}
    for r in stack.runs(DAG_ID):
        for d in days:
            if str(r.get("logical_date", "")).startswith(d):
                runs[d] = r
    return runs


def _ended_after(run: dict, after: datetime | None) -> bool:
    """The run ended after `after` (None: any time). A reprocessed interval's run is either cleared (its tasks
    run again as attempt 2) or deleted and created anew (attempt 1 again), as Airflow decides: both end anew."""
    if after is None:
        return True
    end = run.get("end_date")
    return bool(end) and datetime.fromisoformat(str(end).replace("Z", "+00:00")) > after


def _wait_runs(stack, days: list[str], timeout: float = 1200, after: datetime | None = None) -> dict[str, dict]:
    """Wait until each interval's run finished (and, with `after`, finished after that moment)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        stack.check_alive()
        runs = _runs_for(stack, days)
        done = {d: r for d, r in runs.items() if r["state"] in ("success", "failed") and _ended_after(r, after)}
        if len(done) == len(days):
            return done
        time.sleep(5)
    raise TimeoutError(f"runs for {days} did not finish: {_runs_for(stack, days)}")


def _backfill(stack, *args: str, timeout: float = 300) -> None:
    """`airflow backfill create`, waiting while the scheduler has not yet closed an earlier backfill
    (its runs can all be done while the Backfill row is still marked running)."""
    deadline = time.time() + timeout
    while True:
        try:
            stack.cli("backfill", "create", "--dag-id", DAG_ID, *args)
            return
        except RuntimeError as exc:
            if "AlreadyRunningBackfill" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(5)


def _interval_facts(ds: str) -> dict:
    """What the lake holds for one interval, verified (signatures, sha256) on the way."""
    ctx = StepContext(dataset="events", ds=ds, params={"encrypt": True})
    facts = {}
    for stage in STAGES:
        m = ctx.lake.require(stage, "events", ds)
        files = verified_paths(ctx.lake, m)
        assert len(files) == len(m.files)
        facts[stage] = {"rows": m.rows, "version": m.version}
    clean = ctx.lake.require("clean", "events", ds)
    table = pa.concat_tables(read_table(url, ctx.crypto(), ["event_id"]) for url, _ in verified_paths(ctx.lake, clean))
    facts["distinct_keys"] = pc.count_distinct(table["event_id"]).as_py()
    acc = clean.extra["accounting"]
    facts["balanced"] = acc["rows_in"] == acc["rows_clean"] + acc["rows_rejected"]
    return facts


@pytest.fixture(scope="module")
def backfilled(airflow_stack, scheduled_run):
    _backfill(
        airflow_stack, "--from-date", BACKFILL_DAYS[0], "--to-date", BACKFILL_DAYS[-1],
        "--max-active-runs", "2", "--dag-run-conf", json.dumps(BACKFILL_CONF),
    )
    runs = _wait_runs(airflow_stack, BACKFILL_DAYS)
    return {d: {"run": r, "facts": _interval_facts(d) if r["state"] == "success" else None} for d, r in runs.items()}


def test_backfill_produces_each_interval(airflow_stack, backfilled):
    for info in backfilled.values():
        run = info["run"]
        assert run["state"] == "success", failed_logs(
            airflow_stack, run["run_id"], airflow_stack.task_states(DAG_ID, run["run_id"]))
        facts = info["facts"]
        assert facts["balanced"]
        assert facts["distinct_keys"] == facts["clean"]["rows"], "duplicate keys in clean output"
    # different intervals ran in parallel (max_active_runs 2) and still differ as their inputs do
    assert len({info["facts"]["clean"]["rows"] for info in backfilled.values()}) >= 2


def test_reprocess_completed_replaces_cleanly(airflow_stack, backfilled):
    started = datetime.now(UTC)
    _backfill(
        airflow_stack, "--from-date", BACKFILL_DAYS[0], "--to-date", BACKFILL_DAYS[-1],
        "--max-active-runs", "2", "--reprocess-behavior", "completed",
        "--dag-run-conf", json.dumps(BACKFILL_CONF),
    )
    runs = _wait_runs(airflow_stack, BACKFILL_DAYS, after=started)
    for d, run in runs.items():
        assert run["state"] == "success", failed_logs(
            airflow_stack, run["run_id"], airflow_stack.task_states(DAG_ID, run["run_id"]))
        before, after = backfilled[d]["facts"], _interval_facts(d)
        # every interval ran again, and still holds identical rows, no duplicates
        for stage in ("clean", "quarantine", "split"):
            assert after[stage]["rows"] == before[stage]["rows"]
        assert after["distinct_keys"] == after["clean"]["rows"]


def test_same_interval_twice_at_once_cannot_corrupt(airflow_stack, scheduled_run):
    ds = day(5)
    conf = {**FAST, "interval_date": ds}
    run_ids = [airflow_stack.trigger(DAG_ID, conf=conf) for _ in range(2)]
    states = [airflow_stack.wait_run(DAG_ID, r, timeout=1200) for r in run_ids]
    assert "success" in states, [failed_logs(airflow_stack, r, airflow_stack.task_states(DAG_ID, r)) for r in run_ids]
    facts = _interval_facts(ds)  # every manifest verifies and every file it names is intact
    assert facts["balanced"]
    assert facts["distinct_keys"] == facts["clean"]["rows"]


def test_scheduler_killed_mid_run_is_restarted_and_the_run_completes(airflow_stack, scheduled_run):
    ds = day(3)
    run_id = airflow_stack.trigger(DAG_ID, conf={**FAST, "interval_date": ds})
    deadline = time.time() + 600
    while "running" not in airflow_stack.task_states(DAG_ID, run_id).values():
        assert time.time() < deadline, airflow_stack.task_states(DAG_ID, run_id)
        time.sleep(1)
    restarts = airflow_stack.restarts.get("scheduler", 0)
    os.kill(airflow_stack.procs["scheduler"].pid, signal.SIGKILL)  # no shutdown: its executor's queue is lost
    state = airflow_stack.wait_run(DAG_ID, run_id, timeout=1200)  # supervises: restarts the scheduler
    assert airflow_stack.restarts["scheduler"] == restarts + 1
    assert state == "success", failed_logs(airflow_stack, run_id, airflow_stack.task_states(DAG_ID, run_id))
    facts = _interval_facts(ds)
    assert facts["balanced"]
    assert facts["distinct_keys"] == facts["clean"]["rows"]


def test_rest_api_refuses_bad_params(airflow_stack):
    status, body = airflow_stack.api(
        "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {"validation_policy": "explode"}}
    )
    assert status == 400, (status, body)
    assert "explode" in json.dumps(body) or "validation_policy" in json.dumps(body)
    status, body = airflow_stack.api(
        "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {"epochs": 0}}
    )
    assert status == 400, (status, body)
