"""Qwen2 / Qwen2.5 decoder against HF `Qwen2ForCausalLM` (tied and untied) and the upstream fixture."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tlv_jax.convert.backbones import load_llm
from tlv_jax.models.families.qwen2 import Qwen2

from ..hf_decoders import (assert_greedy_matches_hf, assert_logits_match_hf, fixture_logits_error, forward,
                          hf_logits, make_hf, rel_err, right_padded)


@pytest.fixture(scope="module", params=["qwen2-tied", "qwen2-untied"])
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    return make_hf(request.param, directory), directory


def test_logits_match_hf(checkpoint):
    hf, directory = checkpoint
    model = assert_logits_match_hf(hf, directory)
    assert isinstance(model, Qwen2)
    # tied -> logits through the embedding table, untied -> a bias-free lm_head
    assert (model.lm_head is None) == hf.config.tie_word_embeddings
    if model.lm_head is not None:
        assert model.lm_head.bias is None


def test_greedy_matches_hf_generate(checkpoint):
    assert_greedy_matches_hf(*checkpoint)


def test_tied_checkpoint_with_duplicate_lm_head_loads(tmp_path):
    """Some tied checkpoints still carry lm_head.weight (a copy of the embedding); it is accepted and unused."""
    hf = make_hf("qwen2-tied", tmp_path / "hf")
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    assert "lm_head.weight" not in tensors
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    (tmp_path / "dup").mkdir()
    save_file(tensors, tmp_path / "dup" / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "dup" / "config.json")
    assert json.loads((tmp_path / "dup" / "config.json").read_text())["tie_word_embeddings"] is True

    model = load_llm(tmp_path / "dup")
    ids, mask = right_padded([5, 4])
    got = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    assert rel_err(got[mask], hf_logits(hf, ids, mask)[mask]) <= 1e-4


def test_upstream_fixture_logits(fixtures_dir):
    """Feeding the spliced `inputs_embeds` of the original TinyLLaVA-Video run reproduces its logits."""
    single, batch = fixture_logits_error(fixtures_dir, "qwen2-group-f16")
    assert single <= 1e-4
    assert batch <= 1e-4
