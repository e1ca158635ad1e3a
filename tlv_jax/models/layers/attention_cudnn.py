"""The `cudnn` attention backend (GPU): `jax.nn.dot_product_attention`'s fused cuDNN kernel.

A causal mask without offsets over as many keys as queries becomes `is_causal` (the kernel then skips the masked
blocks; square, so that top-left and bottom-right alignment agree); the other pieces (KV-cache offsets, key padding,
segments) go in as a dense boolean mask, which JAX turns into an additive bias.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tlv_jax.models.layers.attention_mask import AttentionMask
from tlv_jax.models.layers.platform import platform

DTYPES = (jnp.float16, jnp.bfloat16)
MAX_HEAD_DIM = 128  # Hopper takes 256; 128 holds on every GPU cuDNN's flash kernel runs on


def supports(dtype: jnp.dtype, head_dim: int, t: int, s: int, mask: AttentionMask) -> bool:
    """Whether cuDNN's flash kernel takes these inputs: fp16/bf16, head_dim a multiple of 8 up to MAX_HEAD_DIM, and
    even lengths when a mask has to travel as a bias (its training kernel refuses odd ones)."""
    if jnp.dtype(dtype) not in DTYPES or head_dim % 8 or head_dim > MAX_HEAD_DIM:
        return False
    return not _needs_bias(t, s, mask) or (t % 2 == 0 and s % 2 == 0)


def _native_causal(t: int, s: int, mask: AttentionMask) -> bool:
    return mask.causal and mask.offsets is None and t == s


def _needs_bias(t: int, s: int, mask: AttentionMask) -> bool:
    pieces = (mask.offsets, mask.key_valid, mask.q_segments)
    return any(p is not None for p in pieces) or (mask.causal and not _native_causal(t, s, mask))


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, scale: float) -> jax.Array:
    if platform() != "gpu":
        raise ValueError(f"attention impl 'cudnn' runs on a GPU only; this process computes on {platform()!r} "
                         "(use 'auto' or 'xla')")
    t, s = q.shape[1], k.shape[1]
    native_causal = _native_causal(t, s, mask)
    rest = dataclasses.replace(mask, causal=False) if native_causal else mask
    visible = rest.dense(t, s)
    return jax.nn.dot_product_attention(q, k, v, mask=None if visible is None else visible[:, None], scale=scale,
                                        is_causal=native_causal, implementation="cudnn")
