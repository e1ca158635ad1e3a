"""The one attention op every model calls, and how `auto` picks its backend.

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

from typing import Any, Callable, Optional

import jax

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


def check_impl(impl: Optional[str]) -> str:
    """`impl` as a known name ('' and None are 'auto'); an unknown name is an error listing the known ones."""
    impl = impl or "auto"
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLS}")
    return impl


def resolve_impl(impl: Optional[str], dtype: Any, q_shape: Shape, k_shape: Shape, mask: AttentionMask) -> str:
    """The backend that `impl` runs on this platform for these inputs; an unknown name is an error."""
    impl = check_impl(impl)
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
