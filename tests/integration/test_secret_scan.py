"""One whole interval through `python -m tasks pipeline`, then every output is scanned for key material.

Scanned: the logs of every command, every file of the lake (manifests, commit records, data files,
key-material sidecars, Data Docs), every published artifact file and pointer, the run-history DB, the
pointer trust state, the report HTML and the verifier's output; for every master key, signing key and
legacy MAC key of the keyring, in raw, hex and base64 forms. Expected: 0 hits. A positive control (the
keyring file itself) shows the scan finds what it looks for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.prep import datagen
from tasks.security import keyring
from tasks.spec import spec_for
from tests import secret_scan

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DS = "2026-11-01"
FAST = ["--epochs", "1", "--hidden", "32", "--batch-size", "512"]


@pytest.fixture(scope="module")
def interval(tmp_path_factory):
    home = tmp_path_factory.mktemp("secret-scan") / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEPTONFLOW_", "AIRFLOW_CONN_"))}
    env.update(PYTHONPATH=f"{REPO}:{REPO / 'plugins'}", OMP_NUM_THREADS="1", LEPTONFLOW_HOME=str(home),
               LEPTONFLOW_LAKE=str(home / "lake"), LEPTONFLOW_KEYRING=str(home / "keys" / "keyring.json"),
               LEPTONFLOW_HISTORY_URL=f"sqlite:///{home / 'history.sqlite'}",
               LEPTONFLOW_ARTIFACTS=str(home / "artifacts"))
    logs: list[tuple[str, str, bytes]] = []

    def run(name: str, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "tasks", *args], env=env, cwd=home.parent, capture_output=True,
                              timeout=1200)
        logs.append(("logs", name, proc.stdout + proc.stderr))
        assert proc.returncode == 0, proc.stderr[-4000:].decode(errors="replace")
        return proc

    home.mkdir()
    run("keys init", "keys", "init")
    datagen.generate(str(home / "lake"), spec_for("events"), DS, 1, 8000, seed=5)
    results = json.loads(run("pipeline", "pipeline", "--dataset", "events", "--ds", DS, *FAST).stdout)
    run("report", "report", "--dataset", "events", "--ds", DS, "--html", str(home / "report.html"))
    pub = home / "publisher.pub.json"
    pub.write_bytes(run("keys export-public", "keys", "export-public").stdout)
    run("verify-artifact", "verify-artifact", str(home / "artifacts" / "models" / "events"), "--public-key", str(pub))
    return {"home": home, "logs": logs, "results": results, "ring": keyring.load(home / "keys" / "keyring.json")}


def test_the_interval_ran_end_to_end(interval):
    res = interval["results"]
    assert res["publish"]["verified"] and res["publish"]["latest_moved"]
    assert res["secure"]["all_encrypted"] and res["secure"]["verified"]


def test_no_secret_in_logs_manifests_lake_artifacts_or_report(interval):
    ring, home = interval["ring"], interval["home"]
    items = interval["logs"] + [("results", "pipeline stdout JSON", json.dumps(interval["results"]).encode())]
    items += secret_scan.files(home, exclude=("keys",))
    result = secret_scan.scan(ring, items)
    secrets = len(ring.master_keys) + len(ring.signing_keys) + bool(ring.legacy_hmac_key)
    print(result.summary(len(keyring.secret_forms(ring)), secrets))
    kinds = result.by_kind
    assert kinds["manifests"] >= 8 and kinds["artifacts"] >= 5 and kinds["html"] >= 2 and kinds["logs"] == 5
    assert kinds["key material sidecars"] >= 10 and kinds["commit records"] >= 8
    assert result.hits == []
    control = secret_scan.scan(ring, secret_scan.files(home / "keys"))
    assert control.items == 1 and control.hits  # the keyring itself: the scan does find key material
