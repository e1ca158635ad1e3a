"""What a decoder family is: everything the rest of the code needs to know about one LLM architecture, in one value.

A family module (`qwen2.py`, `phi.py`, ...) defines its block and decoder class and one `Family` holding its HF
config mapping, its HF key table, its FLOPs, its chat template and its presets. `tlv_jax.models.families` maps names
to these values; nothing else switches on a family name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from tlv_jax.config import LLMConfig
from tlv_jax.convert.rules import Rule
from tlv_jax.models.decoder import Decoder


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # HF `model_type`
    architecture: str  # HF `architectures[0]`
    decoder: type[Decoder]
    # The family's own LLMConfig fields from an HF config dict (norm eps, activation, tying, rotary fraction...);
    # raises ValueError for variants it does not implement.
    config_from_hf: Callable[[dict[str, Any]], dict[str, Any]]
    # The family's own HF config fields of an LLMConfig (on top of the shared ones).
    config_to_hf: Callable[[LLMConfig], dict[str, Any]]
    # The HF key <-> parameter path table of one decoder (`{i}` = layer).
    key_rules: Callable[[LLMConfig], list[Rule]]
    # Weight matrices of one MLP, each hidden_size x intermediate_size (FLOPs per token: 2 x their weights).
    mlp_matrices: int
    # The conversation template (`tlv_jax.data.templates`) its models answer questions with.
    chat_template: str
    # Published architectures as HF config dicts, for planning runs before any weights are on disk.
    presets: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def matches(self, hf_config: dict[str, Any]) -> bool:
        """Whether an HF config dict describes this family's models."""
        archs = hf_config.get("architectures") or []
        return hf_config.get("model_type") == self.model_type or self.architecture in archs


def rope_parameter(d: dict[str, Any], name: str, default: Optional[float]) -> Optional[float]:
    """A RoPE field at the top level (transformers < 5) or nested in `rope_parameters` (transformers >= 5)."""
    value = d.get(name)
    if value is None:
        value = (d.get("rope_parameters") or {}).get(name, default)
    return value
