"""A live server for tests: `tlv_jax.serve.background.serve_in_thread` (uvicorn on a real localhost port, in a
thread of the test process) over a model directory, with a reader of its /metrics."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import httpx

from tlv_jax.serve.__main__ import build_service
from tlv_jax.serve.background import serve_in_thread


class Live:
    """A running server: its base URL, the service behind it, and its metrics."""

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
    """Serves `model_dir` (options as `build_service`) until the block ends."""
    service = build_service(model_dir, media_root=media_root, **options)
    with serve_in_thread(service) as url:
        yield Live(url, service)
