"""Request media -> encoded video tokens, cached by content hash.

The bytes are hashed (with the frame sampling) before anything is decoded: a follow-up question about the same
video, sent as the same file or the same data URL, skips decoding and the vision tower. The cache is a bounded LRU;
requests that arrive together for one video wait for a single encoding. All of it runs in a worker pool, never on the
event loop (`encode` is awaited from the routes)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import hashlib
import threading
from pathlib import Path
from typing import Any, Optional

import jax

from tlv_jax.generate import Generator
from tlv_jax.serve import media
from tlv_jax.serve.metrics import Metrics
from tlv_jax.serve.protocol import Media


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One video's tokens (1, Q, D), the per-video token count the connector reports (None: all Q), the number of
    video tokens the prompt will hold, and the content hash it is cached under (None: not cached). The engine reuses
    the computed prompt prefix of requests whose videos have the same `key`."""

    tokens: jax.Array
    counts: Optional[jax.Array]
    num_tokens: int
    key: Optional[str] = None


class VideoEncoder:
    """Encodes the media of requests with `generator` (its frame sampling and vision tower), keeping the last
    `capacity` encodings."""

    def __init__(self, generator: Generator, metrics: Metrics, media_root: Optional[Path] = None, workers: int = 2,
                 capacity: int = 32):
        self.gen = generator
        self.metrics = metrics
        self.media_root = None if media_root is None else Path(media_root).resolve()
        self.capacity = capacity
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tlv-media")
        self._cache: collections.OrderedDict[str, Encoded] = collections.OrderedDict()
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()

    async def encode(self, m: Media) -> Encoded:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.encode_now, m)

    def encode_now(self, m: Media) -> Encoded:
        """Blocking: fetch, hash, then the cached encoding or a fresh one (raises ApiError for bad media)."""
        kind = "video" if m.video_url is not None else "image"
        urls = [m.video_url] if m.video_url is not None else list(m.image_urls)
        blobs = [media.fetch(u, self.media_root, kind) for u in urls]
        s = self.gen.sampling
        digest = hashlib.sha256(f"{kind}:{s.num_frames}:{s.max_frames}".encode())
        for b in blobs:
            digest.update(len(b.data).to_bytes(8, "little"))
            digest.update(b.data)
        key = digest.hexdigest()
        with self._lock:
            hit = self._cache.get(key)
            waiting = self._pending.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            elif waiting is None:
                mine = self._pending[key] = concurrent.futures.Future()
        if hit is not None or waiting is not None:
            self.metrics.cache_hits.inc()
            return hit if hit is not None else waiting.result()
        self.metrics.cache_misses.inc()
        try:
            frames = (media.video_frames(blobs[0], s) if kind == "video"
                      else [media.image_frame(b) for b in blobs])
            out = self.encode_frames(frames, key)
        except BaseException as e:
            with self._lock:
                del self._pending[key]
            mine.set_exception(e)
            raise
        with self._lock:
            del self._pending[key]
            self._cache[key] = out
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
            self.metrics.cache_size.set(len(self._cache))
        mine.set_result(out)
        return out

    def encode_frames(self, frames: Any, key: Optional[str] = None) -> Encoded:
        """One video's uint8 frames (F, H, W, 3) or PIL images -> its encoding (not cached here)."""
        tokens, counts = self.gen.encode([frames])
        return Encoded(tokens, counts, tokens.shape[1] if counts is None else int(counts[0]), key)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
