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

from tlv_jax.models.layers.platform import platform

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


def matmul_2d(x: jax.Array, kernel: jax.Array, dims: str = "io") -> jax.Array:
    """x (..., in) times a 2-D kernel, with the leading axes flattened into one first. XLA:CPU lowers the backward
    of a dot with several batch-like axes to loop fusions that transpose (B, T, F) in place, about twice the cost of
    the whole 2-D layer (measured on a Qwen2 MLP, batch 4 x 255); on accelerators the reshape is free.
    `dims="oi"` takes a kernel stored (out, in), e.g. a tied embedding table.

    On CPU a bf16 product asks for a float32 result, rounded to bf16 once after: that is what sends it to XLA:CPU's
    AMX/bf16 kernels (3.5x faster than float32 on a (1020 x 512) @ (512 x 1408) layer) instead of a path slower
    than float32. The same numbers as a bf16-output product up to summation order (both accumulate in float32), so
    accelerators keep their bf16-output kernels and write no float32 activations.

    Those kernels take matrices only: a single row (every batch-1 decode step, a prefill's last-position logits)
    would fall back to a float32 dot on a float32 copy of the kernel, which XLA schedules (or hoists out of the decode
    loop) before the first layer runs: the whole model held twice more in float32 (12 GB at 3B), and every weight
    converted again at each step outside a loop (a (1 x 2048) @ (2048 x 11008) product 9x slower). The row is padded
    to two instead and the padding row's result dropped."""
    spec = {"io": "ni,io->no", "oi": "ni,oi->no"}[dims]
    rows = x.reshape(-1, x.shape[-1])
    wide = jnp.float32 if x.dtype != jnp.float32 and platform() == "cpu" else None
    single = wide is not None and rows.shape[0] == 1
    y = jnp.einsum(spec, jnp.pad(rows, ((0, 1), (0, 0))) if single else rows, kernel, preferred_element_type=wide)
    y = y[:1] if single else y
    return y.astype(x.dtype).reshape(*x.shape[:-1], y.shape[-1])


class Dense(nnx.Module):
    """y = x @ kernel (+ bias), computed in `dtype` with fp32 parameters cast on the fly."""

    def __init__(self, in_features: int, out_features: int, axes: tuple[Optional[str], Optional[str]], *,
                 use_bias: bool = True, dtype: Any = jnp.float32, init_std: float = 0.02,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.kernel = param(rngs, normal_init(init_std), (in_features, out_features), axes, param_dtype)
        self.bias = param(rngs, zeros, (out_features,), (axes[1],), param_dtype) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = matmul_2d(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


KERNEL_INITS = ("normal", "fan_in")


def check_kernel_init(init: str) -> str:
    """`init` if it is a known kernel init; an unknown name is an error listing the known ones."""
    if init not in KERNEL_INITS:
        raise ValueError(f"unknown kernel init {init!r}; expected one of {KERNEL_INITS}")
    return init


def redraw_kernels(model: nnx.Module, init: str, seed: int) -> None:
    """Every `Dense` kernel of `model` drawn afresh, in place: 'normal' keeps the construction's N(0, 0.02) (HF's
    `initializer_range`, what pretrained checkpoints were trained from), 'fan_in' draws N(0, 1 / fan_in) (LeCun
    normal, Flax's default). Why 'fan_in' for narrow models trained from scratch: at width 64-128 a fixed 0.02 starts
    every attention near uniform and every block near the identity, so a signal only one patch carries (where a
    small square is) averages away in the resampler and stays unlearned for hundreds of steps."""
    if check_kernel_init(init) == "normal":
        return
    key = jax.random.key(seed)
    dense = [m for _, m in nnx.iter_modules(model) if isinstance(m, Dense)]
    for i, module in enumerate(dense):
        kernel = module.kernel
        fresh = jax.random.normal(jax.random.fold_in(key, i), kernel.shape, jnp.float32) * kernel.shape[0] ** -0.5
        kernel[...] = fresh.astype(kernel.dtype)


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
        return matmul_2d(x.astype(self.dtype), self.embedding[...].astype(self.dtype), "oi")
