"""Qwen2 / Qwen2.5 decoder (HF `Qwen2ForCausalLM`): pre-RMSNorm blocks, GQA with q/k/v bias, RoPE, SwiGLU MLP,
tied or untied lm_head. Attribute names follow `tlv_jax.convert.tables.qwen2_rules`."""

from __future__ import annotations

from typing import Optional

import jax
from flax import nnx

from tlv_jax.config import LLMConfig, to_dtype
from tlv_jax.models.decoder import CausalSelfAttention, Decoder, Rope, activation
from tlv_jax.models.layers.attention import KVCache
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
    """x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs):
        dtype = to_dtype(cfg.dtype)
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, "embed", dtype=dtype)
        self.attn = CausalSelfAttention(cfg, out_bias=False, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, "embed", dtype=dtype)
        self.mlp = SwiGLU(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, rope: Rope, mask: jax.Array, cache: Optional[KVCache] = None,
                 layer: int = 0) -> tuple[jax.Array, Optional[KVCache]]:
        attn, cache = self.attn(self.input_norm(x), rope, mask, cache, layer)
        x = x + attn
        return x + self.mlp(self.post_attn_norm(x)), cache


class Qwen2(Decoder):
    family = "qwen2"

    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs, remat: Optional[str] = None):
        super().__init__(cfg, block=Qwen2Block, norm=RMSNorm, lm_head_bias=False, rngs=rngs, remat=remat)
