"""A dask-gateway server with its local backend on loopback: the `gateway` backend without a cluster.

Worker and scheduler processes run on this host as the current user (``UnsafeLocalBackend``). The
integration tests and ``bench/forecast.py`` (which times a worker start-up through the product's
``gateway.resize``) start one; a user can try the gateway backend with it:

    python -m tasks.resources.cluster.gateway_local /tmp/gw     # prints the dask_default Connection extra

The gateway's default commands are the removed ``dask-scheduler``/``dask-worker`` scripts, so the
config sets ``python -m distributed.cli.dask_scheduler`` / ``dask_worker`` of this interpreter.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_gateway(workdir: str | Path, *, worker_memory: int = 1 << 30, worker_threads: int = 1,
                  max_workers: int = 3, password: str | None = None, startup_timeout: float = 60.0,
                  env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Run the server until the block ends; yields the ``gateway`` backend config that reaches it.

    `workdir` holds the config, the server log (``server.log``) and the clusters' directories.
    `env`: extra environment for the server and the processes it starts (e.g. PYTHONPATH)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    api, proxy = _free_port(), _free_port()
    password = password or secrets.token_hex(8)
    py = sys.executable
    (work / "config.py").write_text(textwrap.dedent(f"""
        c.DaskGateway.address = "127.0.0.1:{api}"
        c.Proxy.address = "127.0.0.1:{proxy}"
        c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
        c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
        c.SimpleAuthenticator.password = {password!r}
        c.LocalClusterConfig.scheduler_cmd = [{py!r}, "-m", "distributed.cli.dask_scheduler"]
        c.LocalClusterConfig.worker_cmd = [{py!r}, "-m", "distributed.cli.dask_worker"]
        c.LocalClusterConfig.worker_memory = {worker_memory}
        c.LocalClusterConfig.worker_threads = {worker_threads}
        c.LocalClusterConfig.idle_timeout = 0
        c.LocalBackend.clusters_directory = {str(work / "clusters")!r}
    """))
    log_path = work / "server.log"
    with open(log_path, "wb") as logf:
        server = subprocess.Popen([str(Path(py).parent / "dask-gateway-server"), "-f", str(work / "config.py")],
                                  cwd=work, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    config = {"backend": "gateway", "address": f"http://127.0.0.1:{api}", "proxy_address": f"tcp://127.0.0.1:{proxy}",
              "auth": "simple", "password": password, "timeout": 120, "max_workers": max_workers,
              "worker_memory": worker_memory}
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{api}/api/health", timeout=1)
                break
            except OSError as exc:
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"dask-gateway-server did not come up (log {log_path}): {tail}") from exc
                time.sleep(0.2)
        yield config
        from tasks.resources.cluster import gateway

        try:
            gateway.shutdown(config)
        except Exception:  # the server may already be gone; its own shutdown stops clusters too
            pass
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m tasks.resources.cluster.gateway_local WORKDIR", file=sys.stderr)
        return 2
    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM too: leave through the context manager, which stops the server

    signal.signal(signal.SIGTERM, _stop)
    with local_gateway(args[0]) as config:
        print(json.dumps(config), flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
