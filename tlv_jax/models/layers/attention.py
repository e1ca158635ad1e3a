"""The one attention implementation every model uses, the masks it takes, and the decoder KV cache.

Shapes: queries (B, T, N, H), keys/values (B, S, K, H) with N a multiple of K (grouped-query attention).
The math is `jax.nn.dot_product_attention` (`impl=None` lets JAX pick: xla on CPU/TPU, cudnn where available;
'xla' or 'cudnn' force one). Masks are boolean (B, 1, T, S), True where a query may attend.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array] = None,
                          impl: Optional[str] = None, scale: Optional[float] = None) -> jax.Array:
    """Softmax attention; fp32 logits and softmax whatever the compute dtype (as HF's eager path)."""
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
    # The xla path written out so that bf16 inputs still get fp32 logits and softmax.
    # The query heads of each KV head are folded into one (g*T) row block: both products are then plain batched
    # matmuls (batch b, kv head), which XLA's CPU backend runs ~3x faster than the 5-D grouped einsum.
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = n // kh
    scale = h ** -0.5 if scale is None else scale
    qf = q.reshape(b, t, kh, g, h).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, h)
    kf, vf = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, K, S, H)
    logits = jnp.einsum("bkqh,bksh->bkqs", qf, kf, preferred_element_type=jnp.float32).reshape(b, kh, g, t, s)
    logits = logits * scale
    if mask is not None:
        logits = jnp.where(mask[:, :, None] if mask.ndim == 4 else mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype).reshape(b, kh, g * t, s)
    out = jnp.einsum("bkqs,bksh->bkqh", probs, vf, preferred_element_type=jnp.float32)
    return out.reshape(b, kh, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(q.dtype)


def decoder_mask(q_len: int, key_valid: jax.Array, offsets: Optional[jax.Array] = None) -> jax.Array:
    """Causal + padding mask (B, 1, T, S): query i of sample b sits at slot offsets[b] + i and sees key j iff
    j <= offsets[b] + i and key_valid[b, j]."""
    b, s = key_valid.shape
    offsets = jnp.zeros((b,), jnp.int32) if offsets is None else offsets
    q_pos = offsets[:, None] + jnp.arange(q_len)[None, :]  # (B, T)
    causal = jnp.arange(s)[None, None, :] <= q_pos[:, :, None]  # (B, T, S)
    return (causal & key_valid[:, None, :])[:, None]


class KVCache(NamedTuple):
    """Keys and values of every layer, stacked: (layers, B, S, K, H). `lengths[b]` = tokens written for sample b.

    Prompts are right padded; a prefill writes the whole padded block but advances `lengths` by the real
    token count only, so the next decode step overwrites the padding slot by slot.
    """

    k: jax.Array
    v: jax.Array
    lengths: jax.Array

    @classmethod
    def init(cls, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
             dtype: Any = jnp.float32) -> "KVCache":
        shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, layer: int, k_new: jax.Array, v_new: jax.Array) -> tuple["KVCache", jax.Array, jax.Array]:
        """Writes (B, T, K, H) at each sample's offset; returns the new cache and this layer's full keys/values.

        One scatter into the stacked array, which XLA does in place (a decode step writes B x K x H values): slicing
        the layer out, writing it and setting it back made XLA copy the whole stacked cache for every layer of
        every step. Slots past `max_len` are dropped (callers size the cache for prompt + new tokens)."""
        b, t = k_new.shape[:2]
        rows = jnp.arange(b)[:, None]
        slots = self.lengths[:, None] + jnp.arange(t)[None, :]  # (B, T)
        k = self.k.at[layer, rows, slots].set(k_new.astype(self.k.dtype), mode="drop")
        v = self.v.at[layer, rows, slots].set(v_new.astype(self.v.dtype), mode="drop")
        return self._replace(k=k, v=v), k[layer], v[layer]

    def key_valid(self, n_new: jax.Array) -> jax.Array:
        """(B, S) validity of cache slots once `n_new[b]` real tokens are appended."""
        return jnp.arange(self.max_len)[None, :] < (self.lengths + n_new)[:, None]

    def advance(self, n_new: jax.Array) -> "KVCache":
        return self._replace(lengths=self.lengths + n_new.astype(jnp.int32))
