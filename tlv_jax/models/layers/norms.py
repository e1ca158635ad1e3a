"""LayerNorm and RMSNorm, always normalised in float32 (as the PyTorch references do) then cast back."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tlv_jax.models.layers.linear import ones, param, zeros


class LayerNorm(nnx.Module):
    def __init__(self, features: int, eps: float, axis_name: str | None = "embed", *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32):
        self.scale = param(None, ones, (features,), (axis_name,), param_dtype)
        self.bias = param(None, zeros, (features,), (axis_name,), param_dtype)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, features: int, eps: float, axis_name: str | None = "embed", *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32):
        self.scale = param(None, ones, (features,), (axis_name,), param_dtype)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        # Qwen2RMSNorm casts back to the input dtype before the scale multiply.
        return (self.scale[...].astype(self.dtype) * y.astype(self.dtype)).astype(self.dtype)
