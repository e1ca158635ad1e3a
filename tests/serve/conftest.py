"""Fixtures of the serve tests: the tiny Qwen2 fixture model served live on localhost (tests/serve/live.py), and
videos written as real mp4 files under the server's media root."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.serve.live import Live, live_server
from tlv_jax.data.synthetic import write_video

MODEL = "qwen2-group-f16"


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
