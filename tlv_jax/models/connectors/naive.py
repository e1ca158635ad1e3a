"""The video-level naive resampler (`naiveresampler`, legacy `resamplerwithpe`): the sinusoid PE(0..T-1) is added to
the projected input, then `num_queries` latents attend over the whole video."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from tlv_jax.config import ConnectorConfig
from tlv_jax.models.connectors import perceiver
from tlv_jax.models.connectors.perceiver import PerceiverResampler, positional_encoding
from tlv_jax.models.connectors.unit import Connector


class NaiveResampler(PerceiverResampler):
    def __init__(self, cfg: ConnectorConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, cfg.num_queries, rngs=rngs)

    def __call__(self, features: jax.Array, lengths: Optional[jax.Array] = None) -> jax.Array:
        """features (B, T, Dv) with `lengths[b]` real tokens (None: all T) -> (B, num_queries, D)."""
        self._check(features)
        x = self.linear(features)
        t, d = x.shape[1:]
        x = x + positional_encoding(t, d, x.dtype)
        valid = None if lengths is None else jnp.arange(t)[None, :] < jnp.asarray(lengths)[:, None]
        return self.perceive(x, valid)


def _parse_type(connector_type: str) -> Optional[dict]:
    t = connector_type.lower()
    return {} if "naiveresampler" in t or "resamplerwithpe" in t else None


CONNECTOR = Connector(
    kind="naive", module=NaiveResampler, parse_type=_parse_type, type_name=lambda cfg: "naiveresampler",
    fields_from_original=perceiver.fields_from_original, fields_to_original=perceiver.fields_to_original,
    key_rules=perceiver.key_rules,
    flops=lambda cfg, tokens: perceiver.flops(cfg, tokens, 1, cfg.num_queries),
    video_tokens=lambda cfg, tokens: cfg.num_queries,
)
