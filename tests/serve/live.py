"""A live server for tests: uvicorn on a real localhost port, in a thread of the test process."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import uvicorn

from tlv_jax.serve.__main__ import build_service
from tlv_jax.serve.app import create_app


class Live:
    """A running server: its base URL, the service behind it, and helpers."""

    def __init__(self, url: str, service):
        self.url, self.service = url, service

    def metric(self, name: str) -> float:
        """The value of one sample of /metrics (0 when absent), named as the page writes it:
        'tlv_video_cache_hits_total', 'tlv_errors_total{kind="queue_full"}'."""
        samples = dict(line.rsplit(" ", 1) for line in httpx.get(self.url + "/metrics").text.splitlines()
                       if line and not line.startswith("#"))
        return float(samples.get(name, 0.0))


@contextlib.contextmanager
def live_server(model_dir: Path, media_root: Path, **options) -> Iterator[Live]:
    """Starts uvicorn on a free port and waits until /health answers 200; stops it afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = build_service(model_dir, media_root=media_root, **options)
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/health").status_code == 200:
                break
        time.sleep(0.1)
    else:
        raise TimeoutError("the server did not become healthy in 120 s")
    try:
        yield Live(url, service)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
