"""The decoder's KV cache: keys and values of every layer in one stacked array, written in place at each sample's
own offset (prompts are right padded, so samples advance by their real token counts)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


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
