"""A real S3/KMS-protocol server for tests: moto in server mode on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer  # needs moto's server extras (flask, flask-cors)


@contextmanager
def moto_server() -> Iterator[str]:
    """Start the server, yield its endpoint URL (``http://127.0.0.1:<port>``), stop it afterwards."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server._server.server_port}"
    finally:
        server.stop()
