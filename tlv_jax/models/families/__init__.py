"""The decoder families, looked up by name: the one place that knows which families exist.

Adding a family: a module next to these that ends with a `FAMILY = Family(...)`, and one line in `FAMILIES`.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from tlv_jax.config import LLMConfig
from tlv_jax.models.decoder import Decoder
from tlv_jax.models.families import phi, qwen2, qwen3
from tlv_jax.models.families.family import Family, rope_parameter

FAMILIES: dict[str, Family] = {f.name: f for f in (qwen2.FAMILY, phi.FAMILY, qwen3.FAMILY)}


def get(name: str) -> Family:
    """The family called `name`; an unknown name is an error listing the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown LLM family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def for_hf_config(d: dict[str, Any]) -> Family:
    """The family of an HF config dict (by `model_type` or `architectures`)."""
    for family in FAMILIES.values():
        if family.matches(d):
            return family
    raise ValueError(f"unsupported LLM config: model_type={d.get('model_type', '')!r} "
                     f"architectures={d.get('architectures')!r} (known: {', '.join(sorted(FAMILIES))})")


def config_from_hf(d: dict[str, Any], **overrides: Any) -> LLMConfig:
    """An `LLMConfig` from an HF config dict: the fields every family shares, then the family's own."""
    family = for_hf_config(d)
    heads, hidden = d["num_attention_heads"], d["hidden_size"]
    kw: dict[str, Any] = dict(
        family=family.name,
        vocab_size=d["vocab_size"],
        hidden_size=hidden,
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or hidden // heads,
        rope_theta=float(rope_parameter(d, "rope_theta", 10000.0)),
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        bos_token_id=_first_id(d.get("bos_token_id")),
        eos_token_id=_first_id(d.get("eos_token_id")),
        **family.config_from_hf(d),
    )
    kw.update(overrides)
    return LLMConfig(**kw)


def config_to_hf(cfg: LLMConfig) -> dict[str, Any]:
    """The HF config dict of an `LLMConfig` (what `config_from_hf` reads back to the same config)."""
    family = get(cfg.family)
    return {
        "model_type": family.model_type,
        "architectures": [family.architecture],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "hidden_act": cfg.hidden_act,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        **({"head_dim": cfg.head_dim} if cfg.head_dim * cfg.num_heads != cfg.hidden_size else {}),
        **family.config_to_hf(cfg),
    }


def build_decoder(cfg: LLMConfig, *, rngs: nnx.Rngs) -> Decoder:
    """The decoder of `cfg.family`, built from `cfg` alone."""
    return get(cfg.family).decoder(cfg, rngs=rngs)


def _first_id(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return int(v[0]) if v else None
    return None if v is None else int(v)
