"""Cache keys cannot go stale: every output-affecting setting a cached step reads is in its key, settings
that do not change output are not, and editing any module a step imports changes its code version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from distributed import LocalCluster

from tasks import params
from tasks.context import StepContext
from tasks.io.code_version import code_version, imported_modules
from tasks.io.lake import Lake
from tasks.prep import clean, datagen
from tasks.spec import spec_for
from tasks.steps import STEPS
from tests.keys import keyring_at

REPO = Path(__file__).resolve().parents[2]
CACHED = ("validate_raw", "clean", "split", "validate_clean", "secure", "train", "evaluate", "compress", "publish")


def _other_value(s: params.Setting):
    """A valid value different from the default."""
    if s.enum and s.type != "array":
        return next(v for v in s.enum if v != s.default)
    if s.type == "boolean":
        return not s.default
    if s.type == "array":
        return s.default[:1] if len(s.default) > 1 else [*s.default, *s.default]
    if s.type == "string":
        return "64,32" if s.name == "hidden" else f"{s.default or ''}x"
    base = s.default if s.default is not None else (s.minimum or 0) + 1
    if s.type == "integer":
        return int(base) + 1 if s.maximum is None or base + 1 <= s.maximum else int(base) - 1
    value = base * 0.5 if base else 0.5
    return value if s.minimum is None or value > s.minimum else base + (s.maximum - base) / 2


def test_every_output_setting_a_step_reads_changes_its_key_and_no_other_does():
    spec = spec_for("events")
    base = StepContext("events", "2026-11-01", spec_obj=spec)
    checked = 0
    for name in CACHED:
        module = STEPS[name].module
        key = base.cache_params(module)
        for setting in params.SETTINGS:
            if setting.name == "interval_date":
                continue
            changed = StepContext("events", "2026-11-01", spec_obj=spec,
                                  params={setting.name: _other_value(setting)})
            differs = changed.cache_params(module) != key
            reads = setting.name in params.settings_read_by(module) or setting.name in params.ALWAYS_IN_KEY
            assert differs == (reads and setting.affects_output), (name, setting.name)
            checked += differs
    assert checked > 60
    # the settings the issue found missing from clean's hand-kept list are in its key now
    clean_key = base.cache_params("tasks.prep.clean")
    assert {"anomaly_history_rows", "anomaly_row_groups_per_interval", "anomaly_min_history_rows"} <= set(clean_key)
    assert "tasks.security.anomaly" in imported_modules("tasks.prep.clean")


def test_editing_any_module_a_step_imports_changes_its_code_version(tmp_path):
    """In a copy of tasks/: append a comment to each imported module in turn; the step's version must change."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "tasks", copy / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    steps = {name: STEPS[name].module for name in CACHED}
    script = f"""
import json, sys
sys.path.insert(0, {str(copy)!r})
from tasks.io.code_version import code_version, imported_modules, source_path
steps = {steps!r}
out = {{"before": {{}}, "misses": [], "hits": []}}
for step, module in steps.items():
    before = code_version(module)
    out["before"][step] = before
    for name in imported_modules(module):
        path = source_path(name)
        text = path.read_text()
        path.write_text(text + "\\n# edited\\n")
        (out["misses"] if code_version(module) != before else out["hits"]).append([step, name])
        path.write_text(text)
    assert code_version(module) == before
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(copy)})
    out = json.loads(res.stdout)
    assert out["hits"] == [], "an edit of an imported module left the code version unchanged"
    assert len(out["misses"]) == sum(len(imported_modules(m)) for m in steps.values())
    # the version does not depend on where the checkout lives: the copy gives the same keys
    assert out["before"] == {step: code_version(module) for step, module in steps.items()}


@pytest.fixture(scope="module")
def dask_address():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0", protocol="tcp",
                      host="127.0.0.1") as cluster:
        yield cluster.scheduler_address


def test_clean_recomputes_when_an_anomaly_setting_changes(tmp_path, dask_address):
    """The stale hits the issue reported: anomaly settings that decide quarantined rows were not in clean's key."""
    lake = tmp_path / "lake"
    datagen.generate(str(lake), spec_for("events"), "2026-11-01", 1, 3_000, seed=4, files_per_day=1)

    def run(**overrides):
        ctx = StepContext("events", "2026-11-01", lake_url=str(lake),
                          keyring_path=keyring_at(tmp_path / "keys.json"), params={"encrypt": False, **overrides},
                          cluster={"backend": "address", "address": dask_address})
        return clean.run(ctx)

    assert run()["cache_hit"] is False
    assert run()["cache_hit"] is True
    assert run(epochs=9, deadline_s=60)["cache_hit"] is True  # other steps' / non-output settings
    for name, value in (("anomaly_history_rows", 1000), ("anomaly_row_groups_per_interval", 2),
                        ("anomaly_min_history_rows", 50)):
        assert run(**{name: value})["cache_hit"] is False, name
    committed = Lake(str(lake)).manifest_path("clean", "events", "2026-11-01")
    manifest = json.loads(Path(committed).read_text())
    assert manifest["params"]["anomaly_min_history_rows"] == 50 and "epochs" not in manifest["params"]
