"""Serving from inside a Python program (benchmarks, tests, notebooks): uvicorn on a real port in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Iterator

import uvicorn

from tlv_jax.serve.app import Service, create_app


@contextlib.contextmanager
def serve_in_thread(service: Service, host: str = "127.0.0.1", port: int = 0, ready_timeout_s: float = 600.0
                    ) -> Iterator[str]:
    """Runs the service's app with uvicorn in a daemon thread; yields its base URL once /health answers 200
    (model compiled), and stops the server on exit. Port 0 takes a free one."""
    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="tlv-uvicorn", daemon=True)
    thread.start()
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + ready_timeout_s
    try:
        while not _healthy(url):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {url} did not become healthy")
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False
