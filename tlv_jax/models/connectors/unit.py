"""What a connector is: everything the rest of the code needs to know about one kind of video connector, in one value.

A connector module (`group.py`, `naive.py`, `mlp.py`) defines its NNX module and one `Connector` holding how the
original `connector_type` names it, which fields of the original config.json it reads and writes, its HF key table,
its FLOPs and how many tokens it gives a video. `tlv_jax.models.connectors` maps kinds to these values.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

from flax import nnx

from tlv_jax.config import ConnectorConfig
from tlv_jax.convert.rules import Rule


@dataclasses.dataclass(frozen=True)
class Connector:
    kind: str
    module: type[nnx.Module]  # built as module(cfg, rngs=rngs); called as module(features, lengths)
    # The original `connector_type` string -> this kind's own config fields, or None when the string is not this kind.
    parse_type: Callable[[str], Optional[dict[str, Any]]]
    # The `connector_type` string the original writes for a config.
    type_name: Callable[[ConnectorConfig], str]
    # This kind's fields from the original config.json (num_queries, group, num_resampler_layers...), and back.
    fields_from_original: Callable[[Mapping[str, Any]], dict[str, Any]]
    fields_to_original: Callable[[ConnectorConfig], dict[str, Any]]
    # The HF key <-> parameter path table (`{i}` = one of `cfg.num_layers` layers).
    key_rules: Callable[[ConnectorConfig], list[Rule]]
    # Matmul FLOPs of one forward over one video of `tokens` vision tokens.
    flops: Callable[[ConnectorConfig, int], float]
    # Tokens one video of `tokens` vision tokens becomes.
    video_tokens: Callable[[ConnectorConfig, int], int]
    # True when that count depends on the video (one output per vision token): batches then carry per-video counts.
    variable_tokens: bool = False
    # Raises ValueError for a config this kind cannot build.
    validate: Callable[[ConnectorConfig], None] = lambda cfg: None
