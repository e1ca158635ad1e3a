"""What the group and naive resamplers share: a Perceiver whose learned latents attend (pre-norm layers) to keys and
values over [LN(media); LN(latents)], after a projection of the SigLIP features to the LLM width, finished by a
LayerNorm; the original's fp16-rounded sinusoidal encoding; one checkpoint layout (`to_kv` stays fused, keys first)
and one FLOPs formula.

A padded batch (videos with different frame counts) runs in one static-shape call: `lengths[b]` is the number of
real tokens of sample b, and masked keys get zero weight, so it equals the per-video computation exactly.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tlv_jax.config import ConnectorConfig, to_dtype
from tlv_jax.convert.rules import Rule, dense, layernorm
from tlv_jax.models.layers.attention import AttentionMask, attention
from tlv_jax.models.layers.linear import Dense, normal_init, param
from tlv_jax.models.layers.norms import LayerNorm

gelu_exact = functools.partial(jax.nn.gelu, approximate=False)


@functools.lru_cache(maxsize=64)
def sinusoid_table_fp16(length: int, dim: int) -> np.ndarray:
    """The upstream `PositionalEncoding(dim)(length)` stored as float16 (length, dim), bit for bit.

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
        self.attn_impl = cfg.attn_impl

    def __call__(self, media: jax.Array, latents: jax.Array, media_valid: Optional[jax.Array] = None) -> jax.Array:
        """media (N, S, D), latents (N, Nl, D), media_valid (N, S) bool or None -> (N, Nl, D)."""
        n = media.shape[0]
        nl = latents.shape[1]
        lat = self.norm_latents(latents)
        k, v = jnp.split(self.to_kv(jnp.concatenate([self.norm_media(media), lat], axis=1)), 2, axis=-1)
        heads = lambda y: y.reshape(n, y.shape[1], self.heads, self.dim_head)  # feature = h * dim_head + d
        mask = None
        if media_valid is not None:
            keys = jnp.concatenate([media_valid, jnp.ones((n, nl), bool)], axis=1)
            mask = AttentionMask(key_valid=keys)
        out = attention(heads(self.to_q(lat)), heads(k), heads(v), mask, impl=self.attn_impl,
                        scale=self.dim_head ** -0.5)
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

    def __init__(self, cfg: ConnectorConfig, num_latents: int, *, rngs: nnx.Rngs):
        d, dt = cfg.hidden_size, to_dtype(cfg.dtype)
        self.cfg = cfg
        self.latents = param(rngs, normal_init(1.0), (num_latents, d), ("queries", "embed"))  # torch.randn
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


def key_rules(cfg: ConnectorConfig) -> list[Rule]:
    """Keys of the original resampler module (torch Sequential indices inside each layer)."""
    del cfg
    lp, ours = "layers.{i}.", "layers.{i}."
    return [
        Rule("latents", "latents"),
        *dense("linear", "linear"),
        *layernorm(lp + "0.norm_media", ours + "attn.norm_media"),
        *layernorm(lp + "0.norm_latents", ours + "attn.norm_latents"),
        *dense(lp + "0.to_q", ours + "attn.to_q", bias=False),
        *dense(lp + "0.to_kv", ours + "attn.to_kv", bias=False),
        *dense(lp + "0.to_out", ours + "attn.to_out", bias=False),
        *layernorm(lp + "1.0", ours + "ff.norm"),
        *dense(lp + "1.1", ours + "ff.fc1", bias=False),
        *dense(lp + "1.3", ours + "ff.fc2", bias=False),
        *layernorm("norm", "norm"),
    ]


def flops(cfg: ConnectorConfig, tokens: int, groups: int, latents: int) -> float:
    """Projection of `tokens` features, then every layer over each of `groups` chunks with `latents` latents."""
    d, inner = cfg.hidden_size, cfg.heads * cfg.dim_head
    n, q = tokens / groups, latents
    layer = (2 * q * d * inner + 2 * (n + q) * d * 2 * inner + 2 * 2 * q * (n + q) * inner + 2 * q * inner * d
             + 2 * q * 2 * d * cfg.ff_mult * d)
    return float(2 * tokens * cfg.vision_hidden_size * d + groups * cfg.num_layers * layer)


def fields_from_original(d: Mapping[str, Any]) -> dict[str, Any]:
    return dict(num_queries=int(d.get("num_queries") or 0), num_layers=int(d.get("num_resampler_layers") or 0),
                group=1)


def fields_to_original(cfg: ConnectorConfig) -> dict[str, Any]:
    return dict(num_queries=cfg.num_queries, num_resampler_layers=cfg.num_layers)
