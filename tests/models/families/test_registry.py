"""What every family shares: looked up by name or by an HF config, unknown names listed, its HF config mapping
read back to the same config, its key table covering its decoder exactly, and its presets resolvable."""

from __future__ import annotations

import dataclasses

import pytest

from tlv_jax.convert.layouts import backbone_spec
from tlv_jax.data.templates import get_template
from tlv_jax.models import families
from tlv_jax.presets import resolve


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown LLM family 'llama'; expected one of \[.*'phi'.*'qwen2'.*\]"):
        families.get("llama")
    with pytest.raises(ValueError, match="unsupported LLM config: model_type='llama'"):
        families.config_from_hf({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_every_preset_reads_back_through_the_hf_mapping(name):
    family = families.get(name)
    assert family.presets, f"{name} has no presets for the planner"
    for preset, hf in family.presets.items():
        cfg = families.config_from_hf(hf)
        assert cfg.family == name and family.matches(hf)
        assert families.config_from_hf(families.config_to_hf(cfg)) == cfg
        assert families.config_from_hf(resolve(f"checkpoints/{preset}")) == cfg


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
@pytest.mark.parametrize("tied", [True, False])
def test_key_table_covers_the_decoder_exactly(name, tied):
    """`backbone_spec` pairs the table with `nnx.eval_shape` of the decoder and refuses any difference."""
    hf = next(iter(families.get(name).presets.values()))
    cfg = dataclasses.replace(families.config_from_hf(hf), num_layers=2, vocab_size=64, tie_word_embeddings=tied)
    spec = backbone_spec("llm", cfg)
    assert len({e.hf for e in spec.entries}) == len(spec.entries) == len(spec.shapes)


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_chat_template_exists(name):
    assert not get_template(families.get(name).chat_template).pretrain
