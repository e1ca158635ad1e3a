"""Phi-2 (HF `PhiForCausalLM`): one LayerNorm feeding attention and MLP in parallel (`x + attn(ln(x)) + mlp(ln(x))`),
partial rotary (first `head_dim * partial_rotary_factor` features), gelu_new MLP, biases everywhere including
lm_head. Configs with `qk_layernorm=True` are refused."""

from __future__ import annotations

from typing import Any, Optional

import jax
from flax import nnx

from tlv_jax.config import LLMConfig, to_dtype
from tlv_jax.convert.rules import Rule, dense, layernorm
from tlv_jax.models.decoder import CausalSelfAttention, Decoder, Rope, activation
from tlv_jax.models.families.family import Family, rope_parameter
from tlv_jax.models.layers.attention_mask import AttentionMask
from tlv_jax.models.layers.kv_cache import KVCache
from tlv_jax.models.layers.linear import Dense
from tlv_jax.models.layers.norms import LayerNorm


class PhiMLP(nnx.Module):
    """fc2(act(fc1(x))), with biases."""

    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs):
        d, m, dtype = cfg.hidden_size, cfg.intermediate_size, to_dtype(cfg.dtype)
        self.fc1 = Dense(d, m, ("embed", "mlp"), use_bias=True, dtype=dtype, rngs=rngs)
        self.fc2 = Dense(m, d, ("mlp", "embed"), use_bias=True, dtype=dtype, rngs=rngs)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class PhiBlock(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs):
        self.input_norm = LayerNorm(cfg.hidden_size, cfg.norm_eps, "embed", dtype=to_dtype(cfg.dtype))
        self.attn = CausalSelfAttention(cfg, qkv_bias=True, out_bias=True, rngs=rngs)
        self.mlp = PhiMLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, rope: Rope, mask: AttentionMask, cache: Optional[KVCache] = None,
                 layer: int = 0) -> tuple[jax.Array, Optional[KVCache]]:
        h = self.input_norm(x)
        attn, cache = self.attn(h, rope, mask, cache, layer)
        return attn + self.mlp(h) + x, cache  # HF's summation order


class Phi(Decoder):
    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, block=PhiBlock, norm=LayerNorm, lm_head_bias=True, rngs=rngs)


def config_from_hf(d: dict[str, Any]) -> dict[str, Any]:
    if d.get("qk_layernorm"):
        raise ValueError("phi config with qk_layernorm=True is not supported")
    return dict(norm_eps=d.get("layer_norm_eps", 1e-5), hidden_act=d.get("hidden_act", "gelu_new"),
                tie_word_embeddings=d.get("tie_word_embeddings", False),
                partial_rotary_factor=float(rope_parameter(d, "partial_rotary_factor", 0.5)))


def config_to_hf(cfg: LLMConfig) -> dict[str, Any]:
    return dict(layer_norm_eps=cfg.norm_eps, partial_rotary_factor=cfg.partial_rotary_factor)


def key_rules(cfg: LLMConfig) -> list[Rule]:
    lp, ours = "model.layers.{i}.", "layers.{i}."
    rules = [
        Rule("model.embed_tokens.weight", "embed.embedding"),
        *layernorm(lp + "input_layernorm", ours + "input_norm"),
        *dense(lp + "self_attn.q_proj", ours + "attn.q"),
        *dense(lp + "self_attn.k_proj", ours + "attn.k"),
        *dense(lp + "self_attn.v_proj", ours + "attn.v"),
        *dense(lp + "self_attn.dense", ours + "attn.o"),
        *dense(lp + "mlp.fc1", ours + "mlp.fc1"),
        *dense(lp + "mlp.fc2", ours + "mlp.fc2"),
        *layernorm("model.final_layernorm", "final_norm"),
    ]
    if not cfg.tie_word_embeddings:
        rules += dense("lm_head", "lm_head")
    return rules


FAMILY = Family(
    name="phi", model_type="phi", architecture="PhiForCausalLM", decoder=Phi,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, key_rules=key_rules, mlp_matrices=2,
    chat_template="phi",
    presets={
        "phi-2": dict(
            model_type="phi", architectures=["PhiForCausalLM"], vocab_size=51200, hidden_size=2560,
            intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
            partial_rotary_factor=0.4, rope_theta=10000.0, layer_norm_eps=1e-5, tie_word_embeddings=False,
            max_position_embeddings=2048, bos_token_id=50256, eos_token_id=50256, hidden_act="gelu_new"),
    },
)
