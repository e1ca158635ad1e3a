"""The server's Prometheus metrics, in a registry of its own (several servers may live in one process: tests)."""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Counters the routes and the engine update; `text()` is the /metrics page."""

    def __init__(self, max_batch: int, window_s: float = 10.0):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tlv_requests", "Chat completion requests received", registry=r)
        self.completed = Counter("tlv_completions", "Requests answered, by finish reason", ["finish_reason"],
                                 registry=r)
        self.errors = Counter("tlv_errors", "Requests refused or failed, by kind (the error code)", ["kind"],
                              registry=r)
        self.queue = Gauge("tlv_queue_length", "Requests accepted and waiting for a decode slot", registry=r)
        self.active = Gauge("tlv_active_slots", "Decode slots in use", registry=r)
        Gauge("tlv_decode_slots", "Decode slots (--max-batch)", registry=r).set(max_batch)
        self.occupancy = Histogram("tlv_batch_occupancy", "Fraction of the decode slots in use at each decode step",
                                   buckets=[i / max_batch for i in range(1, max_batch + 1)], registry=r)
        self.prefill_rows = Histogram("tlv_prefill_rows", "Requests prefilled together in one prefill call",
                                      buckets=list(range(1, max_batch + 1)), registry=r)
        self.prefix_hits = Counter("tlv_prefix_cache_hits", "Requests whose prompt up to the end of the video was "
                                   "already computed (only the rest of the prompt was prefilled)", registry=r)
        self.prompt_tokens = Counter("tlv_prompt_tokens", "Prompt tokens prefilled (video tokens included)",
                                     registry=r)
        self.generated = Counter("tlv_generated_tokens", "Tokens generated", registry=r)
        self.cache_hits = Counter("tlv_video_cache_hits", "Videos whose encoding came from the cache", registry=r)
        self.cache_misses = Counter("tlv_video_cache_misses", "Videos decoded and encoded", registry=r)
        self.cache_size = Gauge("tlv_video_cache_entries", "Encodings held in the video cache", registry=r)
        Gauge("tlv_tokens_per_second", f"Tokens generated per second over the last {window_s:g} s",
              registry=r).set_function(self.tokens_per_second)
        self.window_s = window_s
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def step(self, active: int, max_batch: int, new_tokens: int) -> None:
        """One decode step (or prefill) produced `new_tokens` with `active` slots busy."""
        self.occupancy.observe(active / max_batch)
        self.generated.inc(new_tokens)
        with self._lock:
            self._recent.append((time.monotonic(), new_tokens))

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - self.window_s:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / self.window_s

    def text(self) -> bytes:
        return generate_latest(self.registry)
