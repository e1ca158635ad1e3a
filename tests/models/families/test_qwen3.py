"""Qwen3 decoder against HF `Qwen3ForCausalLM` (per-head q/k RMSNorm, no q/k/v bias, head_dim 12 != 32 / 4 heads,
tied), its HF config mapping as transformers reads it back, the variants it refuses, and the published presets."""

from __future__ import annotations

import dataclasses

import jax
import pytest
from flax import nnx
from transformers import Qwen3Config

from tlv_jax.models import families
from tlv_jax.models.families.qwen3 import Qwen3
from tlv_jax.presets import resolve
from tlv_jax.train.flops import llm_matmul_params

from ..hf_decoders import assert_greedy_matches_hf, assert_logits_match_hf, make_hf

PRESET = families.get("qwen3").presets["Qwen3-0.6B"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qwen3")
    return make_hf("qwen3", directory), directory


def test_logits_match_hf(checkpoint):
    """fp32 to 1e-5 of the logit scale (measured: ~1e-6, float32 rounding only)."""
    hf, directory = checkpoint
    model = assert_logits_match_hf(hf, directory, tol=1e-5)
    assert isinstance(model, Qwen3)
    assert model.cfg.head_dim == 12 and model.lm_head is None
    attn = model.layers[0].attn
    assert attn.q.bias is None and attn.k.bias is None and attn.v.bias is None
    assert attn.q_norm.scale.shape == attn.k_norm.scale.shape == (12,)


def test_greedy_matches_hf_generate(checkpoint):
    """With the KV cache (q/k norms before RoPE, normed keys cached): HF's tokens, per-step logits to 1e-5."""
    assert_greedy_matches_hf(*checkpoint, tol=1e-5)


@pytest.mark.parametrize("head_dim", [8, 12], ids=["hidden_over_heads", "explicit"])
def test_written_config_reads_back_in_transformers(checkpoint, head_dim):
    """head_dim is written even when it is hidden_size / heads: Qwen3Config would otherwise take 128."""
    hf, _ = checkpoint
    cfg = dataclasses.replace(families.config_from_hf(hf.config.to_dict()), head_dim=head_dim)
    back = Qwen3Config.from_dict(families.config_to_hf(cfg))
    assert back.head_dim == head_dim and not back.attention_bias and back.layer_types == ["full_attention"] * 2
    assert families.config_from_hf(back.to_dict()) == cfg


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}


@pytest.mark.parametrize("change, message", [
    ({"attention_bias": True}, "attention_bias=True"),
    ({"use_sliding_window": True, "sliding_window": 4096}, "use_sliding_window=True"),
    ({"rope_scaling": YARN}, "rope_type='yarn'"),  # config.json as transformers < 5 writes it
    ({"rope_parameters": {**YARN, "rope_theta": 1e6}}, "rope_type='yarn'"),  # transformers >= 5
    ({"head_dim": None}, "no head_dim"),
], ids=["attention_bias", "sliding_window", "yarn", "yarn_v5", "no_head_dim"])
def test_unimplemented_variants_are_refused(change, message):
    with pytest.raises(ValueError, match=f"qwen3 config with {message}.* is not supported"):
        families.config_from_hf({**PRESET, **change})


def test_default_rope_is_accepted_however_it_is_written():
    for change in ({"rope_scaling": None}, {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}):
        assert families.config_from_hf({**PRESET, **change}) == families.config_from_hf(PRESET)


@pytest.mark.parametrize("name, non_embedding_billions, digits", [
    ("Qwen3-0.6B", 0.44, 2), ("Qwen3-1.7B", 1.4, 1), ("Qwen3-4B", 3.6, 1)])
def test_planner_presets_have_the_published_sizes(name, non_embedding_billions, digits):
    """`checkpoints/<name>` resolves before any weights are there; the decoder it describes has the model card's
    non-embedding parameter count, and the FLOPs count (`mlp_matrices`) multiplies every one of its kernels."""
    cfg = families.config_from_hf(resolve(f"checkpoints/{name}"))
    assert cfg.family == "qwen3" and cfg.tie_word_embeddings and cfg.head_dim == 128
    model = nnx.eval_shape(lambda: families.build_decoder(cfg, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    total = sum(x.size for x in jax.tree.leaves(params))
    assert round((total - cfg.vocab_size * cfg.hidden_size) / 1e9, digits) == non_embedding_billions
    kernels = sum(x.size for path, x in nnx.to_flat_state(params) if path[-1] == "kernel")
    assert llm_matmul_params(cfg) == kernels + cfg.vocab_size * cfg.hidden_size  # + the tied output projection
