"""PEFT adapters both ways, against `peft` itself on tiny transformers decoders: an adapter we write loads with
`PeftModel.from_pretrained` onto `Qwen2ForCausalLM` / `PhiForCausalLM` and gives our adapted logits; an adapter
`peft` writes, applied by `convert_weights.py apply-peft` (merged, or kept as adapters), gives peft's logits."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from peft import LoraConfig, PeftModel, get_peft_model

import convert_weights
from tlv_jax.convert import peft_io
from tlv_jax.convert.backbones import load_llm
from tlv_jax.convert.safetensors_io import CheckpointError
from tlv_jax.lora import adapters, peft_apply
from tlv_jax.lora.spec import LoraSpec

from ..models.hf_decoders import forward, hf_logits, make_hf, rel_err, right_padded

TARGETS = {"qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]}


def randomize_adapters(model, seed=0):
    """Non-zero B (a fresh adapter is the base exactly), on the scale of a trained one."""
    state = nnx.state(model, nnx.LoRAParam)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda x: 0.2 * jax.random.normal(next(keys), x.shape, x.dtype), state))


@pytest.mark.parametrize("kind", ["qwen2-untied", "phi"])
def test_our_adapter_loads_in_peft(tmp_path, kind):
    hf = make_hf(kind, tmp_path / "base")
    ours = adapters.add_adapters(load_llm(tmp_path / "base"), LoraSpec(rank=4, alpha=8.0, targets=(r"layers/\d+/.*",)))
    randomize_adapters(ours)
    peft_io.write_llm_adapter(ours, LoraSpec(rank=4, alpha=8.0), tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    ids, mask = right_padded([7, 5])
    base = hf_logits(hf, ids, mask)
    want = hf_logits(PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval(), ids, mask)
    got = np.asarray(forward(ours, jnp.asarray(ids), jnp.asarray(mask)))
    assert rel_err(got[mask], want[mask]) <= 1e-4
    assert rel_err(want[mask], base[mask]) > 1e-2  # the adapters matter


@pytest.fixture(scope="module")
def peft_written(tmp_path_factory):
    """A tiny Qwen2 and an adapter `peft` trained one step on it, both saved by their own libraries."""
    root = tmp_path_factory.mktemp("peft")
    hf = make_hf("qwen2-untied", root / "base")
    torch.manual_seed(0)
    model = get_peft_model(hf, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                          init_lora_weights=False))  # random A and B: not the base
    model.save_pretrained(str(root / "adapter"))
    ids, mask = right_padded([7, 5])
    return root, hf_logits(model.eval(), ids, mask), ids, mask


def test_peft_adapter_applied_merged(peft_written):
    root, want, ids, mask = peft_written
    assert convert_weights.main(["apply-peft", str(root / "base"), str(root / "adapter"), str(root / "merged"),
                                 "--no-progress"]) == 0
    model, _ = peft_apply.load_ours(root / "merged")
    got = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    assert rel_err(got[mask], want[mask]) <= 1e-4


def test_peft_adapter_kept_as_adapters(peft_written):
    root, want, ids, mask = peft_written
    assert convert_weights.main(["apply-peft", str(root / "base"), str(root / "adapter"), str(root / "kept"),
                                 "--keep-adapters", "--no-progress"]) == 0
    assert (root / "kept" / "adapter" / "adapter_config.json").exists()
    model = peft_apply.load_adapted(root / "kept")
    assert len(list(adapters.adapted_layers(model))) == 2 * 3  # 2 layers x (q, v, down)
    got = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    assert rel_err(got[mask], want[mask]) <= 1e-4


def test_adapter_for_another_base_is_one_line(peft_written, tmp_path, capsys):
    root, *_ = peft_written
    make_hf("phi", tmp_path / "phi")
    capsys.readouterr()
    assert convert_weights.main(["apply-peft", str(tmp_path / "phi"), str(root / "adapter"), str(tmp_path / "out"),
                                 "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "model.layers.0" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        peft_io.read_adapter(tmp_path)
