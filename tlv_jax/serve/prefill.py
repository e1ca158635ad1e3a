"""Requests joining the decode batch: their prompts prefilled together into their slots, reusing computed prefixes.

Prefill is compute-bound (hundreds of tokens through every layer), so a bigger batch saves little per row; grouping
is about fewer calls and a bounded number of compiled shapes. Requests of one padded shape (prompt-length bucket and
video-token count) go together, a group split into calls of 4, 2 and 1 rows: no padding rows, each of which would
cost a whole prompt.

The prompt up to the end of its video (system line, earlier turns, the video's tokens) is the same for every
question about one video in one conversation. Its keys and values are kept in an LRU of `capacity` entries (each a
slot row cut to a bucket of the prefix's length), and a request that finds its prefix there runs only the rest of its
prompt at the prefix's offset. Requests of one round that share a prefix: the first computes it with its whole
prompt, the others extend it in the same round."""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Hashable, Iterator, Optional, Sequence, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tlv_jax.generate import PROMPT_BUCKETS, Generator, bucket, right_pad
from tlv_jax.models.layers.kv_cache import KVCache
from tlv_jax.serve.metrics import Metrics
from tlv_jax.serve.steps import extend_into_slots, prefill_into_slots, take_prefix
from tlv_jax.serve.video_cache import Encoded

PREFILL_ROWS = (4, 2, 1)  # rows per prefill call, largest first
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Joining:
    """A request entering `slot`: its prompt ids (with the video placeholder) and its video."""

    slot: int
    ids: np.ndarray
    video: Encoded


@dataclasses.dataclass(frozen=True)
class _Split:
    """Where a prompt's reusable prefix ends: `ids[:at]` precede the video; `length` spliced tokens in all."""

    key: Hashable
    at: int
    length: int


class Prefiller:
    """Prefills joining requests into the rows of a batch cache of `context` positions (the engine's)."""

    def __init__(self, generator: Generator, metrics: Metrics, context: int, max_batch: int, capacity: int):
        self.gen, self.metrics = generator, metrics
        self.context, self.max_batch, self.capacity = context, max_batch, capacity
        self.graphdef, self.state = nnx.split(generator.model)
        self.prefixes: collections.OrderedDict[Hashable, KVCache] = collections.OrderedDict()

    def width(self, n: int, video: Encoded) -> int:
        """The padded prompt length: a bucket, unless that would not fit a slot (then just what fits)."""
        return min(bucket(n, PROMPT_BUCKETS), max(n, self.context + 1 - video.tokens.shape[1]))

    def split(self, ids: np.ndarray, video: Encoded) -> Optional[_Split]:
        """The prompt's reusable prefix, or None: no cache, a video not cached by content, no text after it."""
        at = np.flatnonzero(ids == self.gen.model.cfg.image_token_index)
        if not self.capacity or video.key is None or len(at) != 1 or at[0] + 1 == len(ids):
            return None
        return _Split((video.key, ids[:at[0]].tobytes()), int(at[0]), int(at[0]) + video.num_tokens)

    def prefill(self, cache: KVCache, joining: Sequence[Joining], seeds: np.ndarray, temperature: np.ndarray,
                top_p: np.ndarray) -> tuple[KVCache, dict[int, int]]:
        """Writes each request's prompt into its slot; the first token of each slot. `seeds`, `temperature` and
        `top_p` are indexed by slot."""
        whole, extend, prefixes = [], [], {}
        for j in joining:
            s = self.split(j.ids, j.video)
            if s is not None and (s.key in prefixes or s.key in self.prefixes):
                if s.key not in prefixes:
                    self.prefixes.move_to_end(s.key)
                    prefixes[s.key] = self.prefixes[s.key]
                extend.append((j, s))
            else:
                whole.append((j, s))
                if s is not None:
                    prefixes[s.key] = None  # computed below, by this request's prefill
        firsts, slots = [], []  # in call order: grouping by shape reorders the requests
        sampling = lambda slots: (seeds[slots], temperature[slots], top_p[slots])
        for rows in groups(whole, lambda e: (self.width(len(e[0].ids), e[0].video), e[0].video.tokens.shape)):
            cache, first = self._whole(cache, [j for j, _ in rows], sampling)
            firsts.append(first)
            slots += [j.slot for j, _ in rows]
            self.metrics.prefill_rows.observe(len(rows))
        for j, s in whole:
            if s is not None and prefixes[s.key] is None:
                prefixes[s.key] = self._keep(cache, j.slot, s)
        for rows in groups(extend, lambda e: (prefixes[e[1].key].max_len, self._rest_width(e[0].ids, e[1]))):
            cache, first = self._extend(cache, [(j, prefixes[s.key], s) for j, s in rows], sampling)
            firsts.append(first)
            slots += [j.slot for j, _ in rows]
            self.metrics.prefill_rows.observe(len(rows))
        self.metrics.prefix_hits.inc(len(extend))
        return cache, dict(zip(slots, (int(t) for t in np.concatenate([np.asarray(f) for f in firsts]))))

    def compile(self, cache: KVCache, ids: np.ndarray, video: Encoded) -> KVCache:
        """Runs every row count of both prefills once on `ids` and `video` (results dropped: the slot is out of
        range), so that requests of that shape do not wait for a compilation."""
        sampling = lambda slots: (np.zeros(len(slots), np.uint32), np.zeros(len(slots), np.float32),
                                  np.ones(len(slots), np.float32))
        nowhere = Joining(self.max_batch, ids, video)
        s = self.split(ids, dataclasses.replace(video, key=""))  # the warm-up's video has no content key
        prefix = None if s is None else take_prefix(cache, jnp.int32(0), jnp.int32(s.length),
                                                    width=self._prefix_width(s))
        for n in (n for n in PREFILL_ROWS if n <= self.max_batch):
            cache, first = self._whole(cache, [nowhere] * n, sampling)
            if prefix is not None:
                cache, first = self._extend(cache, [(nowhere, prefix, s)] * n, sampling)
            jax.block_until_ready(first)
        return cache

    def _whole(self, cache: KVCache, rows: list[Joining], sampling: Callable) -> tuple[KVCache, jax.Array]:
        width = self.width(len(rows[0].ids), rows[0].video)
        ids, mask = right_pad([j.ids for j in rows], width, self.gen.pad)
        slots = np.array([j.slot for j in rows], np.int32)
        counts = None if rows[0].video.counts is None else tuple(j.video.counts for j in rows)
        first, cache = prefill_into_slots(self.graphdef, self.state, cache, slots, ids, mask,
                                          tuple(j.video.tokens for j in rows), counts, *sampling(slots))
        return cache, first

    def _extend(self, cache: KVCache, rows: list[tuple[Joining, KVCache, _Split]], sampling: Callable
                ) -> tuple[KVCache, jax.Array]:
        j, _, s = rows[0]
        ids, mask = right_pad([j.ids[s.at + 1:] for j, _, s in rows], self._rest_width(j.ids, s), self.gen.pad)
        slots = np.array([j.slot for j, _, _ in rows], np.int32)
        first, cache = extend_into_slots(self.graphdef, self.state, cache, slots, tuple(p for _, p, _ in rows),
                                         ids, mask, *sampling(slots))
        return cache, first

    def _keep(self, cache: KVCache, slot: int, s: _Split) -> KVCache:
        """Row `slot`'s prefix into the LRU (the oldest entries leave beyond `capacity`)."""
        prefix = self.prefixes[s.key] = take_prefix(cache, jnp.int32(slot), jnp.int32(s.length),
                                                    width=self._prefix_width(s))
        while len(self.prefixes) > self.capacity:
            self.prefixes.popitem(last=False)
        return prefix

    def _prefix_width(self, s: _Split) -> int:
        return min(bucket(s.length, PROMPT_BUCKETS), self.context)

    @staticmethod
    def _rest_width(ids: np.ndarray, s: _Split) -> int:
        return bucket(len(ids) - s.at - 1, PROMPT_BUCKETS)


def groups(items: Sequence[T], shape: Callable[[T], Hashable]) -> Iterator[list[T]]:
    """The items of each shape (in order of first appearance), in runs of PREFILL_ROWS sizes."""
    by_shape: dict[Hashable, list[T]] = {}
    for item in items:
        by_shape.setdefault(shape(item), []).append(item)
    for same in by_shape.values():
        while same:
            n = next(r for r in PREFILL_ROWS if r <= len(same))
            yield same[:n]
            same = same[n:]
