"""The video connectors, looked up by kind: the one place that knows which connectors exist.

Adding a connector: a module next to these that ends with a `CONNECTOR = Connector(...)`, and one line in
`CONNECTORS`.
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx

from tlv_jax.config import ConnectorConfig
from tlv_jax.models.connectors import group, mlp, naive
from tlv_jax.models.connectors.unit import Connector

CONNECTORS: dict[str, Connector] = {c.kind: c for c in (group.CONNECTOR, naive.CONNECTOR, mlp.CONNECTOR)}


def get(kind: str) -> Connector:
    """The connector of `kind`; an unknown kind is an error listing the known ones."""
    if kind not in CONNECTORS:
        raise ValueError(f"unknown connector kind {kind!r}; expected one of {sorted(CONNECTORS)}")
    return CONNECTORS[kind]


def parse_type(connector_type: str) -> tuple[Connector, dict[str, Any]]:
    """The connector an original `connector_type` string names, and the config fields the string itself carries."""
    for connector in CONNECTORS.values():
        fields = connector.parse_type(connector_type or "")
        if fields is not None:
            return connector, fields
    raise ValueError(f"unsupported connector_type {connector_type!r} (expected groupresampler, naiveresampler, "
                     "resamplerwithpe or mlpNx_gelu)")


def config_from_original(d: Mapping[str, Any], *, vision_hidden_size: int, hidden_size: int, dtype: str = "float32",
                         **extra: Any) -> ConnectorConfig:
    """The `ConnectorConfig` of the original config.json's fields (`connector_type`, `num_queries`, `group`,
    `num_resampler_layers`), as a TinyLLaVA-Video checkpoint or a training recipe gives them."""
    connector, fields = parse_type(d.get("connector_type", ""))
    cfg = ConnectorConfig(kind=connector.kind, vision_hidden_size=vision_hidden_size, hidden_size=hidden_size,
                          dtype=dtype, **{**connector.fields_from_original(d), **fields, **extra})
    connector.validate(cfg)
    return cfg


def config_to_original(cfg: ConnectorConfig) -> dict[str, Any]:
    """The original config.json's connector fields of a config (what `config_from_original` reads back)."""
    connector = get(cfg.kind)
    return {"connector_type": connector.type_name(cfg), **connector.fields_to_original(cfg)}


def build_connector(cfg: ConnectorConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """The connector module of `cfg.kind`, built from `cfg` alone."""
    connector = get(cfg.kind)
    connector.validate(cfg)
    return connector.module(cfg, rngs=rngs)
