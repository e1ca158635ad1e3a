"""The TinyLLaVA_Factory `mlp2x_gelu` projector: Linear(Dv, D) -> exact GELU -> Linear(D, D), one output token per
vision token (torch Sequential indices 0 and 2)."""

from __future__ import annotations

import functools
import re
from typing import Any, Optional

import jax
from flax import nnx

from tlv_jax.config import ConnectorConfig, to_dtype
from tlv_jax.convert.rules import Rule, dense
from tlv_jax.models.connectors.unit import Connector
from tlv_jax.models.layers.linear import Dense

gelu_exact = functools.partial(jax.nn.gelu, approximate=False)


class MLPConnector(nnx.Module):
    """TinyLLaVA_Factory `mlp2x_gelu`: Linear(Dv, D) -> exact GELU -> Linear(D, D), one output token per input token."""

    def __init__(self, cfg: ConnectorConfig, *, rngs: nnx.Rngs):
        validate(cfg)
        d, dt = cfg.hidden_size, to_dtype(cfg.dtype)
        self.fc1 = Dense(cfg.vision_hidden_size, d, ("vit_embed", "res_mlp"), dtype=dt, rngs=rngs)
        self.fc2 = Dense(d, d, ("res_mlp", "embed"), dtype=dt, rngs=rngs)

    def __call__(self, features: jax.Array, lengths: Optional[jax.Array] = None) -> jax.Array:
        """features (B, T, Dv) -> (B, T, D); tokens past `lengths[b]` are padding the caller ignores."""
        del lengths
        return self.fc2(gelu_exact(self.fc1(features)))


def validate(cfg: ConnectorConfig) -> None:
    if cfg.mlp_depth != 2:
        raise ValueError(f"only the mlp2x_gelu connector is supported, got mlp{cfg.mlp_depth}x_gelu")


def _parse_type(connector_type: str) -> Optional[dict[str, Any]]:
    m = re.match(r"^mlp(\d+)x_gelu$", connector_type.lower())
    return None if m is None else {"mlp_depth": int(m.group(1))}


def key_rules(cfg: ConnectorConfig) -> list[Rule]:
    del cfg
    return [*dense("0", "fc1"), *dense("2", "fc2")]


CONNECTOR = Connector(
    kind="mlp", module=MLPConnector, parse_type=_parse_type, type_name=lambda cfg: f"mlp{cfg.mlp_depth}x_gelu",
    fields_from_original=lambda d: dict(num_queries=0, num_layers=0, group=1), fields_to_original=lambda cfg: {},
    key_rules=key_rules,
    flops=lambda cfg, tokens: float(2 * tokens * cfg.vision_hidden_size * cfg.hidden_size
                                    + 2 * tokens * (cfg.mlp_depth - 1) * cfg.hidden_size ** 2),
    video_tokens=lambda cfg, tokens: tokens,
    variable_tokens=True,
    validate=validate,
)
