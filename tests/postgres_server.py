"""A real, throw-away PostgreSQL server on loopback for tests (the Debian `postgresql` binaries).

``start_postgres(tmpdir) -> (url, stop)`` runs initdb + pg_ctl on a free port with trust auth
on 127.0.0.1 only, creates database ``leptonflow`` and returns its SQLAlchemy URL. When the tests
run as root the server runs as the ``postgres`` user (PostgreSQL refuses to run as root) in a
private directory that user can own. ``pg_bin()`` is None when the binaries are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres(tmpdir: str | os.PathLike) -> tuple[str, Callable[[], None]]:
    """Start a server; returns (SQLAlchemy URL of database `leptonflow`, stop function)."""
    bindir = pg_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL binaries not found (apt-get install -y postgresql)")
    as_root = os.geteuid() == 0
    if as_root:  # pytest's tmp dirs are private to root; the server user needs its own folder
        base = Path(tempfile.mkdtemp(prefix="lf-pg-"))
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    else:
        base = Path(tmpdir) / "pg"
        base.mkdir(parents=True, exist_ok=True)
        prefix = []
    data, log = base / "data", base / "server.log"
    port = _free_port()

    def run(*cmd: str) -> None:
        proc = subprocess.run(prefix + list(cmd), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr or proc.stdout}")

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
    opts = f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=50"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start")

    def stop() -> None:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)
        if as_root:
            shutil.rmtree(base, ignore_errors=True)

    try:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE leptonflow")
        conn.close()
    except Exception:
        stop()
        raise
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/leptonflow", stop
