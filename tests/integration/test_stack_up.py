"""`make airflow` (stack up): the UI answers on loopback, a service that dies is restarted, and Ctrl-C
stops every process it started (the dead service's leftovers included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
from leptonflow_airflow.stack import free_port

from tests.conftest import REPO


def test_up_serves_ui_and_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{REPO / 'plugins'}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "leptonflow_airflow.stack", "up", "--port", str(port),
         "--airflow-home", str(tmp_path / "af"), "--home", str(tmp_path / "lf")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "api-server never answered"
            time.sleep(2)
        try:  # the plugin's report app is mounted, and refuses anonymous callers
            urllib.request.urlopen(f"http://127.0.0.1:{port}/leptonflow/", timeout=30)
            raise AssertionError("the report index answered without a login")
        except urllib.error.HTTPError as e:
            assert e.code == 401
        started = psutil.Process(proc.pid).children(recursive=True)
        assert len(started) >= 4  # api-server, scheduler, dag-processor, triggerer (and their children)
        old = _service(proc.pid, "triggerer")
        old.kill()  # as the OOM killer would
        deadline = time.time() + 60
        while (new := _service(proc.pid, "triggerer")) is None or new.pid == old.pid:
            assert time.time() < deadline, "the dead triggerer was not restarted"
            time.sleep(1)
        started += psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "login: user admin" in out
        assert "airflow triggerer exited with -9; restarting it (1 of 3)" in out
        time.sleep(1)
        alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()


def _service(stack_pid: int, name: str) -> psutil.Process | None:
    """The stack's direct child running `airflow <name>`."""
    for child in psutil.Process(stack_pid).children():
        try:
            if name in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    return None
