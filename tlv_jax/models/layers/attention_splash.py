"""The `splash` attention backend (TPU): the Pallas splash-attention kernel shipped with JAX.

The kernel takes one sample's (N, T, H) queries and (K, S, H) keys/values, a static per-head mask (causal or full)
and per-token segment ids; here it is vmapped over the batch. Key padding becomes a segment id no query carries, and
both lengths are padded up to the kernel's blocks (multiples of 128 lanes) the same way. The kernel has no scale
argument: queries are scaled before it. Off a TPU it runs in the Pallas interpreter (slow: for tests).

Per-sample query offsets (KV-cache steps) cannot be expressed by a static mask: those calls run the xla reference,
which means the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from tlv_jax.models.layers.attention_mask import AttentionMask
from tlv_jax.models.layers.attention_xla import xla_attention
from tlv_jax.models.layers.platform import platform

LANES = 128  # block sizes must be multiples of the TPU's lane count
MAX_BLOCK = 512
PAD_SEGMENT = jnp.iinfo(jnp.int32).min  # the segment of padding keys: no query carries it


def fits(t: int, s: int, mask: AttentionMask) -> bool:
    """Whether the kernel pays off: a static mask, and at least one block of queries and keys (a decode step or a
    resampler's few latents would be mostly padding)."""
    return mask.offsets is None and min(t, s) >= LANES


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, scale: float) -> jax.Array:
    if mask.offsets is not None:
        return xla_attention(q, k, v, mask, scale)
    b, t, n, _ = q.shape
    s = k.shape[1]
    bq, bkv = _block(t), _block(s)
    tp, sp = _round_up(t, bq), _round_up(s, bkv)
    heads = lambda x, length: jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    qs = (q.astype(jnp.float32) * scale).astype(q.dtype)
    static = splash.CausalMask((tp, sp)) if mask.causal else splash.FullMask((tp, sp))
    kernel = splash.make_splash_mha(
        splash.MultiHeadMask([static] * n), head_shards=1, q_seq_shards=1,
        block_sizes=splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                                      block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv),
        interpret=platform() != "tpu")
    out = jax.vmap(kernel)(heads(qs, tp), heads(k, sp), heads(v, sp), segment_ids=_segment_ids(mask, b, t, tp, s, sp))
    return out.transpose(0, 2, 1, 3)[:, :t].astype(q.dtype)


def _segment_ids(mask: AttentionMask, b: int, t: int, tp: int, s: int, sp: int) -> splash.SegmentIds | None:
    """(B, Tp) and (B, Sp) ids: the mask's segments (0 without), PAD_SEGMENT on padding keys; None if not needed."""
    if mask.key_valid is None and mask.q_segments is None and sp == s:
        return None
    q_ids = jnp.zeros((b, t), jnp.int32) if mask.q_segments is None else mask.q_segments.astype(jnp.int32)
    kv_ids = jnp.zeros((b, s), jnp.int32) if mask.kv_segments is None else mask.kv_segments.astype(jnp.int32)
    if mask.key_valid is not None:
        kv_ids = jnp.where(mask.key_valid, kv_ids, PAD_SEGMENT)
    pad = lambda ids, length: jnp.pad(ids, ((0, 0), (0, length - ids.shape[1])), constant_values=PAD_SEGMENT)
    return splash.SegmentIds(q=pad(q_ids, tp), kv=pad(kv_ids, sp))


def _block(length: int) -> int:
    return min(MAX_BLOCK, _round_up(length, LANES))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
