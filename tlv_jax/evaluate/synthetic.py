"""A generated set in Video-MME's layout (hub parquet + `data/{videoID}.mp4`), for benchmarks and tests at any size.

Real H.264 files (lossy, as published videos are) with several multiple-choice questions each, so a run exercises
decoding, per-video question batching and the whole scoring path; answers are random letters (a random model scores
about 25%).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tlv_jax.data.synthetic import write_video
from tlv_jax.evaluate.videomme import DURATIONS, PARQUET, VIDEOS

LETTERS = "ABCD"


def make_videomme_like(root: str | os.PathLike, videos: int, questions_per_video: int, *, frames: int = 64,
                       size: int = 64, fps: int = 8, keyframe_seconds: float = 2.0, seed: int = 0) -> Path:
    """`videos` videos of `frames` frames (size x size) with `questions_per_video` questions each; returns `root`.
    A keyframe every `keyframe_seconds`, as in published videos (what makes seeking to a frame cheap)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / VIDEOS).mkdir(parents=True, exist_ok=True)
    options = {"crf": "23", "threads": "1", "g": str(max(1, round(keyframe_seconds * fps)))}
    rows = []
    for v in range(videos):
        video_id = f"vid{v:04d}"
        base = rng.integers(0, 256, (1, size, size, 3))
        drift = np.arange(frames)[:, None, None, None] * rng.integers(1, 5)
        pixels = ((base + drift + rng.integers(0, 24, (frames, size, size, 3))) % 256).astype(np.uint8)
        write_video(root / VIDEOS / f"{video_id}.mp4", pixels, fps=fps, options=options)
        for q in range(questions_per_video):
            rows.append(dict(video_id=f"{v:03d}", duration=DURATIONS[v % len(DURATIONS)], domain="Synthetic",
                             sub_category="Synthetic", url="", videoID=video_id, question_id=f"{v:03d}-{q + 1}",
                             task_type="Synthetic", question=f"Question {q + 1} about video {v}: which option fits?",
                             options=[f"{letter}. Option {letter.lower()}{q}." for letter in LETTERS],
                             answer=LETTERS[int(rng.integers(0, 4))]))
    (root / PARQUET).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / PARQUET)
    return root
