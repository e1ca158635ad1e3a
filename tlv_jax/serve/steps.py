"""The compiled pieces of continuous batching, on a batch of decode slots that share one KV cache array.

- `prefill_into_slots`: several requests' spliced prompts (same padded length and video-token count) in one call,
  each into a fresh row as long as a slot, written into its row of the batch cache, with their first tokens.
  Compiled once per (rows, prompt-length bucket, video-token count); the engine sends at most a few rows per call
  (prefill is compute-bound: a bigger batch saves nothing per row, and every row count is another compilation).
- `extend_into_slots`: the same for requests whose prompt starts with a prefix already computed (the text before
  the video, and the video): the prefix's keys and values are copied into the row and only the rest of the prompt
  runs, at the prefix's offset. Compiled once per (rows, prefix width, rest-length bucket).
- `take_prefix`: the first `width` positions of one slot's row, to be reused by `extend_into_slots`.
- `decode_step`: one cached step for the first `rows` slots at once, each row at its own offset with its own
  sampling settings. Compiled once per bucket of `rows` (1, 2, 4, ... up to the slot count); the engine keeps its
  running requests in the first rows (`move_row`), so the step costs what the requests in flight need.

Rows whose slot is out of range (the slot count) are computed and dropped: the engine pads nothing, but the
start-up compilation uses them. Sampling draws the same numbers as `tlv_jax.generate` for the same seed: token i of
a request uses `fold_in(key(seed), i)` over its own (1, V) logits, so a request's answer does not depend on its
neighbours."""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from tlv_jax.generate import sample
from tlv_jax.models.layers.kv_cache import KVCache


def sample_rows(logits: jax.Array, seeds: jax.Array, steps: jax.Array, temperature: jax.Array, top_p: jax.Array
                ) -> jax.Array:
    """logits (B, V) -> tokens (B,), row b sampled as a batch of one with key fold_in(key(seeds[b]), steps[b]).
    All-greedy batches (the default) take only the argmax: the per-row nucleus sort is paid only when a row samples."""

    def one(row: jax.Array, seed: jax.Array, step: jax.Array, t: jax.Array, p: jax.Array) -> jax.Array:
        return sample(row[None], jax.random.fold_in(jax.random.key(seed), step), t, p)[0]

    return jax.lax.cond(jnp.any(temperature > 0),
                        lambda: jax.vmap(one)(logits, seeds, steps, temperature, top_p),
                        lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32))


def _first_tokens(logits: jax.Array, seeds: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """Token 0 of each request (fold_in step 0, as `generate` draws it)."""
    return sample_rows(logits.astype(jnp.float32), seeds, jnp.zeros(seeds.shape, jnp.int32), temperature, top_p)


def _write_rows(cache: KVCache, slots: jax.Array, rows: KVCache) -> KVCache:
    """Puts rows (layers, R, S, K, H) of a cache as long as the batch cache into batch rows `slots` (R,), replacing
    them; a slot out of range is dropped."""
    put = lambda x, new: x.at[:, slots].set(new.astype(x.dtype), mode="drop")
    return KVCache(put(cache.k, rows.k), put(cache.v, rows.v), cache.lengths.at[slots].set(rows.lengths, mode="drop"))


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def prefill_into_slots(graphdef: Any, state: Any, cache: KVCache, slots: jax.Array, ids: jax.Array,
                       mask: jax.Array, video_tokens: Sequence[jax.Array], video_counts: Optional[Sequence[jax.Array]],
                       seeds: jax.Array, temperature: jax.Array, top_p: jax.Array) -> tuple[jax.Array, KVCache]:
    """ids / mask (R, L) right padded with -200 at the video, video_tokens R arrays (1, Q, D) (counts R arrays (1,),
    or None) -> (first tokens (R,), batch cache)."""
    model = nnx.merge(graphdef, state)
    videos = jnp.concatenate(video_tokens)
    counts = None if video_counts is None else jnp.concatenate(video_counts)
    spliced = min(ids.shape[1] - 1 + videos.shape[1], model.cfg.tokenizer_model_max_length)
    logits, rows = model.prefill_tokens(ids, mask, videos, counts, max_new_tokens=cache.max_len - spliced)
    return _first_tokens(logits, seeds, temperature, top_p), _write_rows(cache, slots, rows)


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def extend_into_slots(graphdef: Any, state: Any, cache: KVCache, slots: jax.Array, prefixes: Sequence[KVCache],
                      ids: jax.Array, mask: jax.Array, seeds: jax.Array, temperature: jax.Array, top_p: jax.Array
                      ) -> tuple[jax.Array, KVCache]:
    """prefixes: R one-row caches (layers, 1, W, K, H), each `lengths` its prefix's real tokens; ids / mask (R, T)
    the rest of each prompt (text), right padded -> (first tokens (R,), batch cache)."""
    llm = nnx.merge(graphdef, state).llm
    pad = [(0, 0), (0, 0), (0, cache.max_len - prefixes[0].max_len), (0, 0), (0, 0)]
    widen = lambda xs: jnp.pad(jnp.concatenate(xs, axis=1), pad)
    rows = KVCache(widen([p.k for p in prefixes]), widen([p.v for p in prefixes]),
                   jnp.concatenate([p.lengths for p in prefixes]))
    positions = rows.lengths[:, None] + jnp.arange(ids.shape[1], dtype=jnp.int32)[None, :]
    hidden, rows = llm(llm.embed_tokens(ids), positions=positions, attention_mask=mask, cache=rows)
    last = jnp.maximum(mask.astype(jnp.int32).sum(1) - 1, 0)
    logits = llm.logits(jnp.take_along_axis(hidden, last[:, None, None], axis=1))[:, 0]
    return _first_tokens(logits, seeds, temperature, top_p), _write_rows(cache, slots, rows)


@functools.partial(jax.jit, static_argnames=("width",))
def take_prefix(cache: KVCache, slot: jax.Array, length: jax.Array, *, width: int) -> KVCache:
    """The first `width` positions of row `slot` as a one-row cache whose `lengths` is `length` (the prefix's real
    tokens; what lies between it and `width` is masked and overwritten when the prefix is extended)."""
    take = lambda x: jax.lax.dynamic_slice_in_dim(jax.lax.dynamic_slice_in_dim(x, slot, 1, axis=1), 0, width, axis=2)
    return KVCache(take(cache.k), take(cache.v), length[None])


@functools.partial(jax.jit, static_argnames=("graphdef", "rows"), donate_argnames=("cache",))
def decode_step(graphdef: Any, state: Any, tokens: jax.Array, cache: KVCache, active: jax.Array, seeds: jax.Array,
                steps: jax.Array, temperature: jax.Array, top_p: jax.Array, *, rows: int
                ) -> tuple[jax.Array, KVCache]:
    """One step for the first `rows` slots (the engine keeps its requests there): tokens (rows,) appended at each
    row's offset -> next tokens (rows,) and the whole cache. Compiled once per `rows` bucket, so a few requests do
    not pay for a full batch. Free rows (`active` False) are held at offset 0 so they never run past the cache."""
    model = nnx.merge(graphdef, state)
    part = KVCache(cache.k[:, :rows], cache.v[:, :rows], jnp.where(active, cache.lengths[:rows], 0))
    logits, part = model.decode(tokens, part)
    cache = KVCache(cache.k.at[:, :rows].set(part.k), cache.v.at[:, :rows].set(part.v),
                    cache.lengths.at[:rows].set(part.lengths))
    return sample_rows(logits.astype(jnp.float32), seeds, steps, temperature, top_p), cache


@functools.partial(jax.jit, donate_argnames=("cache",))
def move_row(cache: KVCache, src: jax.Array, dst: jax.Array) -> KVCache:
    """Copies slot `src` (keys, values, length) onto slot `dst`: the engine keeps its running requests in the first
    rows this way."""
    take = lambda x: jax.lax.dynamic_index_in_dim(x, src, axis=1, keepdims=True)
    put = lambda x, row: jax.lax.dynamic_update_index_in_dim(x, row, dst, axis=1)
    return KVCache(put(cache.k, take(cache.k)), put(cache.v, take(cache.v)),
                   cache.lengths.at[dst].set(cache.lengths[src]))
