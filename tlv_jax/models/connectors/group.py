"""The video-level group resampler (`groupresampler`): the token axis is split into `group` contiguous chunks of sizes
`[a+1]*r + [a]*(G-r)` (chunks may straddle frames), every chunk runs through the Perceiver with the same
`num_queries / group` latents, and the concatenated output gets the sinusoid PE(0..num_queries-1).

With padded videos the split becomes a gather of every chunk into a fixed `ceil(T/G)` window with a key mask.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from tlv_jax.config import ConnectorConfig
from tlv_jax.models.connectors import perceiver
from tlv_jax.models.connectors.perceiver import PerceiverResampler, positional_encoding
from tlv_jax.models.connectors.unit import Connector


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


class GroupResampler(PerceiverResampler):
    """G chunks x (Q/G) shared latents, + PE(0..Q-1) on the output."""

    def __init__(self, cfg: ConnectorConfig, *, rngs: nnx.Rngs):
        validate(cfg)
        super().__init__(cfg, cfg.num_queries // cfg.group, rngs=rngs)

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


def validate(cfg: ConnectorConfig) -> None:
    if cfg.group < 1 or cfg.num_queries % cfg.group:
        raise ValueError(f"num_queries={cfg.num_queries} is not a multiple of group={cfg.group}")


CONNECTOR = Connector(
    kind="group", module=GroupResampler,
    parse_type=lambda t: {} if "groupresampler" in t.lower() else None,
    type_name=lambda cfg: "groupresampler",
    fields_from_original=lambda d: {**perceiver.fields_from_original(d), "group": int(d.get("group") or 1)},
    fields_to_original=lambda cfg: {**perceiver.fields_to_original(cfg), "group": cfg.group},
    key_rules=perceiver.key_rules,
    flops=lambda cfg, tokens: perceiver.flops(cfg, tokens, cfg.group, cfg.num_queries // cfg.group),
    video_tokens=lambda cfg, tokens: cfg.num_queries,
    validate=validate,
)
