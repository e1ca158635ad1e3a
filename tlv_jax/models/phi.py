"""Phi-2 decoder (HF `PhiForCausalLM`): one LayerNorm feeding attention and MLP in parallel
(`x + attn(ln(x)) + mlp(ln(x))`), partial rotary (first `head_dim * partial_rotary_factor` features), gelu_new MLP,
biases everywhere including lm_head. Attribute names follow `tlv_jax.convert.tables.phi_rules`.
(`qk_layernorm=True` configs are refused by `LLMConfig.from_hf`.)"""

from __future__ import annotations

from typing import Optional

import jax
from flax import nnx

from tlv_jax.config import LLMConfig, to_dtype
from tlv_jax.models.decoder import CausalSelfAttention, Decoder, Rope, activation
from tlv_jax.models.layers.attention import KVCache
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
        self.attn = CausalSelfAttention(cfg, out_bias=True, rngs=rngs)
        self.mlp = PhiMLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, rope: Rope, mask: jax.Array, cache: Optional[KVCache] = None,
                 layer: int = 0) -> tuple[jax.Array, Optional[KVCache]]:
        h = self.input_norm(x)
        attn, cache = self.attn(h, rope, mask, cache, layer)
        return attn + self.mlp(h) + x, cache  # HF's summation order


class Phi(Decoder):
    family = "phi"

    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs, remat: Optional[str] = None):
        super().__init__(cfg, block=PhiBlock, norm=LayerNorm, lm_head_bias=True, rngs=rngs, remat=remat)
