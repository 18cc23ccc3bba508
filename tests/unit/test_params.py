"""tasks.params is the one source of settings: the source reads only declared names, the JSON listing,
the DAG's Params, the CLI flags and the README table all come from the declarations."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import params
from tasks.context import StepContext
from tasks.errors import LeptonflowError, SettingError
from tasks.spec import spec_for
from tasks.steps import STEPS, markdown_table

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}"}


def _setting_reads(root: Path) -> set[str]:
    """Every literal name read as `<x>.param("name")` or `params.get("name")` in the .py files under root."""
    names: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
                continue
            arg = node.args[0]
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                continue
            if node.func.attr == "param" or (node.func.attr == "get" and isinstance(node.func.value, ast.Name)
                                             and node.func.value.id == "params"):
                names.add(arg.value)
    return names


def test_every_setting_read_is_declared_and_every_declared_one_is_read():
    read = _setting_reads(REPO / "tasks") | _setting_reads(REPO / "plugins")
    declared = set(params.BY_NAME)
    assert read - declared == set(), "read but not declared in tasks.params"
    assert declared - read - set(params.ALWAYS_IN_KEY) == set(), "declared but no code reads it"
    # and no step reads settings through a dict of overrides behind the declarations' back
    for path in (REPO / "tasks").rglob("*.py"):
        assert "ctx.params[" not in path.read_text() and "ctx.params.get(" not in path.read_text(), path


def test_params_json_lists_every_setting_with_its_steps():
    out = subprocess.run([sys.executable, "-m", "tasks", "params", "--json"], cwd=REPO, env=ENV,
                         capture_output=True, text=True, check=True).stdout
    listed = json.loads(out)
    assert [d["name"] for d in listed] == [s.name for s in params.SETTINGS]
    for d in listed:
        s = params.get(d["name"])
        assert {"name", "type", "default", "section", "affects_output", "steps"} <= set(d)
        assert (d["type"], d["default"], d["section"], d["affects_output"]) == (s.type, s.default, s.section,
                                                                                s.affects_output)
        assert d["steps"] == [st.name for st in STEPS.values() if s.name in params.settings_read_by(st.module)]
    by = {d["name"]: d for d in listed}
    assert by["epochs"]["steps"] == ["train"] and by["validation_policy"]["steps"] == ["validate_raw",
                                                                                      "validate_clean"]
    assert "clean" in by["anomaly_history_rows"]["steps"]  # read by tasks.security.anomaly, imported by clean


def test_dag_params_equal_their_declarations(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    sys.path.insert(0, str(REPO / "dags"))
    try:
        import leptonflow_pipeline as pipeline
    finally:
        sys.path.remove(str(REPO / "dags"))
    spec = spec_for("events")
    dag = pipeline.build_dag(spec)
    assert set(dag.params.keys()) == set(params.BY_NAME)
    defaults = params.defaults(spec)
    for s in params.SETTINGS:
        p = dag.params.get_param(s.name)
        assert p.value == defaults[s.name], s.name
        assert p.description == s.doc
        assert p.schema == {**s.schema(), "section": s.section}, s.name
    p = dag.params.get_param("anomaly_max_rate")
    assert p.value == spec.anomaly.get("max_rate", params.get("anomaly_max_rate").default)


def test_values_are_typed_bounded_and_unknown_names_refused():
    ctx = StepContext("events", "2026-11-01", params={"epochs": "7", "lr": "0.01", "encrypt": "false",
                                                     "compress_ratios": "0,0.5", "train_nproc": None})
    assert ctx.param("epochs") == 7 and ctx.param("lr") == 0.01 and ctx.param("encrypt") is False
    assert ctx.param("compress_ratios") == [0.0, 0.5] and ctx.param("train_nproc") is None
    assert ctx.param("batch_size") == params.get("batch_size").default
    with pytest.raises(SettingError, match="setting epochz: is not a leptonflow setting"):
        ctx.param("epochz")
    cases = [({"epochs": 0}, "setting epochs: must be >= 1"), ({"epochs": 1.5}, "setting epochs: must be an integer"),
             ({"validation_policy": "strict"}, "setting validation_policy: must be one of fail, warn, quarantine"),
             ({"encrypt": "maybe"}, "setting encrypt: must be true or false"),
             ({"compress_backends": ["int4"]}, "setting compress_backends: must be one of"),
             ({"lr": 0}, "setting lr: must be > 0"), ({"dedupe_ordr": 1}, "setting dedupe_ordr: is not")]
    for overrides, message in cases:
        with pytest.raises(SettingError, match=re.escape(message)):
            params.resolve(overrides)
    assert issubclass(SettingError, LeptonflowError)
    # a cleared trigger-form field (null) means "the default" for a setting that is not nullable
    assert params.resolve({"epochs": None})["epochs"] == params.get("epochs").default


def test_spec_defaults_are_resolved_in_one_place():
    spec = spec_for("events")
    spec.anomaly["max_rate"] = 0.2
    ctx = StepContext("events", "2026-11-01", spec_obj=spec)
    assert ctx.param("anomaly_max_rate") == 0.2
    assert StepContext("events", "2026-11-01", spec_obj=spec, params={"anomaly_max_rate": 0.3}).param(
        "anomaly_max_rate") == 0.3


def test_cli_flags_come_from_the_declarations():
    help_ = subprocess.run([sys.executable, "-m", "tasks", "train", "--help"], cwd=REPO, env=ENV,
                           capture_output=True, text=True, check=True).stdout
    assert "--epochs" in help_ and "--batch-size" in help_ and "Training settings" in help_
    assert "--validation-policy" not in help_  # only the settings the step reads
    bad = subprocess.run([sys.executable, "-m", "tasks", "clean", "--dataset", "events", "--ds", "2026-11-01",
                          "--chunk-rows", "0"], cwd=REPO, env={**ENV, "LEPTONFLOW_HOME": "/nonexistent-lf"},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "setting chunk_rows: must be >= 1" in bad.stderr
    assert not Path("/nonexistent-lf").exists()  # refused before any work


def test_readme_settings_table_is_the_generated_one():
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- settings:begin -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert block == markdown_table(), "README settings table is stale: python -m tasks params --markdown"
