"""Shared by the decoder tests: tiny random HF decoders saved to disk, right-padded batches, the fixture loader and
the error measure. Weights are perturbed (norm scales 1+N(0,.1), biases N(0,.1), matrices N(0,1/fan_in)) so that
a wrong mapping cannot hide behind ones and zeros."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from transformers import (PhiConfig, PhiForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

from tlv_jax.convert.apply import load_into
from tlv_jax.convert.safetensors_io import open_checkpoint
from tlv_jax.models import families
from tlv_jax.models.decoder import Decoder
from tlv_jax.convert.backbones import abstract, llm_entries, read_config
from tlv_jax.models.layers.kv_cache import KVCache

VOCAB = 97


def hf_config(kind: str) -> Qwen2Config | Qwen3Config | PhiConfig:
    """'qwen2-tied', 'qwen2-untied', 'qwen3' (tied like the small Qwen3s, head_dim 12 != 32 / 4 heads) or 'phi'
    (untied, lm_head bias, partial rotary 0.4 of head_dim 20 -> 8)."""
    common = dict(vocab_size=VOCAB, num_hidden_layers=2, max_position_embeddings=128, attn_implementation="eager",
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if kind.startswith("qwen2"):
        return Qwen2Config(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                           rope_theta=1e6, tie_word_embeddings=kind == "qwen2-tied", **common)
    if kind == "qwen3":
        return Qwen3Config(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=12, rope_theta=1e6, tie_word_embeddings=True, **common)
    if kind == "phi":
        return PhiConfig(hidden_size=40, intermediate_size=64, num_attention_heads=2, partial_rotary_factor=0.4,
                         tie_word_embeddings=False, **common)
    raise ValueError(kind)


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:
                is_scale = name.endswith("weight")  # 1-D weights are norm scales
                p.copy_((1.0 if is_scale else 0.0) + 0.1 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)


def make_hf(kind: str, directory: Path, seed: int = 0) -> torch.nn.Module:
    """Builds, perturbs and `save_pretrained`s a tiny HF decoder; returns it in eval mode."""
    cfg = hf_config(kind)
    model = {"qwen2": Qwen2ForCausalLM, "qwen3": Qwen3ForCausalLM, "phi": PhiForCausalLM}[cfg.model_type](cfg)
    perturb(model, seed)
    model.eval()
    model.save_pretrained(directory)
    return model


def right_padded(lengths: list[int], seed: int = 0, pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random ids (B, T) and a right-padding mask; padding ids are random too (they must not matter)."""
    t = pad_to or max(lengths)
    ids = np.random.RandomState(seed).randint(0, VOCAB, (len(lengths), t))
    mask = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
    return ids, mask


def hf_logits(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64))).logits.float().numpy()


@nnx.jit
def forward(model: Decoder, ids: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """`model.forward`, compiled (eager op-by-op dispatch is what makes tiny-model tests slow)."""
    return model.forward(ids, mask)


@nnx.jit
def run(model: Decoder, inputs_embeds: jax.Array, positions: jax.Array, attention_mask: Optional[jax.Array] = None,
        cache: Optional[KVCache] = None) -> tuple[jax.Array, jax.Array, Optional[KVCache]]:
    """`model(...)` compiled; returns (hidden, logits, cache)."""
    hidden, cache = model(inputs_embeds, positions=positions, attention_mask=attention_mask, cache=cache)
    return hidden, model.logits(hidden), cache


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| relative to the output scale max |ref|."""
    got, ref = np.asarray(got, np.float32), np.asarray(ref, np.float32)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def load_fixture_llm(finetune_dir: Path) -> Decoder:
    """The LLM of an upstream TinyLLaVA-Video checkpoint: config `text_config`, tensors under `language_model.`."""
    cfg = families.config_from_hf(read_config(finetune_dir)["text_config"])
    model = abstract(lambda: families.build_decoder(cfg, rngs=nnx.Rngs(0)))
    load_into(model, open_checkpoint(finetune_dir), llm_entries(cfg, hf_prefix="language_model."), str(finetune_dir),
              ignore_unexpected=("vision_tower.", "connector."))
    return model


def fixture_logits_error(fixtures_dir: Path, name: str) -> tuple[float, float]:
    """Relative error of our logits from the fixture's `inputs_embeds` (single sample, then the padded batch),
    over real positions only."""
    model = load_fixture_llm(fixtures_dir / name / "finetune")
    ref = np.load(fixtures_dir / name / "reference.npz")
    errors = []
    for prefix in ("", "batch_"):
        mask = ref[prefix + "llm_attention_mask"]
        positions = np.where(mask, np.cumsum(mask, -1) - 1, 0)
        _, logits, _ = run(model, jnp.asarray(ref[prefix + "inputs_embeds"]), jnp.asarray(positions),
                           jnp.asarray(mask))
        errors.append(rel_err(np.asarray(logits)[mask], ref[prefix + "logits"][mask]))
    return errors[0], errors[1]


def assert_logits_match_hf(hf: torch.nn.Module, directory: Path, tol: float = 1e-4) -> Decoder:
    """fp32 logits of a right-padded batch of 3 equal HF eager's on every real position (<= `tol` relative)."""
    from tlv_jax.convert.backbones import load_llm

    model = load_llm(directory)
    ids, mask = right_padded([11, 6, 9], seed=1)
    got = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    ref = hf_logits(hf, ids, mask)
    assert got.shape == ref.shape
    assert rel_err(got[mask], ref[mask]) <= tol
    return model


def assert_greedy_matches_hf(hf: torch.nn.Module, directory: Path, max_new_tokens: int = 7,
                             tol: float = 1e-4) -> None:
    """Our cached greedy decode of a right-padded batch gives HF `generate(do_sample=False)`'s tokens and per-step
    logits (<= `tol` relative), HF running each prompt alone (unpadded)."""
    from tlv_jax.models.decoder import greedy_generate
    from tlv_jax.convert.backbones import load_llm

    model = load_llm(directory)
    lengths = [8, 3, 12]
    ids, mask = right_padded(lengths, seed=2)
    out = greedy_generate(model, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens, return_logits=True)
    for b, n in enumerate(lengths):
        with torch.no_grad():
            ref = hf.generate(torch.tensor(ids[b:b + 1, :n]), do_sample=False, max_new_tokens=max_new_tokens,
                              output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        np.testing.assert_array_equal(np.asarray(out.tokens[b]), ref.sequences[0, n:].numpy())
        ref_logits = torch.cat(ref.logits).numpy()
        assert rel_err(np.asarray(out.logits[b]), ref_logits) <= tol
