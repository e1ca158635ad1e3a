"""What every decoder family shares: the causal self-attention (RoPE + GQA + KV cache, optional q/k norms), the
trunk that embeds, runs the blocks, normalises and projects to the vocabulary, and a jitted greedy decode.

A family (`tlv_jax.models.families`) only defines its block (norm placement, MLP) and picks its norm class and
lm_head bias; everything else, the interface other code calls included, lives in `Decoder` here.

Caching: prompts are right padded. A prefill writes the whole padded block at each sample's `cache.lengths[b]`
and advances by the real token count, so the next decode step overwrites the first padding slot.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from tlv_jax.config import LLMConfig, to_dtype
from tlv_jax.models.layers.attention import AttentionMask, attention
from tlv_jax.models.layers.kv_cache import KVCache
from tlv_jax.models.layers.linear import Dense, Embed
from tlv_jax.models.layers.rope import apply_rope, rope_cos_sin

Rope = tuple[jax.Array, jax.Array]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),  # HF NewGELU = tanh approximation
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
}

# `LLMConfig.remat` values: what a block keeps for the backward pass (everything else is recomputed).
REMAT_POLICIES: dict[str, Optional[Callable[..., bool]]] = {
    "full": None,  # keep nothing but the block input
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """0..len-1 over the real tokens of each row (right or left padding), 0 on padding."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.where(mask > 0, jnp.cumsum(mask, axis=-1) - 1, 0)


class CausalSelfAttention(nnx.Module):
    """q/k/v and o projections, optional per-head q/k norms (`qk_norm`, a norm class normalising head_dim before RoPE),
    rotate-half RoPE on the first `cfg.rotary_dim` features of every head, grouped-query attention."""

    def __init__(self, cfg: LLMConfig, *, qkv_bias: bool, out_bias: bool, rngs: nnx.Rngs,
                 qk_norm: Optional[type[nnx.Module]] = None):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dtype = to_dtype(cfg.dtype)
        self.q = Dense(d, n * h, ("embed", "heads"), use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.k = Dense(d, k * h, ("embed", "kv_heads"), use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.v = Dense(d, k * h, ("embed", "kv_heads"), use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.o = Dense(n * h, d, ("heads", "embed"), use_bias=out_bias, dtype=dtype, rngs=rngs)
        self.q_norm = None if qk_norm is None else qk_norm(h, cfg.norm_eps, "head_dim", dtype=dtype)
        self.k_norm = None if qk_norm is None else qk_norm(h, cfg.norm_eps, "head_dim", dtype=dtype)
        self.num_heads, self.num_kv_heads, self.head_dim = n, k, h
        self.attn_impl = cfg.attn_impl

    def __call__(self, x: jax.Array, rope: Rope, mask: AttentionMask, cache: Optional[KVCache] = None,
                 layer: int = 0) -> tuple[jax.Array, Optional[KVCache]]:
        """x (B, T, D); with a cache, this layer's new keys/values are written and attention sees the whole cache
        (`mask` then places the queries at the cache's offsets)."""
        b, t, _ = x.shape
        q = self.q(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        v = self.v(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if cache is not None:
            cache, k, v = cache.update(layer, k, v)
        out = attention(q, k, v, mask, impl=self.attn_impl)
        return self.o(out.reshape(b, t, self.num_heads * self.head_dim)), cache


def _run_block(block: nnx.Module, x: jax.Array, rope: Rope, mask: AttentionMask) -> jax.Array:
    return block(x, rope, mask)[0]


class Decoder(nnx.Module):
    """The trunk every family shares. A family subclasses it and passes its block class (called as
    `block(x, rope, mask, cache, layer) -> (x, cache)`), its norm class and whether lm_head has a bias.

    `cfg.remat` (a key of REMAT_POLICIES, or None) wraps every block in `jax.checkpoint` when no cache is used.
    """

    def __init__(self, cfg: LLMConfig, *, block: type[nnx.Module], norm: type[nnx.Module], lm_head_bias: bool,
                 rngs: nnx.Rngs):
        if cfg.remat is not None and cfg.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {cfg.remat!r}; expected one of {sorted(REMAT_POLICIES)} or None")
        dtype = to_dtype(cfg.dtype)
        self.cfg = cfg
        self.dtype = dtype
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = norm(cfg.hidden_size, cfg.norm_eps, "embed", dtype=dtype)
        self.lm_head = None if cfg.tie_word_embeddings else Dense(
            cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), use_bias=lm_head_bias, dtype=dtype, rngs=rngs)

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        """(B, T) token ids -> (B, T, D) in the compute dtype."""
        return self.embed(ids)

    def __call__(self, inputs_embeds: jax.Array, *, positions: jax.Array, attention_mask: Optional[jax.Array] = None,
                 cache: Optional[KVCache] = None, segment_ids: Optional[jax.Array] = None
                 ) -> tuple[jax.Array, Optional[KVCache]]:
        """Returns the final-normed hidden states (B, T, D) and the cache advanced by each sample's real tokens.
        `segment_ids` (B, T) (packed rows, no cache): a token only sees earlier tokens of its own segment."""
        b, t, _ = inputs_embeds.shape
        x = inputs_embeds.astype(self.dtype)
        rope = rope_cos_sin(positions, self.cfg.rotary_dim, self.cfg.rope_theta)
        if cache is None:
            valid = None if attention_mask is None else attention_mask.astype(bool)
            mask = AttentionMask(causal=True, key_valid=valid, q_segments=segment_ids, kv_segments=segment_ids)
        else:
            n_new = (jnp.full((b,), t, jnp.int32) if attention_mask is None
                     else attention_mask.astype(jnp.int32).sum(-1))
            mask = AttentionMask(causal=True, offsets=cache.lengths, key_valid=cache.key_valid(n_new))
        if cache is None and self.cfg.remat is not None:
            run = nnx.remat(_run_block, policy=REMAT_POLICIES[self.cfg.remat])
            for block in self.layers:
                x = run(block, x, rope, mask)
        else:
            for i, block in enumerate(self.layers):
                x, cache = block(x, rope, mask, cache, i)
        hidden = self.final_norm(x)
        return hidden, (None if cache is None else cache.advance(n_new))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """(..., D) -> (..., V) in the compute dtype: the tied embedding or lm_head (with its bias for Phi)."""
        return self.embed.attend(hidden) if self.lm_head is None else self.lm_head(hidden)

    def forward(self, ids: jax.Array, attention_mask: Optional[jax.Array] = None,
                positions: Optional[jax.Array] = None) -> jax.Array:
        """Token ids -> logits (B, T, V); positions default to 0..len-1 over the mask's real tokens."""
        if positions is None:
            positions = default_positions(jnp.ones(ids.shape, bool) if attention_mask is None else attention_mask)
        hidden, _ = self(self.embed_tokens(ids), positions=positions, attention_mask=attention_mask)
        return self.logits(hidden)

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> KVCache:
        c = self.cfg
        return KVCache.init(c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim,
                            self.dtype if dtype is None else to_dtype(dtype))


class Generation(NamedTuple):
    tokens: jax.Array  # (B, N) int32
    logits: Optional[jax.Array]  # (B, N, V): the logits each token was picked from, if asked for


def greedy_generate(model: Decoder, prompt: jax.Array, attention_mask: Optional[jax.Array] = None,
                    max_new_tokens: int = 16, *, eos_token_id: Optional[int] = None,
                    return_logits: bool = False) -> Generation:
    """Greedy decoding with the KV cache: one prefill of the right-padded prompt, then one token per step.

    `prompt` is token ids (B, T) or input embeddings (B, T, D). After `eos_token_id` a sample keeps emitting it
    (the way HF pads finished rows). Always runs `max_new_tokens` steps.
    """
    if attention_mask is None:
        attention_mask = jnp.ones(prompt.shape[:2], bool)
    graphdef, state = nnx.split(model)
    return _greedy(graphdef, state, prompt, attention_mask, max_new_tokens=max_new_tokens,
                   eos_token_id=eos_token_id, return_logits=return_logits)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos_token_id", "return_logits"))
def _greedy(graphdef: Any, state: Any, prompt: jax.Array, attention_mask: jax.Array, *, max_new_tokens: int,
            eos_token_id: Optional[int], return_logits: bool) -> Generation:
    model = nnx.merge(graphdef, state)
    b, t = attention_mask.shape
    embeds = model.embed_tokens(prompt) if prompt.ndim == 2 else prompt
    cache = model.init_cache(b, t + max_new_tokens)
    hidden, cache = model(embeds, positions=default_positions(attention_mask), attention_mask=attention_mask,
                          cache=cache)
    last = jnp.take_along_axis(hidden, (cache.lengths - 1)[:, None, None], axis=1)  # each row's last real token
    logits = model.logits(last)[:, 0]

    def pick(logits: jax.Array, done: jax.Array) -> tuple[jax.Array, jax.Array]:
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if eos_token_id is None:
            return tok, done
        tok = jnp.where(done, eos_token_id, tok)
        return tok, done | (tok == eos_token_id)

    def step(carry: tuple, _: None) -> tuple[tuple, tuple]:
        cache, tok, done = carry
        hidden, cache = model(model.embed_tokens(tok[:, None]), positions=cache.lengths[:, None], cache=cache)
        logits = model.logits(hidden)[:, 0]
        tok, done = pick(logits, done)
        return (cache, tok, done), (tok, logits if return_logits else None)

    tok0, done = pick(logits, jnp.zeros((b,), bool))
    _, (toks, step_logits) = jax.lax.scan(step, (cache, tok0, done), length=max_new_tokens - 1)
    tokens = jnp.concatenate([tok0[:, None], toks.T], axis=1)
    if not return_logits:
        return Generation(tokens, None)
    return Generation(tokens, jnp.concatenate([logits[:, None], jnp.moveaxis(step_logits, 0, 1)], axis=1))
