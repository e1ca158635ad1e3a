"""The `cpu` attention backend: the reference's values, computed in pieces whose logits stay in cache.

XLA's CPU batched dot and softmax over whole (B, N, T, S) logits are memory-bound (4 images x 729 tokens x 16 heads
= 136 MB at SigLIP so400m), so:
- a causal mask without offsets runs query blocks of QUERY_BLOCK rows, each against its causal prefix of keys only
  (about half the work and memory of the full T x T logits; the skipped keys are masked out anyway);
- any other mask runs one (sample, KV head) slice at a time (3-4x faster than the whole batch at so400m size).
Both pieces go through the xla reference, so the values are the reference's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tlv_jax.models.layers.attention_mask import AttentionMask
from tlv_jax.models.layers.attention_xla import xla_attention

QUERY_BLOCK = 128
# Below this many queries or keys a slice's logits fit in cache anyway, and a loop of tiny steps costs more than it
# saves (e.g. the CPU demo's 16-token frames, a resampler's few latents, a decode step's single query).
SLICE_MIN_TOKENS = 256


def pays_off(t: int, s: int, mask: AttentionMask) -> bool:
    """Whether splitting T queries x S keys under `mask` beats the whole reference on CPU."""
    if mask.causal:
        return mask.offsets is None and t > QUERY_BLOCK
    return min(t, s) >= SLICE_MIN_TOKENS


def cpu_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, scale: float) -> jax.Array:
    if mask.causal and mask.offsets is None:
        return _by_query_block(q, k, v, mask, scale)
    return _by_slice(q, k, v, mask, scale)


def _by_query_block(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, scale: float) -> jax.Array:
    """Query rows [start, end) sit at key slots [start, end) and see keys [0, end) at most."""
    b, t = q.shape[:2]
    blocks = []
    for start in range(0, t, QUERY_BLOCK):
        end = min(start + QUERY_BLOCK, t)
        block = AttentionMask(
            causal=True, offsets=jnp.full((b,), start, jnp.int32),
            key_valid=None if mask.key_valid is None else mask.key_valid[:, :end],
            q_segments=None if mask.q_segments is None else mask.q_segments[:, start:end],
            kv_segments=None if mask.kv_segments is None else mask.kv_segments[:, :end])
        blocks.append(xla_attention(q[:, start:end], k[:, :end], v[:, :end], block, scale))
    return jnp.concatenate(blocks, axis=1)


@functools.partial(jax.jit, static_argnames="scale")  # jitted so that eager calls reuse one compiled loop
def _by_slice(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, scale: float) -> jax.Array:
    """One (sample, KV head) slice at a time, with the KV head's group of query heads."""
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = n // kh
    qs = q.reshape(b, t, kh, g, h).transpose(0, 2, 1, 3, 4).reshape(b * kh, 1, t, g, h)
    ks, vs = (x.transpose(0, 2, 1, 3).reshape(b * kh, 1, s, 1, h) for x in (k, v))

    def one(piece: tuple[jax.Array, ...]) -> jax.Array:
        i, qi, ki, vi = piece
        row = jax.tree.map(lambda a: a[i // kh][None], mask)  # the mask of this slice's sample
        return xla_attention(qi, ki, vi, row, scale)

    out = jax.lax.map(one, (jnp.arange(b * kh), qs, ks, vs))  # (B*K, 1, T, g, H)
    return out.reshape(b, kh, t, g, h).transpose(0, 2, 1, 3, 4).reshape(b, t, n, h)
