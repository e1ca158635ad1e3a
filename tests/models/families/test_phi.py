"""Phi-2 decoder against HF `PhiForCausalLM` (untied lm_head with bias, partial rotary 0.4) and the upstream fixture."""

from __future__ import annotations

import pytest

from tlv_jax.models import families
from tlv_jax.models.families.phi import Phi

from ..hf_decoders import assert_greedy_matches_hf, assert_logits_match_hf, fixture_logits_error, make_hf


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("phi")
    return make_hf("phi", directory), directory


def test_logits_match_hf(checkpoint):
    hf, directory = checkpoint
    model = assert_logits_match_hf(hf, directory)
    assert isinstance(model, Phi)
    assert model.cfg.rotary_dim == 8  # int(20 * 0.4): only part of each head rotates
    assert model.lm_head is not None and model.lm_head.bias is not None


def test_greedy_matches_hf_generate(checkpoint):
    assert_greedy_matches_hf(*checkpoint)


def test_qk_layernorm_is_refused(checkpoint):
    hf, _ = checkpoint
    d = hf.config.to_dict() | {"qk_layernorm": True}
    with pytest.raises(ValueError, match="qk_layernorm"):
        families.config_from_hf(d)


def test_upstream_fixture_logits(fixtures_dir):
    """phi-naive-f4: head_dim 16 -> rotary_dim 6; the spliced `inputs_embeds` reproduce the original logits."""
    single, batch = fixture_logits_error(fixtures_dir, "phi-naive-f4")
    assert single <= 1e-4
    assert batch <= 1e-4
