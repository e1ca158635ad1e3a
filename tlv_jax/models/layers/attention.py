"""The one attention op every model calls, how `auto` picks its backend, and the decoder KV cache.

`attention(q, k, v, mask, impl=, scale=)`: queries (B, T, N, H), keys/values (B, S, K, H) with N a multiple of K
(grouped-query attention), `mask` an `AttentionMask` (causal, KV-cache offsets, key padding, packing segments), which
means the same in every backend. `impl` (a config's `attn_impl`; '' and None from older configs mean 'auto'):

  xla     written out, fp32 logits and softmax whatever the compute dtype: the reference (`attention_xla`)
  cpu     the reference's values in cache-sized pieces, for long sequences on CPU (`attention_cpu`)
  cudnn   the fused cuDNN kernel of `jax.nn.dot_product_attention`, GPU only (`attention_cudnn`)
  splash  the Pallas splash-attention kernel, TPU (Pallas interpreter elsewhere) (`attention_splash`)
  auto    by platform, dtype and shape: `choose_impl`
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from tlv_jax.models.layers import attention_cpu, attention_cudnn, attention_splash
from tlv_jax.models.layers.attention_mask import AttentionMask
from tlv_jax.models.layers.attention_xla import xla_attention
from tlv_jax.models.layers.platform import platform

Backend = Callable[[jax.Array, jax.Array, jax.Array, AttentionMask, float], jax.Array]

BACKENDS: dict[str, Backend] = {
    "xla": xla_attention,
    "cpu": attention_cpu.cpu_attention,
    "cudnn": attention_cudnn.cudnn_attention,
    "splash": attention_splash.splash_attention,
}
IMPLS = ("auto", *BACKENDS)

Shape = tuple[int, ...]


def choose_impl(platform_name: str, dtype: Any, q_shape: Shape, k_shape: Shape, mask: AttentionMask) -> str:
    """What `auto` runs: on CPU the split `cpu` backend where it pays off (long sequences), on GPU cuDNN where it
    takes the dtype, head size and mask, on TPU splash where the mask is static and the lengths fill a block; the
    xla reference everywhere else. Depends on its arguments only (the mask's structure, not its values)."""
    t, h, s = q_shape[1], q_shape[3], k_shape[1]
    if platform_name == "cpu" and attention_cpu.pays_off(t, s, mask):
        return "cpu"
    if platform_name == "gpu" and attention_cudnn.supports(dtype, h, t, s, mask):
        return "cudnn"
    if platform_name == "tpu" and attention_splash.fits(t, s, mask):
        return "splash"
    return "xla"


def resolve_impl(impl: Optional[str], dtype: Any, q_shape: Shape, k_shape: Shape, mask: AttentionMask) -> str:
    """The backend that `impl` runs on this platform for these inputs; an unknown name is an error."""
    impl = impl or "auto"
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLS}")
    return choose_impl(platform(), dtype, q_shape, k_shape, mask) if impl == "auto" else impl


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[AttentionMask] = None, *,
              impl: Optional[str] = "auto", scale: Optional[float] = None) -> jax.Array:
    """Softmax attention (B, T, N, H) x (B, S, K, H) -> (B, T, N, H); `scale` defaults to 1/sqrt(H)."""
    b, t, n, h = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != h or n % k.shape[2]:
        raise ValueError(f"attention needs q (B, T, N, H) and k, v (B, S, K, H) with N a multiple of K; got "
                         f"q {q.shape}, k {k.shape}, v {v.shape}")
    mask = AttentionMask() if mask is None else mask
    mask.check(b, t, k.shape[1])
    backend = BACKENDS[resolve_impl(impl, q.dtype, q.shape, k.shape, mask)]
    return backend(q, k, v, mask, h ** -0.5 if scale is None else scale)


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
