"""Parameters that carry logical axis names, and the dense / embedding layers built on them.

Every parameter is an `nnx.Param` with an `axes` metadata tuple (one logical name per dimension, or None);
`tlv_jax.sharding.rules` maps those names onto mesh axes. Kernels are stored (in, out) like Flax; the HF
conversion tables transpose PyTorch's (out, in).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[Optional[str], ...]
Initializer = Callable[[jax.Array, Sequence[int], Any], jax.Array]

normal_init = nnx.initializers.normal


def param(rngs: nnx.Rngs | None, init: Initializer, shape: Sequence[int], axes: Axes,
          dtype: Any = jnp.float32) -> nnx.Param:
    """Creates a parameter with logical axis names; `rngs=None` only for deterministic initializers."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {tuple(shape)}")
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return nnx.Param(init(key, tuple(shape), dtype), axes=tuple(axes))


def ones(key: jax.Array, shape: Sequence[int], dtype: Any) -> jax.Array:
    del key
    return jnp.ones(shape, dtype)


def zeros(key: jax.Array, shape: Sequence[int], dtype: Any) -> jax.Array:
    del key
    return jnp.zeros(shape, dtype)


class Dense(nnx.Module):
    """y = x @ kernel (+ bias), computed in `dtype` with fp32 parameters cast on the fly."""

    def __init__(self, in_features: int, out_features: int, axes: tuple[Optional[str], Optional[str]], *,
                 use_bias: bool = True, dtype: Any = jnp.float32, init_std: float = 0.02,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.kernel = param(rngs, normal_init(init_std), (in_features, out_features), axes, param_dtype)
        self.bias = param(rngs, zeros, (out_features,), (axes[1],), param_dtype) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding table (vocab, embed); `attend` gives tied output logits."""

    def __init__(self, vocab_size: int, features: int, *, dtype: Any = jnp.float32, init_std: float = 0.02,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.embedding = param(rngs, normal_init(init_std), (vocab_size, features), ("vocab", "embed"), param_dtype)
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        # Contract the table's feature axis in place: `x @ table.T` lowers on XLA:CPU to a transposed-copy loop
        # fusion ~25% slower than a dot (this is the largest matmul of every decode step).
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype))
