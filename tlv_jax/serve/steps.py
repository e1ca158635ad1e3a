"""The compiled pieces of continuous batching, on a batch of decode slots that share one KV cache array.

- `prefill_into_slot`: one request's spliced prompt into a fresh one-row cache as long as a slot, written into row
  `slot` of the batch cache, and its first token. Compiled once per prompt-length bucket (and video-token count).
- `decode_step`: one cached step for the first `rows` slots at once, each row at its own offset with its own
  sampling settings. Compiled once per bucket of `rows` (1, 2, 4, ... up to the slot count); the engine keeps its
  running requests in the first rows (`move_row`), so the step costs what the requests in flight need.

Sampling draws the same numbers as `tlv_jax.generate` for the same seed: token i of a request uses
`fold_in(key(seed), i)` over its own (1, V) logits, so a request's answer does not depend on its neighbours."""

from __future__ import annotations

import functools
from typing import Any, Optional

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


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def prefill_into_slot(graphdef: Any, state: Any, cache: KVCache, slot: jax.Array, ids: jax.Array, mask: jax.Array,
                      video_tokens: jax.Array, video_counts: Optional[jax.Array], seed: jax.Array,
                      temperature: jax.Array, top_p: jax.Array) -> tuple[jax.Array, KVCache]:
    """ids / mask (1, L) right padded with -200 at the video, video_tokens (1, Q, D) -> (first token, batch cache)."""
    model = nnx.merge(graphdef, state)
    spliced = min(ids.shape[1] - 1 + video_tokens.shape[1], model.cfg.tokenizer_model_max_length)
    logits, one = model.prefill_tokens(ids, mask, video_tokens, video_counts,
                                       max_new_tokens=cache.max_len - spliced)
    first = sample_rows(logits.astype(jnp.float32), seed[None], jnp.zeros((1,), jnp.int32), temperature[None],
                        top_p[None])
    return first[0], cache.write_slot(slot, one)


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
