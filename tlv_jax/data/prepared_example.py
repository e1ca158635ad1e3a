"""One annotation entry -> one stored example of the prepared dataset: what the process pool and the Beam workers of
`python -m tlv_jax.data.prepare` both run, so that the two paths write the same records.

Imports neither TFDS nor Beam: it is what a worker process needs, whichever path started it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import tempfile
from typing import Any, Iterator, Optional

import numpy as np
from etils import epath
from PIL import Image

from tlv_jax.data.bad_samples import DECODE_ERROR, MISSING_VIDEO, BadSample
from tlv_jax.data.preprocess import resize_frames
from tlv_jax.data.records import encode_record, load_tokenizer, read_record_frames, record_video, sample_id
from tlv_jax.paths import is_url

log = logging.getLogger(__name__)

FRAME_FORMATS = ("png", "jpeg")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """What `prepare` reads and how it samples, resizes and stores the frames."""

    annotation_file: str
    video_dir: str
    tokenizer_dir: str
    template: str = "qwen2_base"
    num_frames: int = 16
    max_frames: Optional[int] = None
    image_size: int = 384
    frame_format: str = "png"
    jpeg_quality: int = 95
    workers: int = 0  # decoding processes of the pool path (0: in this process)
    max_bad_fraction: float = 0.01
    min_samples_for_bad_check: int = 500

    def __post_init__(self):
        if self.frame_format not in FRAME_FORMATS:
            raise ValueError(f"frame_format must be one of {FRAME_FORMATS}, got {self.frame_format!r}")
        if self.num_frames == -1 and not self.max_frames:
            raise ValueError("1 fps sampling (num_frames=-1) needs max_frames: batches have a fixed frame axis")


def encode_frames(frames: np.ndarray, frame_format: str, jpeg_quality: int = 95) -> list[bytes]:
    """uint8 (F, H, W, 3) -> one PNG or JPEG file per frame."""
    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format=frame_format.upper(), **(
            {"quality": jpeg_quality, "subsampling": 0} if frame_format == "jpeg" else {"compress_level": 1}))
        out.append(buffer.getvalue())
    return out


class ExampleMaker:
    """Makes the examples of one worker process (it holds the tokenizer, loaded once)."""

    def __init__(self, config: PrepareConfig):
        self.config = config
        self.tokenizer = load_tokenizer(config.tokenizer_dir)

    def __call__(self, index: int, record: Any) -> dict:
        """The entry's example, or {'bad': (reason, id, detail)}. Never raises for what one video does: a decoder
        failing in a way it does not report as a bad video (an unexpected exception) skips that sample as a
        `decode_error` instead of ending a build of a million videos."""
        cfg, sid = self.config, sample_id(record, index)
        try:
            encoded = encode_record(record, self.tokenizer, cfg.template)
            frames = self._frames(record, sid)
        except BadSample as e:
            return {"bad": (e.reason, sid, e.detail)}
        return {
            "id": sid,
            "video": record["video"],
            "input_ids": encoded.input_ids.astype(np.int32),
            "labels": encoded.labels.astype(np.int32),
            "frames": frames,
        }

    def _frames(self, record: dict, sid: str) -> list[bytes]:
        cfg = self.config
        try:
            with _local_video(record, cfg.video_dir) as (local_record, video_dir):
                frames = read_record_frames(local_record, video_dir, cfg.num_frames, cfg.max_frames)
            return encode_frames(resize_frames(frames, cfg.image_size), cfg.frame_format, cfg.jpeg_quality)
        except BadSample:
            raise
        except Exception as e:  # noqa: BLE001 (one video must not end the build; the counter reports it)
            log.exception("sample %s: unexpected error reading %r", sid, record.get("video"))
            raise BadSample(DECODE_ERROR, f"unexpected {type(e).__name__} reading {record.get('video')!r}: {e}")


@contextlib.contextmanager
def _local_video(record: dict, video_dir: str) -> Iterator[tuple[dict, str]]:
    """(entry, folder) to decode the entry's video from: the entry and `video_dir` themselves, or for a bucket
    (gs://..., on Dataflow) a temporary local copy of just that file, since the decoders read local files; a bad
    sample's detail then names the object, not the copy."""
    if not is_url(video_dir):
        yield record, video_dir
        return
    source = epath.Path(record_video(record, video_dir))
    with tempfile.TemporaryDirectory(prefix="tlv-video-") as tmp:
        local = os.path.join(tmp, source.name)
        try:
            source.copy(local)
        except FileNotFoundError:
            raise BadSample(MISSING_VIDEO, f"cannot read video {source}: missing (no such object)") from None
        try:
            yield {**record, "video": source.name}, tmp
        except BadSample as e:
            raise BadSample(e.reason, e.detail.replace(local, str(source))) from None
