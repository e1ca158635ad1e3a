"""SigLIP vision tower (HF `SiglipVisionModel`): patch embedding, learned positions, pre-LN blocks, post-LN, MAP head.

TinyLLaVA-Video reads `hidden_states[-2]` (the output of the second-to-last block, before post-LN), so
`__call__(pixels, output_layer=-2)` runs only the blocks that output needs. `post_ln` and `head` exist so a
checkpoint round-trips completely. Attribute names follow `tlv_jax.convert.tables.siglip_rules`.
Images are channels-last (N, H, W, C); parameters are float32, compute runs in `cfg.dtype`, norms and softmax in fp32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tlv_jax.config import VisionConfig, to_dtype
from tlv_jax.models.layers.attention import AttentionMask, attention, resolve_impl
from tlv_jax.models.layers.linear import Dense, matmul_2d, normal_init, param, zeros
from tlv_jax.models.layers.norms import LayerNorm

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
}
POSEMB_INITS = ("normal", "sincos2d")


def sincos_2d(grid: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """Fixed 2D sine-cosine table (grid*grid, dim), row-major like the patch order: [sin x, cos x, sin y, cos y]."""
    if dim % 4:
        raise ValueError(f"sincos2d position embedding needs hidden_size divisible by 4, got {dim}")
    omega = 1.0 / temperature ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    y, x = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    xo, yo = x.reshape(-1, 1) * omega, y.reshape(-1, 1) * omega
    return np.concatenate([np.sin(xo), np.cos(xo), np.sin(yo), np.cos(yo)], axis=1).astype(np.float32)


class PatchEmbed(nnx.Module):
    """Non-overlapping p x p patches -> D, as one matmul over (p, p, C)-flattened patches (== a stride-p conv)."""

    def __init__(self, patch: int, channels: int, dim: int, *, dtype: Any, rngs: nnx.Rngs):
        fan_in = patch * patch * channels
        self.kernel = param(rngs, normal_init(fan_in ** -0.5), (patch, patch, channels, dim),
                            ("vit_patch", "vit_patch", "vit_patch", "vit_embed"))
        self.bias = param(rngs, zeros, (dim,), ("vit_embed",))
        self.patch = patch
        self.dtype = dtype

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """(N, H, W, C) -> (N, (H//p)*(W//p), D), patches in row-major grid order. Like the 'valid' conv, trailing
        rows/columns that do not fill a patch are ignored (384 px with patch 14 uses 378)."""
        n, h, w, c = pixels.shape
        p, gh, gw = self.patch, h // self.patch, w // self.patch
        x = pixels[:, :gh * p, :gw * p].astype(self.dtype)
        x = x.reshape(n, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, p * p * c)
        kernel = self.kernel[...].astype(self.dtype).reshape(p * p * c, -1)
        return matmul_2d(x, kernel) + self.bias[...].astype(self.dtype)


class PositionEmbed(nnx.Module):
    """Learned (num_patches, D) table, initialised at random (`normal`, HF's std 1/sqrt(D)) or to `sincos2d`."""

    def __init__(self, grid: int, dim: int, init: str, *, rngs: nnx.Rngs):
        if init not in POSEMB_INITS:
            raise ValueError(f"unknown posemb_init {init!r}; expected one of {POSEMB_INITS}")
        table_init = normal_init(dim ** -0.5) if init == "normal" else (
            lambda key, shape, dtype: jnp.asarray(sincos_2d(grid, dim), dtype))
        self.embedding = param(rngs, table_init, (grid * grid, dim), ("vit_pos", "vit_embed"))


class SelfAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        d, dt = cfg.hidden_size, to_dtype(cfg.dtype)
        self.q = Dense(d, d, ("vit_embed", "vit_heads"), dtype=dt, rngs=rngs)
        self.k = Dense(d, d, ("vit_embed", "vit_heads"), dtype=dt, rngs=rngs)
        self.v = Dense(d, d, ("vit_embed", "vit_heads"), dtype=dt, rngs=rngs)
        self.o = Dense(d, d, ("vit_heads", "vit_embed"), dtype=dt, rngs=rngs)
        self.num_heads = cfg.num_heads
        self.impl = cfg.attn_impl

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        heads = lambda y: y.reshape(b, t, self.num_heads, -1)
        out = attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), impl=self.impl)
        return self.o(out.reshape(b, t, -1))


class Mlp(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported SigLIP hidden_act {cfg.hidden_act!r}; expected one of {sorted(ACTIVATIONS)}")
        d, m, dt = cfg.hidden_size, cfg.intermediate_size, to_dtype(cfg.dtype)
        self.fc1 = Dense(d, m, ("vit_embed", "vit_mlp"), dtype=dt, rngs=rngs)
        self.fc2 = Dense(m, d, ("vit_mlp", "vit_embed"), dtype=dt, rngs=rngs)
        self.act = cfg.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


def _layernorm(cfg: VisionConfig) -> LayerNorm:
    return LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, "vit_embed", dtype=to_dtype(cfg.dtype))


class Block(nnx.Module):
    """Pre-LN encoder block: x + attn(ln1(x)), then + mlp(ln2(.))."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        self.ln1 = _layernorm(cfg)
        self.attn = SelfAttention(cfg, rngs=rngs)
        self.ln2 = _layernorm(cfg)
        self.mlp = Mlp(cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class MapHead(nnx.Module):
    """Multihead attention pooling: one learned probe attends over all tokens (torch `nn.MultiheadAttention`, whose
    `in_proj` is fused q|k|v rows), then a residual LN + MLP. Unused by TinyLLaVA-Video."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        d, dt = cfg.hidden_size, to_dtype(cfg.dtype)
        self.probe = param(rngs, normal_init(1.0), (1, 1, d), (None, None, "vit_embed"))
        self.attn_in = Dense(d, 3 * d, ("vit_embed", "vit_heads"), dtype=dt, rngs=rngs)
        self.attn_out = Dense(d, d, ("vit_heads", "vit_embed"), dtype=dt, rngs=rngs)
        self.ln = _layernorm(cfg)
        self.mlp = Mlp(cfg, rngs=rngs)
        self.num_heads = cfg.num_heads
        self.impl = cfg.attn_impl
        self.dtype = dt

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        kernel = self.attn_in.kernel[...].astype(self.dtype)
        bias = self.attn_in.bias[...].astype(self.dtype)
        probe = self.probe[...].astype(self.dtype)
        q = jnp.dot(probe, kernel[:, :d]) + bias[:d]
        kv = matmul_2d(x.astype(self.dtype), kernel[:, d:]) + bias[d:]
        k, v = jnp.split(kv, 2, axis=-1)
        q = jnp.broadcast_to(q, (b, 1, d)).reshape(b, 1, self.num_heads, -1)
        out = attention(q, k.reshape(b, t, self.num_heads, -1), v.reshape(b, t, self.num_heads, -1), impl=self.impl)
        y = self.attn_out(out.reshape(b, 1, d))
        y = y + self.mlp(self.ln(y))
        return y[:, 0]


class SiglipVisionTower(nnx.Module):
    """The SigLIP vision transformer; `__call__` stops at the hidden state it is asked for."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        grid = cfg.image_size // cfg.patch_size
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.num_channels, cfg.hidden_size, dtype=to_dtype(cfg.dtype),
                                      rngs=rngs)
        self.pos_embed = PositionEmbed(grid, cfg.hidden_size, cfg.posemb_init, rngs=rngs)
        self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.post_ln = _layernorm(cfg)
        self.head = MapHead(cfg, rngs=rngs) if cfg.use_head else None

    def embed(self, pixels: jax.Array) -> jax.Array:
        """Patch embedding + positions: HF `hidden_states[0]`."""
        x = self.patch_embed(pixels)
        return x + self.pos_embed.embedding[...].astype(x.dtype)

    def _block(self, i: int, x: jax.Array) -> jax.Array:
        if self.cfg.remat:  # recompute the block's activations in the backward pass instead of storing them
            graphdef, state = nnx.split(self.layers[i])
            return jax.checkpoint(lambda s, h: nnx.merge(graphdef, s)(h))(state, x)
        return self.layers[i](x)

    def _encode(self, pixels: jax.Array, stop: int, keep_all: bool) -> tuple[jax.Array, ...]:
        """Embeddings then blocks 0..stop-1; every hidden state if `keep_all`, else only the last one."""
        cfg = self.cfg
        if pixels.ndim != 4 or pixels.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(f"SigLIP expects pixels (N, {cfg.image_size}, {cfg.image_size}, {cfg.num_channels}) "
                             f"channels-last, got {tuple(pixels.shape)}")
        if pixels.shape[0] > 1 and self._attention_backend() == "cpu":
            graphdef, state = nnx.split(self)
            return _encode_per_image(graphdef, state, pixels, stop, keep_all)
        return self._encode_batch(pixels, stop, keep_all)

    def _attention_backend(self) -> str:
        """The backend the blocks' self-attention resolves to. With `cpu` the whole tower also runs one image at a time
        (`_encode_per_image`): one decision for both, made where attention's backend is chosen."""
        cfg = self.cfg
        shape = (1, cfg.num_patches, cfg.num_heads, cfg.head_dim)
        return resolve_impl(cfg.attn_impl, to_dtype(cfg.dtype), shape, shape, AttentionMask())

    def _encode_batch(self, pixels: jax.Array, stop: int, keep_all: bool) -> tuple[jax.Array, ...]:
        x = self.embed(pixels)
        states = [x]
        for i in range(stop):
            x = self._block(i, x)
            states.append(x)
        return tuple(states) if keep_all else (x,)

    def _hidden_index(self, output_layer: int) -> int:
        n = self.cfg.num_layers + 1
        if not -n <= output_layer < n:
            raise ValueError(f"output_layer {output_layer} out of range for {n} hidden states")
        return output_layer % n

    def __call__(self, pixels: jax.Array, *, output_layer: Optional[int] = None) -> jax.Array:
        """`hidden_states[output_layer]` (running only the blocks it needs), or `last_hidden_state` when None."""
        stop = self.cfg.num_layers if output_layer is None else self._hidden_index(output_layer)
        (x,) = self._encode(pixels, stop, keep_all=False)
        return self.post_ln(x) if output_layer is None else x

    def hidden_states(self, pixels: jax.Array) -> tuple[jax.Array, ...]:
        """The embeddings output then every block's output (num_layers + 1 entries), like HF `hidden_states`."""
        return self._encode(pixels, self.cfg.num_layers, keep_all=True)

    def pooled(self, pixels: jax.Array) -> jax.Array:
        """The MAP head over `last_hidden_state` (HF `pooler_output`), (N, D)."""
        if self.head is None:
            raise ValueError("this SigLIP config has no head (vision_use_head=False)")
        return self.head(self(pixels))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _encode_per_image(graphdef: nnx.GraphDef, state: nnx.State, pixels: jax.Array, stop: int,
                      keep_all: bool) -> tuple[jax.Array, ...]:
    """The tower under the `cpu` attention backend: one image at a time through every block. Each image's
    activations (729 x 4304 at so400m) stay in cache between the matmuls, about 8% less CPU time than the whole batch
    at once; the same values. Parameters come in as arguments (not closed over) so that an eager call does not bake
    the weights in as constants."""
    one = lambda px: nnx.merge(graphdef, state)._encode_batch(px[None], stop, keep_all)
    return tuple(h[:, 0] for h in jax.lax.map(one, pixels))
