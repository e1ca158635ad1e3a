"""The video connectors: group and naive Perceiver resamplers (spec §3, §15) and the Factory `mlp2x_gelu` projector.

Both resamplers project SigLIP features to the LLM width, then let learned latents attend (3 pre-norm layers) to
keys/values over [LN(media); LN(latents)], and finish with a LayerNorm. The group resampler splits the token axis
into `group` contiguous chunks of sizes `[a+1]*r + [a]*(G-r)` (chunks may straddle frames), runs every chunk with
the same latents, concatenates and adds the fp16-rounded sinusoid; the naive one adds the sinusoid to its input.

A padded batch (videos with different frame counts) runs in one static-shape call: `lengths[b]` is the number of
real tokens of sample b. The group split becomes a gather of every chunk into a fixed `ceil(T/G)` window with a key
mask, the naive resampler masks padded keys; both equal the per-video computation exactly (masked keys get zero
weight). Attribute names follow `tlv_jax.convert.tables.resampler_rules` / `mlp_connector_rules`.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tlv_jax.config import to_dtype
from tlv_jax.models.layers.attention import dot_product_attention
from tlv_jax.models.layers.linear import Dense, normal_init, param
from tlv_jax.models.layers.norms import LayerNorm
from tlv_jax.models.tinyllava_config import ConnectorConfig

gelu_exact = functools.partial(jax.nn.gelu, approximate=False)


@functools.lru_cache(maxsize=64)
def sinusoid_table_fp16(length: int, dim: int) -> np.ndarray:
    """The upstream `PositionalEncoding(dim)(length)` stored as float16 (length, dim), bit for bit (spec §17).

    The frequency exponent and the angle p*w_i are formed in float32 as torch does; exp/sin/cos are evaluated in
    float64 on those float32 values and rounded to float32, then to float16.
    """
    if dim % 2:
        raise ValueError(f"the sinusoidal encoding needs an even width, got {dim}")
    exponent = np.arange(0, dim, 2, dtype=np.float32) * np.float32(-(math.log(10000.0) / dim))
    freq = np.exp(exponent.astype(np.float64)).astype(np.float32)
    angle = (np.arange(length, dtype=np.float32)[:, None] * freq[None, :]).astype(np.float64)
    table = np.zeros((length, dim), np.float32)
    table[:, 0::2] = np.sin(angle).astype(np.float32)
    table[:, 1::2] = np.cos(angle).astype(np.float32)
    table = table.astype(np.float16)
    table.flags.writeable = False
    return table


def positional_encoding(length: int, dim: int, dtype: jnp.dtype) -> jax.Array:
    """(length, dim) fp16-rounded sinusoid cast to the activation dtype (as upstream's `.to(dtype=x.dtype)`)."""
    return jnp.asarray(sinusoid_table_fp16(length, dim)).astype(dtype)


def group_windows(lengths: Optional[jax.Array], total: int, groups: int) -> tuple[jax.Array, jax.Array]:
    """Token indices (B, G, S) and validity (B, G, S) of each group's contiguous chunk, S = ceil(total / G).

    Sample b has `lengths[b]` real tokens (all `total` when None); chunk g holds `a+1` tokens for g < r and `a`
    otherwise (a, r = divmod(length, G)), starting right after chunk g-1. Invalid slots point at token 0.
    """
    n = jnp.full((1,), total, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
    window = -(-total // groups)
    a, r = (n // groups)[:, None], (n % groups)[:, None]
    g = jnp.arange(groups)[None, :]
    sizes = a + (g < r)
    starts = g * a + jnp.minimum(g, r)
    slot = jnp.arange(window)[None, None, :]
    valid = slot < sizes[..., None]
    return jnp.where(valid, starts[..., None] + slot, 0), valid


class PerceiverAttention(nnx.Module):
    """Latents attend to [LN(media); LN(latents)]; returns the update only (the caller adds the residual)."""

    def __init__(self, cfg: ConnectorConfig, *, rngs: nnx.Rngs):
        d, inner, dt = cfg.hidden_size, cfg.dim_head * cfg.heads, to_dtype(cfg.dtype)
        self.norm_media = LayerNorm(d, cfg.layer_norm_eps, "embed", dtype=dt)
        self.norm_latents = LayerNorm(d, cfg.layer_norm_eps, "embed", dtype=dt)
        self.to_q = Dense(d, inner, ("embed", "res_heads"), use_bias=False, dtype=dt, rngs=rngs)
        # Fused like the checkpoint: output features [0, inner) are the keys, [inner, 2*inner) the values.
        self.to_kv = Dense(d, 2 * inner, ("embed", "res_heads"), use_bias=False, dtype=dt, rngs=rngs)
        self.to_out = Dense(inner, d, ("res_heads", "embed"), use_bias=False, dtype=dt, rngs=rngs)
        self.heads = cfg.heads
        self.dim_head = cfg.dim_head

    def __call__(self, media: jax.Array, latents: jax.Array, media_valid: Optional[jax.Array] = None) -> jax.Array:
        """media (N, S, D), latents (N, Nl, D), media_valid (N, S) bool or None -> (N, Nl, D)."""
        n, s, _ = media.shape
        nl = latents.shape[1]
        lat = self.norm_latents(latents)
        k, v = jnp.split(self.to_kv(jnp.concatenate([self.norm_media(media), lat], axis=1)), 2, axis=-1)
        heads = lambda y: y.reshape(n, y.shape[1], self.heads, self.dim_head)  # feature = h * dim_head + d
        mask = None
        if media_valid is not None:
            keys = jnp.concatenate([media_valid, jnp.ones((n, nl), bool)], axis=1)
            mask = jnp.broadcast_to(keys[:, None, None, :], (n, 1, nl, s + nl))
        out = dot_product_attention(heads(self.to_q(lat)), heads(k), heads(v), mask, scale=self.dim_head ** -0.5)
        return self.to_out(out.reshape(n, nl, -1))


class FeedForward(nnx.Module):
    """LN -> Linear(D, mult*D) -> exact GELU -> Linear(mult*D, D), no biases (torch Sequential indices 0, 1, 3)."""

    def __init__(self, cfg: ConnectorConfig, *, rngs: nnx.Rngs):
        d, dt = cfg.hidden_size, to_dtype(cfg.dtype)
        self.norm = LayerNorm(d, cfg.layer_norm_eps, "embed", dtype=dt)
        self.fc1 = Dense(d, cfg.ff_mult * d, ("embed", "res_mlp"), use_bias=False, dtype=dt, rngs=rngs)
        self.fc2 = Dense(cfg.ff_mult * d, d, ("res_mlp", "embed"), use_bias=False, dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu_exact(self.fc1(self.norm(x))))


class PerceiverLayer(nnx.Module):
    def __init__(self, cfg: ConnectorConfig, *, rngs: nnx.Rngs):
        self.attn = PerceiverAttention(cfg, rngs=rngs)
        self.ff = FeedForward(cfg, rngs=rngs)

    def __call__(self, media: jax.Array, latents: jax.Array, media_valid: Optional[jax.Array]) -> jax.Array:
        latents = latents + self.attn(media, latents, media_valid)
        return latents + self.ff(latents)


class PerceiverResampler(nnx.Module):
    """What both resamplers share: latents, input projection, the layer stack and the final norm."""

    def __init__(self, cfg: ConnectorConfig, *, rngs: nnx.Rngs):
        d, dt = cfg.hidden_size, to_dtype(cfg.dtype)
        self.cfg = cfg
        self.latents = param(rngs, normal_init(1.0), (cfg.num_latents, d), ("queries", "embed"))  # torch.randn
        self.linear = Dense(cfg.vision_hidden_size, d, ("vit_embed", "embed"), dtype=dt, rngs=rngs)
        self.layers = nnx.List([PerceiverLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = LayerNorm(d, cfg.layer_norm_eps, "embed", dtype=dt)
        self.dtype = dt

    def perceive(self, media: jax.Array, media_valid: Optional[jax.Array]) -> jax.Array:
        """media (N, S, D) -> norm(latents after every layer) (N, Nl, D)."""
        latents = jnp.broadcast_to(self.latents[...].astype(self.dtype), (media.shape[0], *self.latents.shape))
        for layer in self.layers:
            latents = layer(media, latents, media_valid)
        return self.norm(latents)

    def _check(self, features: jax.Array) -> None:
        if features.ndim != 3 or features.shape[-1] != self.cfg.vision_hidden_size:
            raise ValueError(f"{type(self).__name__} expects features (B, T, {self.cfg.vision_hidden_size}), "
                             f"got {tuple(features.shape)}")


class GroupResampler(PerceiverResampler):
    """Video-level group resampler (`groupresampler`): G chunks x (Q/G) shared latents, + PE(0..Q-1) on the output."""

    def __call__(self, features: jax.Array, lengths: Optional[jax.Array] = None) -> jax.Array:
        """features (B, T, Dv) with `lengths[b]` real tokens (None: all T) -> (B, num_queries, D)."""
        self._check(features)
        cfg = self.cfg
        x = self.linear(features)
        b, t, d = x.shape
        if lengths is None and t % cfg.group == 0:  # every chunk full: a plain reshape, no mask
            chunks, valid = x.reshape(b * cfg.group, t // cfg.group, d), None
        else:
            index, valid = group_windows(lengths, t, cfg.group)
            index = jnp.broadcast_to(index, (b, *index.shape[1:]))
            chunks = jnp.take_along_axis(x, index.reshape(b, -1, 1), axis=1).reshape(b * cfg.group, -1, d)
            valid = jnp.broadcast_to(valid, index.shape).reshape(b * cfg.group, -1)
        out = self.perceive(chunks, valid).reshape(b, cfg.num_queries, d)
        return out + positional_encoding(cfg.num_queries, d, out.dtype)


class NaiveResampler(PerceiverResampler):
    """Video-level naive resampler (`naiveresampler`, legacy `resamplerwithpe`): PE(0..T-1) on the projected input."""

    def __call__(self, features: jax.Array, lengths: Optional[jax.Array] = None) -> jax.Array:
        """features (B, T, Dv) with `lengths[b]` real tokens (None: all T) -> (B, num_queries, D)."""
        self._check(features)
        x = self.linear(features)
        t, d = x.shape[1:]
        x = x + positional_encoding(t, d, x.dtype)
        valid = None if lengths is None else jnp.arange(t)[None, :] < jnp.asarray(lengths)[:, None]
        return self.perceive(x, valid)


class MLPConnector(nnx.Module):
    """TinyLLaVA_Factory `mlp2x_gelu`: Linear(Dv, D) -> exact GELU -> Linear(D, D), one output token per input token."""

    def __init__(self, cfg: ConnectorConfig, *, rngs: nnx.Rngs):
        if cfg.mlp_depth != 2:
            raise ValueError(f"only the mlp2x_gelu connector is supported, got mlp{cfg.mlp_depth}x_gelu")
        d, dt = cfg.hidden_size, to_dtype(cfg.dtype)
        self.fc1 = Dense(cfg.vision_hidden_size, d, ("vit_embed", "res_mlp"), dtype=dt, rngs=rngs)
        self.fc2 = Dense(d, d, ("res_mlp", "embed"), dtype=dt, rngs=rngs)

    def __call__(self, features: jax.Array, lengths: Optional[jax.Array] = None) -> jax.Array:
        """features (B, T, Dv) -> (B, T, D); tokens past `lengths[b]` are padding the caller ignores."""
        del lengths
        return self.fc2(gelu_exact(self.fc1(features)))


Connector = GroupResampler | NaiveResampler | MLPConnector

CONNECTORS: dict[str, type] = {"group": GroupResampler, "naive": NaiveResampler, "mlp": MLPConnector}


def build_connector(cfg: ConnectorConfig, *, rngs: nnx.Rngs) -> Connector:
    return CONNECTORS[cfg.kind](cfg, rngs=rngs)
