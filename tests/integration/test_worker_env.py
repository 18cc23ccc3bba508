"""Secrets do not travel in environments: a keyring given as the ``leptonflow_keys`` Connection (from a real
metadata database, read by a real task through the Execution API) reaches the step as a private 0600 file;
the Dask workers and training ranks the task starts get its path, and none of their environments (nor the
task's) holds any form of any key."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tasks.security import keyring
from tests import secret_scan

REPO = Path(__file__).resolve().parents[2]

PROBE_DAG = '''
from datetime import UTC, datetime

from airflow.sdk import dag, task

OUT = {out!r}


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC), catchup=False)
def lf_env_probe():
    @task
    def probe(**context) -> dict:
        import json
        import os
        import subprocess
        import sys

        from distributed import Client, LocalCluster
        from leptonflow_airflow.context import context_from_airflow

        from tasks.io import parquet
        from tasks.training.train import rank_env
        from tests.unit.secure_data import events

        ctx = context_from_airflow(context, "events", "clean")
        c = ctx.crypto()
        url = OUT + "/f.parquet"
        parquet.write_table(url, events(300, "2026-11-03"), "f.parquet", crypto=c)
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            with Client(cluster) as client:
                worker_env = list(client.run(lambda: dict(os.environ)).values())[0]
                rows = client.submit(lambda c, u: parquet.read_table(u, c).num_rows, c, url).result()
        code = "import json, os; print(json.dumps(dict(os.environ)))"
        ranks = subprocess.run([sys.executable, "-c", code], env=rank_env(), capture_output=True, text=True)
        out = {{"task_env": dict(os.environ), "worker_env": worker_env, "rank_env": json.loads(ranks.stdout),
                "rows": rows, "keyring_path": ctx.keyring_path, "active": ctx.keys.active, "crypto": repr(c)}}
        with open(OUT + "/probe.json", "w") as fh:
            json.dump(out, fh)
        return {{"rows": rows}}

    probe()


probe_dag = lf_env_probe()

if __name__ == "__main__":
    probe_dag.test()
'''


def test_workers_and_ranks_get_a_keyring_path_never_key_material(tmp_path):
    airflow = str(Path(sys.executable).parent / "airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "LEPTONFLOW_"))}
    dags, out = tmp_path / "dags", tmp_path / "out"
    dags.mkdir()
    out.mkdir()
    home = tmp_path / "lf"
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=str(dags),
               PYTHONPATH=f"{REPO}:{REPO / 'plugins'}", LEPTONFLOW_HOME=str(home), OMP_NUM_THREADS="1",
               LEPTONFLOW_KEYRING=str(home / "keys" / "absent.json"))  # the default must not be what is used

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    ring = keyring.new_keyring()  # held only by the metadata DB's Connection
    run(airflow, "db", "migrate")
    run(airflow, "connections", "add", "leptonflow_keys", "--conn-type", "generic",
        "--conn-extra", json.dumps(ring.to_doc()))
    (dags / "probe.py").write_text(PROBE_DAG.format(out=str(out)))
    logs = run(sys.executable, str(dags / "probe.py"))
    probe = json.loads((out / "probe.json").read_text())

    assert probe["rows"] == 300 and probe["active"] == ring.active  # the workers did decrypt with it
    path = Path(probe["keyring_path"])
    assert path.name.startswith("keyring-") and path.parent.name.startswith("lf-keys-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    items = [(where, k, v.encode()) for where in ("task_env", "worker_env", "rank_env")
             for k, v in probe[where].items()]
    items += [("logs", "dag.test output", logs.encode()), ("repr", "LakeCrypto", probe["crypto"].encode())]
    for where in ("task_env", "worker_env", "rank_env"):
        assert "LEPTONFLOW_KEYRING_JSON" not in probe[where]
        assert not [k for k in probe[where] if k.startswith("AIRFLOW_CONN_")]
    result = secret_scan.scan(ring, items)
    print(result.summary(len(keyring.secret_forms(ring)), 2))
    assert result.items > 100 and result.hits == []
    assert secret_scan.scan(ring, [("file", "copy", path.read_bytes())]).hits  # the file itself holds them
