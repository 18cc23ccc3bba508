"""Run this repo's Airflow services locally: api-server, scheduler, dag-processor, triggerer.

Used by ``make demo`` (run the pipeline DAG once through the real scheduler and
LocalExecutor), ``make airflow`` (the UI until Ctrl-C) and the end-to-end tests.
Every service runs in its own process group, so stopping kills everything it
started, grandchildren included.

    python -m leptonflow_airflow.stack demo    # generate data, run one interval, print the summary
    python -m leptonflow_airflow.stack up      # UI + scheduler on http://127.0.0.1:8080 until Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("leptonflow.stack")
REPO = Path(__file__).resolve().parents[2]
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
_CHAIN_LINKS = ("During handling of the above exception", "The above exception was the direct cause")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AirflowStack:
    home: Path  # AIRFLOW_HOME
    lf_home: Path  # LEPTONFLOW_HOME: lake, keyring, history DB, artifacts
    port: int = 0
    db_url: str = ""  # metadata DB; SQLite in `home` when empty
    history_url: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    # OpenLineage transport ([openlineage] transport of the provider), e.g. file_transport(dir) or
    # {"type": "http", "url": "http://marquez:5000"}; None leaves the provider off (its default) unless
    # the environment configures it (AIRFLOW__OPENLINEAGE__TRANSPORT, OPENLINEAGE_URL, ...).
    openlineage: dict[str, Any] | None = None
    max_restarts: int = 3  # per service, like a supervisor's restart policy; then check_alive raises
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    # exited leaders whose process groups may still hold children (a killed scheduler's executor workers)
    retired: list[subprocess.Popen] = field(default_factory=list)
    _log_offsets: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.lf_home = Path(self.lf_home).resolve()
        self.port = self.port or free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        self.lf_home.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        secret_file = self.home / ".jwt_secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_hex(32))
        env = dict(os.environ)
        env.update({
            "PATH": f"{venv_bin}:{env.get('PATH', '')}",
            "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text(),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            # a restarted scheduler re-queues what a dead one had queued within a minute, not 5
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
            "LEPTONFLOW_HOME": str(self.lf_home),
            "LEPTONFLOW_LAKE": str(self.lf_home / "lake"),
            "LEPTONFLOW_KEYRING": str(self.lf_home / "keys" / "keyring.json"),
            "LEPTONFLOW_ARTIFACTS": str(self.lf_home / "artifacts"),
            "LEPTONFLOW_HISTORY_URL": self.history_url or f"sqlite:///{self.lf_home / 'history.sqlite'}",
        })
        if self.db_url:
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.db_url
        else:  # embedded SQLite: wait for the one writer instead of failing after 5 s
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = "leptonflow_airflow.db_args.SQLITE_SYNC"
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC"] = "leptonflow_airflow.db_args.SQLITE_ASYNC"
        if self.openlineage is not None:
            env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(self.openlineage)
            env.setdefault("AIRFLOW__OPENLINEAGE__NAMESPACE", "leptonflow")
        env.update(self.extra_env)
        return env

    # ---- lifecycle -------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        """Run an `airflow` CLI command against this stack; returns stdout."""
        for attempt in range(5):
            proc = subprocess.run(
                ["airflow", *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.home
            )
            # SQLite allows one writer: a CLI write racing the scheduler gets "database is locked"; retry it.
            if proc.returncode == 0 or "database is locked" not in proc.stderr or attempt == 4:
                break
            time.sleep(2 + 2 * attempt)
        if check and proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.stdout

    def init(self) -> None:
        self.init_keyring()
        self.cli("db", "migrate")
        self.cli("pools", "set", "gpu", "1", "Training devices: concurrent runs queue for them")

    def init_keyring(self) -> None:
        """The stack's keyring, created explicitly (``keys init``) when this home has none: tasks never create one."""
        from tasks.security import keyring

        path = Path(self.env["LEPTONFLOW_KEYRING"])
        if not path.exists():
            keyring.generate(path)

    def start(self, services: tuple[str, ...] = SERVICES) -> None:
        (self.home / "service-logs").mkdir(exist_ok=True)
        for name in services:
            self._spawn(name)
        self.wait_http(timeout=180)

    def _log_path(self, name: str) -> Path:
        return self.home / "service-logs" / f"{name}.log"

    def _spawn(self, name: str) -> None:
        path = self._log_path(name)
        self._log_offsets[name] = path.stat().st_size if path.exists() else 0
        args = ["airflow", name]
        if name == "api-server":
            args += ["--port", str(self.port), "--host", "127.0.0.1"]
        with open(path, "ab") as out:  # the child keeps its own descriptor; a restart leaks none here
            self.procs[name] = subprocess.Popen(
                args, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.home, start_new_session=True
            )

    def crash_report(self, name: str) -> str:
        """What the service's last process logged: its last exception chain from the first traceback (the
        cause; the last one is often raised while handling it), then the end of the log."""
        with open(self._log_path(name), "rb") as f:
            f.seek(self._log_offsets.get(name, 0))
            text = f.read().decode(errors="replace")
        marker = "Traceback (most recent call last)"
        start = text.rfind(marker)
        while start > 0:  # walk back through "During handling of the above exception ..." links
            before = text.rfind(marker, 0, start)
            if before < 0 or not any(link in text[max(0, start - 300):start] for link in _CHAIN_LINKS):
                break
            start = before
        if start < 0:
            return text[-3000:]
        head, rest = text[start:start + 6000], text[start + 6000:]
        return head + (f"\n[...]\n{rest[-2000:]}" if rest else "")

    def wait_http(self, timeout: float) -> None:
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(2)
        raise TimeoutError(f"api-server did not answer on {self.url} within {timeout}s")

    def check_alive(self) -> None:
        """Restart a service that exited (the stack never stops one while it runs), as a process
        supervisor would; raise once a service has used up its restarts."""
        for name, p in list(self.procs.items()):
            if p.poll() is None:
                continue
            report = self.crash_report(name)
            used = self.restarts.get(name, 0)
            if used >= self.max_restarts:
                raise RuntimeError(f"airflow {name} exited with {p.returncode} after {used} restarts:\n{report}")
            self.restarts[name] = used + 1
            log.warning("airflow %s exited with %s; restarting it (%d of %d). Its log:\n%s",
                        name, p.returncode, used + 1, self.max_restarts, report)
            self.retired.append(p)
            self._spawn(name)

    def stop(self) -> None:
        procs = [*self.procs.values(), *self.retired]
        for p in procs:
            try:  # the whole group, also when its leader already exited
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 20
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group may hold grandchildren (task runners, Dask workers) even after the leader left
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs.clear()
        self.retired.clear()

    def __enter__(self) -> AirflowStack:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- REST API --------------------------------------------------------------------
    def password(self, user: str = "admin") -> str:
        pw = self.home / "simple_auth_manager_passwords.json.generated"
        return json.loads(pw.read_text())[user]

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the public REST API as admin (JWT from /auth/token); returns (status, JSON body)."""
        import urllib.error
        import urllib.request

        def call(url: str, data: Any, headers: dict[str, str]) -> tuple[int, Any]:
            req = urllib.request.Request(url, method=method if "token" not in url else "POST",
                                         data=json.dumps(data).encode() if data is not None else None,
                                         headers={"Content-Type": "application/json", **headers})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, json.loads(r.read() or b"null")
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read() or b"null")

        status, tok = call(f"{self.url}/auth/token", {"username": "admin", "password": self.password()}, {})
        if status >= 300:
            raise RuntimeError(f"login failed: {status} {tok}")
        return call(f"{self.url}{path}", body, {"Authorization": f"Bearer {tok['access_token']}"})

    # ---- DAG runs ----------------------------------------------------------------
    @staticmethod
    def _json(out: str) -> Any:
        """The JSON document in CLI output (the CLI may print log lines before it)."""
        for i, line in enumerate(out.splitlines()):
            if line.startswith(("[", "{")):
                return json.loads("\n".join(out.splitlines()[i:]))
        return []

    def wait_dag(self, dag_id: str, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.check_alive()
            dags = self._json(self.cli("dags", "list", "-o", "json", check=False))
            if any(d.get("dag_id") == dag_id for d in dags):
                return
            time.sleep(3)
        errors = self.cli("dags", "list-import-errors", check=False)
        raise TimeoutError(f"DAG {dag_id} was not parsed within {timeout}s; import errors:\n{errors}")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self._json(self.cli("dags", "list-runs", dag_id, "-o", "json", check=False))

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, logical_date: str | None = None) -> str:
        args = ["dags", "trigger", dag_id, "-o", "json", "-c", json.dumps(conf or {})]
        if logical_date:
            args += ["-l", logical_date]
        return self._json(self.cli(*args))[0]["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 1800, poll: float = 5) -> str:
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            self.check_alive()
            state = next((r["state"] for r in self.runs(dag_id) if r["run_id"] == run_id), "")
            tasks = self.task_states(dag_id, run_id)
            progress = " ".join(f"{t}={s}" for t, s in tasks.items() if s)
            if progress != last:
                log.info("run %s: %s | %s", run_id, state, progress)
                last = progress
            if state in {"success", "failed"}:
                return state
            time.sleep(poll)
        raise TimeoutError(f"run {run_id} of {dag_id} did not finish within {timeout}s")

    def wait_scheduled_run(self, dag_id: str, ds: str, timeout: float = 180) -> str:
        """The run id of the scheduler-created run whose data interval starts on `ds`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.check_alive()
            for r in self.runs(dag_id):
                if str(r.get("logical_date", "")).startswith(ds):
                    return r["run_id"]
            time.sleep(3)
        raise TimeoutError(f"the scheduler created no run of {dag_id} for {ds} within {timeout}s")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        rows = self._json(self.cli("tasks", "states-for-dag-run", dag_id, run_id, "-o", "json", check=False))
        return {r["task_id"]: r.get("state") or "" for r in rows}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        path = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        f = path / f"attempt={try_number}.log"
        return f.read_text(errors="replace") if f.exists() else ""


def file_transport(folder: Path) -> dict[str, Any]:
    """OpenLineage file transport: one JSON file per event under `folder` (for tests and debugging)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return {"type": "file", "log_file_path": str(Path(folder).resolve() / "event"), "append": False}


def marquez_transport(url: str) -> dict[str, Any]:
    """OpenLineage HTTP transport to a Marquez (or any OpenLineage HTTP endpoint) at `url`."""
    return {"type": "http", "url": url.rstrip("/"), "endpoint": "api/v1/lineage"}


def _lineage(args: argparse.Namespace) -> dict[str, Any] | None:
    return marquez_transport(args.openlineage_url) if getattr(args, "openlineage_url", None) else None


def demo(args: argparse.Namespace) -> int:
    """Generate demo data, run the pipeline DAG for one interval through the real scheduler, print the summary."""
    from tasks.context import Settings
    from tasks.prep import datagen
    from tasks.publishing import report
    from tasks.spec import spec_for

    dataset = args.dataset
    dag_id = f"leptonflow_{dataset}"
    stack = AirflowStack(home=Path(args.airflow_home), lf_home=Path(args.home), port=args.port,
                         openlineage=_lineage(args))
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith("LEPTONFLOW_")})
    ds = args.ds or (date.today() - timedelta(days=1)).isoformat()
    log.info("generating %d rows of %s for interval %s", args.rows, dataset, ds)
    spec = spec_for(dataset, Settings.from_env().specs_dir)
    gen = datagen.generate(os.environ["LEPTONFLOW_LAKE"], spec, ds, 1, args.rows, seed=args.seed)
    log.info("datagen: %s", {k: v for k, v in gen.items() if k != "files"})
    stack.init()
    try:
        stack.start()
        log.info("Airflow is up at %s", stack.url)
        stack.wait_dag(dag_id)
        if args.ds:  # a chosen day: a manual run with the interval_date Param (as from the trigger form)
            run_id = stack.trigger(dag_id, conf={"interval_date": ds})
            stack.cli("dags", "unpause", dag_id)
        else:  # yesterday: unpausing lets the scheduler create the scheduled run of the latest interval
            stack.cli("dags", "unpause", dag_id)
            run_id = stack.wait_scheduled_run(dag_id, ds)
        log.info("waiting for run %s of %s (interval %s)", run_id, dag_id, ds)
        state = stack.wait_run(dag_id, run_id, timeout=args.timeout)
        if state != "success":
            states = stack.task_states(dag_id, run_id)
            failed = [t for t, s in states.items() if s not in ("success", "skipped")]
            for t in failed[:2]:
                sys.stderr.write(stack.task_log(dag_id, run_id, t)[-4000:] + "\n")
            raise SystemExit(f"DAG run {run_id} ended {state}; tasks not successful: {failed}")
    finally:
        stack.stop()
    print(report.summary_text(report.collect(dataset, ds)))
    return 0


def up(args: argparse.Namespace) -> int:
    stack = AirflowStack(home=Path(args.airflow_home), lf_home=Path(args.home), port=args.port or 8080,
                         openlineage=_lineage(args))
    stack.init()
    stop = {"now": False}

    def _stop(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        stack.start()
        pw = stack.home / "simple_auth_manager_passwords.json.generated"
        login = pw.read_text().strip() if pw.exists() else "?"
        print(f"\nAirflow UI: {stack.url}  (login: user admin, password from {pw}: {login})")
        print(f"leptonflow report: {stack.url}/leptonflow/   — Ctrl-C stops every process started here.\n")
        while not stop["now"]:
            stack.check_alive()
            time.sleep(1)
    finally:
        stack.stop()
        print("stopped all Airflow services")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m leptonflow_airflow.stack")
    p.add_argument("command", choices=["demo", "up"])
    p.add_argument("--airflow-home", default=str(REPO / ".airflow"))
    p.add_argument("--home", default=str(REPO / "var"), help="LEPTONFLOW_HOME: lake, keys, history, artifacts")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--dataset", default="events")
    p.add_argument("--ds", help="interval to run (default: yesterday)")
    p.add_argument("--rows", type=int, default=100_000, help="demo rows per day")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--openlineage-url", help="send OpenLineage events to this Marquez API, e.g. http://localhost:5000")
    args = p.parse_args(argv)
    return demo(args) if args.command == "demo" else up(args)


if __name__ == "__main__":
    sys.exit(main())
