"""The CLI and a DAG run of the same interval with no overrides produce the same outputs.

The DAG side is the run the real scheduler creates for the latest interval (the shared
``scheduled_run``: no conf, so every Param is at its declared default; fresh run history, no
earlier clean intervals). The CLI side is ``python -m tasks pipeline`` for that interval without
setting flags, in a home of its own (fresh lake, keyring and run-history DB) whose landing zone
holds a byte-identical copy of the DAG run's raw files. Encryption uses fresh data keys per file
(and each home has its own keyring), so split files are compared by their decrypted content, in
row order, file by file; unencrypted outputs (weights, exports, metrics) by their sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tasks.context import Settings, StepContext
from tasks.io.parquet import read_table, sha256_of
from tests.e2e.conftest import DAG_ID

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATASET = "events"
CACHED_STAGES = ("clean", "quarantine", "split", "model", "evaluation", "compressed")
# Measurements of the run (time, throughput), not outputs of the data.
RUN_FACTS = {"train_samples_per_s", "peak_gpu_mem_bytes", "wall_s", "latency_b1_ms", "latency_b256_ms",
             "latency_b1_p99_ms", "latency_b256_p99_ms"}
# Files whose bytes must be equal: the weights, the serving export, the metrics (every candidate's size too:
# ONNX exports carry no call stack of the exporting process, tasks.compression.export).
SAME_BYTES = {"model": ("model.pt",), "evaluation": ("metrics.json",),
              "compressed": ("model.pt", "model.onnx", "compression.json")}


def _home_env(home: Path) -> dict[str, str]:
    return {
        "LEPTONFLOW_HOME": str(home),
        "LEPTONFLOW_LAKE": str(home / "lake"),
        "LEPTONFLOW_KEYRING": str(home / "keys" / "keyring.json"),
        "LEPTONFLOW_HISTORY_URL": f"sqlite:///{home / 'history.sqlite'}",
        "LEPTONFLOW_ARTIFACTS": str(home / "artifacts"),
    }


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, airflow_stack, scheduled_run) -> dict[str, Any]:
    """`python -m tasks pipeline` (no setting flags) on a copy of the scheduled run's raw interval."""
    ds = scheduled_run["ds"]
    home = tmp_path_factory.mktemp("cli-parity")
    env = _home_env(home)
    raw = Path("raw", DATASET, f"ds={ds}")
    shutil.copytree(Path(airflow_stack.env_vars["LEPTONFLOW_LAKE"]) / raw, Path(env["LEPTONFLOW_LAKE"]) / raw)
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("LEPTONFLOW_")}
    proc_env.update(env, PYTHONPATH=f"{REPO}:{REPO / 'plugins'}")
    init = subprocess.run([sys.executable, "-m", "tasks", "keys", "init"], env=proc_env, cwd=home,
                          capture_output=True, text=True, timeout=120)  # a fresh home needs its keyring first
    assert init.returncode == 0, init.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "tasks", "pipeline", "--dataset", DATASET, "--ds", ds],
        env=proc_env, cwd=home, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    return {"env": env, "ds": ds, "results": json.loads(proc.stdout)}


def _context(env: dict[str, str], ds: str) -> StepContext:
    return StepContext(dataset=DATASET, ds=ds, env=Settings.from_env(env))


def _content_sha256(table: pa.Table) -> str:
    """sha256 of the table's Arrow IPC stream: schema (with its metadata) and every row, in order."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _committed_sha256(ctx: StepContext, stage: str) -> dict[str, str]:
    """name inside the version folder -> sha256 of each file of `stage`, checked against its signed manifest."""
    m = ctx.lake.require(stage, DATASET, ctx.ds)
    out = {}
    for entry in m.files:
        digest = sha256_of(ctx.lake.abspath(m, entry))
        assert digest == entry.sha256, f"{stage}/{entry.path}: not the committed file"
        out[entry.path.split("/", 1)[1]] = digest
    return out


def _split_contents(ctx: StepContext) -> dict[str, tuple[int, str]]:
    """path inside the version folder (group/part-N) -> (rows, decrypted content sha256) of each split file."""
    split = ctx.lake.require("split", DATASET, ctx.ds)
    _committed_sha256(ctx, "split")
    crypto = ctx.crypto()
    out = {}
    for entry in split.files:
        if entry.path.endswith(".parquet"):
            table = read_table(ctx.lake.abspath(split, entry), crypto)
            assert table.num_rows == entry.rows, entry.path
            out[entry.path.split("/", 1)[1]] = (entry.rows, _content_sha256(table))
    return out


def _without_run_facts(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_run_facts(v) for k, v in value.items() if k not in RUN_FACTS}
    if isinstance(value, list):
        return [_without_run_facts(v) for v in value]
    return value


def _candidates(compressed: Any) -> list[dict[str, Any]]:
    return _without_run_facts(compressed.extra["candidates"])


def _outputs(ctx: StepContext) -> dict[str, Any]:
    lake, ds = ctx.lake, ctx.ds
    m = {stage: lake.require(stage, DATASET, ds) for stage in CACHED_STAGES}
    return {
        "rows": {
            "clean": m["clean"].rows,
            "quarantine": m["quarantine"].rows,
            **{f"split.{g}": m["split"].rows_in(g) for g in ("train", "val", "test")},
        },
        "accounting": m["clean"].extra["accounting"],
        "cache_key_settings": {s: m[s].params for s in CACHED_STAGES},
        "code_version": {s: m[s].code_version for s in CACHED_STAGES},
        "feature_stats": m["split"].extra["feature_stats"],
        "split_files": _split_contents(ctx),
        "train": _without_run_facts(m["model"].extra["metrics"]),
        "evaluation": m["evaluation"].extra["metrics"],
        "compression": {"chosen": m["compressed"].extra["summary"]["chosen"]["name"],
                        "test_metric": m["compressed"].extra["summary"]["test_metric"],
                        "candidates": _candidates(m["compressed"])},
        "file_sha256": {s: {n: h for n, h in _committed_sha256(ctx, s).items() if n in names}
                        for s, names in SAME_BYTES.items()},
    }


def _dag_plans(stack: Any, run_id: str) -> dict[str, Any]:
    """The plan_clean / plan_train XComs of the DAG run (what clean and train were sized by)."""
    db = sqlite3.connect(stack.home / "airflow.db")
    rows = db.execute(
        "select task_id, value from xcom where dag_id = ? and run_id = ? and key = 'return_value'"
        " and task_id in ('plan_clean', 'plan_train')", (DAG_ID, run_id),
    ).fetchall()
    db.close()
    return {task: json.loads(value) if isinstance(value, str | bytes) else value for task, value in rows}


def _plan_shape(plan: dict[str, Any]) -> dict[str, Any]:
    return {k: plan.get(k) for k in ("source", "workers", "threads_per_worker", "partitions", "nproc", "device")}


def test_cli_and_dag_run_produce_identical_outputs(airflow_stack, scheduled_run, cli_run):
    assert scheduled_run["state"] == "success", scheduled_run["states"]
    ds = scheduled_run["ds"]
    dag_plans = _dag_plans(airflow_stack, scheduled_run["run_id"])
    for stage in ("plan_clean", "plan_train"):  # both sized from an empty run history
        assert _plan_shape(cli_run["results"][stage]) == _plan_shape(dag_plans[stage]), stage

    dag = _outputs(_context(airflow_stack.env_vars, ds))
    cli = _outputs(_context(cli_run["env"], ds))
    assert dag["split_files"]
    assert {s: sorted(v) for s, v in dag["file_sha256"].items()} == {s: sorted(n) for s, n in SAME_BYTES.items()}
    for key in dag:
        assert cli[key] == dag[key], f"{key} differs between the CLI and the DAG run"
