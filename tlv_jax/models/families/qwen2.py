"""Qwen2 / Qwen2.5 (HF `Qwen2ForCausalLM`): pre-RMSNorm blocks, GQA with q/k/v bias, RoPE, SwiGLU MLP, tied or
untied lm_head."""

from __future__ import annotations

from typing import Any, Optional

import jax
from flax import nnx

from tlv_jax.config import LLMConfig, to_dtype
from tlv_jax.convert.rules import Rule, dense
from tlv_jax.models.decoder import CausalSelfAttention, Decoder, Rope, activation
from tlv_jax.models.families.family import Family
from tlv_jax.models.layers.attention_mask import AttentionMask
from tlv_jax.models.layers.kv_cache import KVCache
from tlv_jax.models.layers.linear import Dense
from tlv_jax.models.layers.norms import RMSNorm


class SwiGLU(nnx.Module):
    """down(act(gate(x)) * up(x)), no biases."""

    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs):
        d, m, dtype = cfg.hidden_size, cfg.intermediate_size, to_dtype(cfg.dtype)
        self.gate = Dense(d, m, ("embed", "mlp"), use_bias=False, dtype=dtype, rngs=rngs)
        self.up = Dense(d, m, ("embed", "mlp"), use_bias=False, dtype=dtype, rngs=rngs)
        self.down = Dense(m, d, ("mlp", "embed"), use_bias=False, dtype=dtype, rngs=rngs)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(self.act(self.gate(x)) * self.up(x))


class Qwen2Block(nnx.Module):
    """x + attn(norm(x)), then + mlp(norm(.)). `qk_norm` and the q/k/v bias are what Qwen3 changes."""

    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs, qkv_bias: bool = True,
                 qk_norm: Optional[type[nnx.Module]] = None):
        dtype = to_dtype(cfg.dtype)
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, "embed", dtype=dtype)
        self.attn = CausalSelfAttention(cfg, qkv_bias=qkv_bias, out_bias=False, qk_norm=qk_norm, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, "embed", dtype=dtype)
        self.mlp = SwiGLU(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, rope: Rope, mask: AttentionMask, cache: Optional[KVCache] = None,
                 layer: int = 0) -> tuple[jax.Array, Optional[KVCache]]:
        attn, cache = self.attn(self.input_norm(x), rope, mask, cache, layer)
        x = x + attn
        return x + self.mlp(self.post_attn_norm(x)), cache


class Qwen2(Decoder):
    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, block=Qwen2Block, norm=RMSNorm, lm_head_bias=False, rngs=rngs)


def config_from_hf(d: dict[str, Any]) -> dict[str, Any]:
    if d.get("use_sliding_window"):
        raise ValueError("qwen2 config with use_sliding_window=true is not supported")
    return dict(norm_eps=d.get("rms_norm_eps", 1e-6), hidden_act=d.get("hidden_act", "silu"),
                tie_word_embeddings=d.get("tie_word_embeddings", False), partial_rotary_factor=1.0)


def config_to_hf(cfg: LLMConfig) -> dict[str, Any]:
    return dict(rms_norm_eps=cfg.norm_eps, use_sliding_window=False, sliding_window=None,
                max_window_layers=cfg.num_layers)


def key_rules(cfg: LLMConfig, *, qkv_bias: bool = True) -> list[Rule]:
    """Keys of `Qwen2ForCausalLM`; Qwen3 reuses them with `qkv_bias=False` plus its q/k norms."""
    lp, ours = "model.layers.{i}.", "layers.{i}."
    rules = [
        Rule("model.embed_tokens.weight", "embed.embedding"),
        Rule(lp + "input_layernorm.weight", ours + "input_norm.scale"),
        *dense(lp + "self_attn.q_proj", ours + "attn.q", bias=qkv_bias),
        *dense(lp + "self_attn.k_proj", ours + "attn.k", bias=qkv_bias),
        *dense(lp + "self_attn.v_proj", ours + "attn.v", bias=qkv_bias),
        *dense(lp + "self_attn.o_proj", ours + "attn.o", bias=False),
        Rule(lp + "post_attention_layernorm.weight", ours + "post_attn_norm.scale"),
        *dense(lp + "mlp.gate_proj", ours + "mlp.gate", bias=False),
        *dense(lp + "mlp.up_proj", ours + "mlp.up", bias=False),
        *dense(lp + "mlp.down_proj", ours + "mlp.down", bias=False),
        Rule("model.norm.weight", "final_norm.scale"),
    ]
    if not cfg.tie_word_embeddings:
        rules += dense("lm_head", "lm_head", bias=False)
    return rules


def _preset(**kw: Any) -> dict[str, Any]:
    return dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936, num_key_value_heads=2,
                rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643,
                eos_token_id=151643, hidden_act="silu", **kw)


FAMILY = Family(
    name="qwen2", model_type="qwen2", architecture="Qwen2ForCausalLM", decoder=Qwen2,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, key_rules=key_rules, mlp_matrices=3,
    chat_template="qwen2_base",
    presets={
        "Qwen2.5-3B": _preset(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                              num_attention_heads=16, max_position_embeddings=32768),
        "Qwen2.5-1.5B": _preset(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                num_attention_heads=12, max_position_embeddings=131072),
        "Qwen2.5-0.5B": _preset(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                num_attention_heads=14, max_position_embeddings=32768),
    },
)
