"""Qwen3 dense (HF `Qwen3ForCausalLM`): Qwen2's block without the q/k/v bias, plus an RMSNorm over head_dim on every
query and key head before RoPE (HF `q_norm` / `k_norm`, same eps as the other norms). head_dim is explicit in the
config and is not hidden_size / heads (0.6B: 16 heads x 128 over a hidden size of 1024).

Refused: `attention_bias=True` (it would also put a bias on o_proj, which Qwen2's block does not have), sliding-window
layers and scaled RoPE (YaRN and friends)."""

from __future__ import annotations

from typing import Any

from flax import nnx

from tlv_jax.config import LLMConfig
from tlv_jax.convert.rules import Rule
from tlv_jax.models.decoder import Decoder
from tlv_jax.models.families import qwen2
from tlv_jax.models.families.family import Family, rope_parameter
from tlv_jax.models.layers.norms import RMSNorm


class Qwen3Block(qwen2.Qwen2Block):
    """Qwen2's pre-norm block with bias-free q/k/v and per-head RMSNorm on q and k (transformers' Qwen3DecoderLayer
    has the same norm order, residuals and SwiGLU)."""

    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs, qkv_bias=False, qk_norm=RMSNorm)


class Qwen3(Decoder):
    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, block=Qwen3Block, norm=RMSNorm, lm_head_bias=False, rngs=rngs)


def _unsupported(d: dict[str, Any]) -> str | None:
    """What an HF config asks for that this module does not implement (the first such thing), or None."""
    scaling = d.get("rope_scaling") or {}  # transformers < 5; >= 5 keeps the type in `rope_parameters`
    rope_type = scaling.get("rope_type") or scaling.get("type") or rope_parameter(d, "rope_type", None)
    checks = [
        ("attention_bias=True", bool(d.get("attention_bias"))),
        ("use_sliding_window=True", bool(d.get("use_sliding_window"))),
        (f"rope_type={rope_type!r}", rope_type not in (None, "default")),
        ("no head_dim (transformers would assume 128, not hidden_size / heads)", not d.get("head_dim")),
    ]
    return next((what for what, bad in checks if bad), None)


def config_from_hf(d: dict[str, Any]) -> dict[str, Any]:
    problem = _unsupported(d)
    if problem is not None:
        raise ValueError(f"qwen3 config with {problem} is not supported")
    return qwen2.config_from_hf(d)


def config_to_hf(cfg: LLMConfig) -> dict[str, Any]:
    """head_dim always: Qwen3Config defaults it to 128 whatever hidden_size / heads is. Of the sliding-window fields
    only the switch: transformers derives the others, and an original's values are kept."""
    return dict(rms_norm_eps=cfg.norm_eps, head_dim=cfg.head_dim, attention_bias=False, use_sliding_window=False)


def key_rules(cfg: LLMConfig) -> list[Rule]:
    """Qwen2's keys without q/k/v biases, plus each layer's q_norm and k_norm scales."""
    hf, ours = "model.layers.{i}.self_attn.", "layers.{i}.attn."
    return qwen2.key_rules(cfg, qkv_bias=False) + [Rule(hf + "q_norm.weight", ours + "q_norm.scale"),
                                                   Rule(hf + "k_norm.weight", ours + "k_norm.scale")]


def _preset(**kw: Any) -> dict[str, Any]:
    """The fields the published dense Qwen3 config.json files share."""
    return dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], vocab_size=151936, num_key_value_heads=8,
                head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
                max_position_embeddings=40960, bos_token_id=151643, eos_token_id=151645, hidden_act="silu", **kw)


FAMILY = Family(
    name="qwen3", model_type="qwen3", architecture="Qwen3ForCausalLM", decoder=Qwen3,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, key_rules=key_rules, mlp_matrices=3,
    # Qwen2.5's tokenizer and special tokens: `<|endoftext|>` (151643) is every Qwen3 tokenizer's pad and the -Base
    # ones' eos, so answers end with it as in the Qwen2.5 recipes. (The post-trained checkpoints' tokenizers name
    # `<|im_end|>` as eos; with pad != eos this template's label check masks every sample, as for Qwen2.5-Instruct.)
    chat_template="qwen2_base",
    presets={
        "Qwen3-0.6B": _preset(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16),
        "Qwen3-1.7B": _preset(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16),
        "Qwen3-4B": _preset(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32),
    },
)
