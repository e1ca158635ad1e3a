"""Live servers for the serve tests: uvicorn on a real localhost port, in a thread of the test process, serving the
tiny Qwen2 fixture model; videos written as real mp4 files under the server's media root."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import uvicorn

from tlv_jax.data.synthetic import write_video
from tlv_jax.serve.__main__ import build_service
from tlv_jax.serve.app import create_app

MODEL = "qwen2-group-f16"


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


@pytest.fixture(scope="session")
def model_dir(fixtures_dir) -> Path:
    return fixtures_dir / MODEL / "finetune"


@pytest.fixture(scope="session")
def media_root(tmp_path_factory) -> Path:
    """Three different clips (a, b, c) of 12 frames, 56 x 64 px."""
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    for name in "abc":
        write_video(root / f"{name}.mp4", rng.integers(0, 256, (12, 56, 64, 3), dtype=np.uint8))
    return root


@pytest.fixture(scope="session")
def server(model_dir, media_root) -> Iterator[Live]:
    with live_server(model_dir, media_root, max_batch=4, max_queue=32) as live:
        yield live
