"""A Qwen3 decoder through `convert_weights.py`, both ways: a TinyLLaVA-Video whose LLM is a `Qwen3ForCausalLM`,
saved in the published PyTorch layout, comes back bit for bit; its pretrain-stage LLM folder is the same
`Qwen3ForCausalLM` to transformers; and a plain HF Qwen3 directory round-trips as well."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file
from transformers import Qwen3ForCausalLM

import convert_weights
from convert import assert_same_tensors, copy_fixture, edit_flat  # the tests/convert helpers (tests/ is on sys.path)
from models.hf_decoders import hf_config, make_hf, perturb
from tlv_jax.convert.orbax_io import ParamsReader, read_meta
from tlv_jax.convert.safetensors_io import open_checkpoint


def _convert(*argv: str) -> None:
    assert convert_weights.main([*argv, "--no-progress"]) == 0


def _assert_same_module(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])]


@pytest.fixture(scope="module")
def tinyllava_qwen3(tmp_path_factory, fixtures_dir) -> tuple[Path, Qwen3ForCausalLM]:
    """The qwen2-group-f16 fixture (published layout) with its LLM swapped for a perturbed tiny `Qwen3ForCausalLM`
    of the same width, vocabulary and special tokens: its saved config.json as `text_config`, its saved tensors
    (a tied lm_head left out) under `language_model.`."""
    root = tmp_path_factory.mktemp("src")
    src = copy_fixture(fixtures_dir, "qwen2-group-f16", "finetune", root / "qwen3-group")
    config = json.loads((src / "config.json").read_text())
    llm_config = hf_config("qwen3")
    llm_config.update({k: config["text_config"][k] for k in ("vocab_size", "bos_token_id", "eos_token_id")})
    llm = Qwen3ForCausalLM(llm_config)
    perturb(llm)
    llm.eval()
    llm.save_pretrained(root / "tiny-qwen3")
    config["text_config"] = json.loads((root / "tiny-qwen3" / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config, indent=2))
    state = {"language_model." + k: v for k, v in load_file(root / "tiny-qwen3" / "model.safetensors").items()}

    def swap_llm(tensors: dict) -> None:
        for key in [k for k in tensors if k.startswith("language_model.")]:
            del tensors[key]
        tensors.update(state)

    edit_flat(src, swap_llm)
    return src, llm


def test_published_layout_round_trip_is_bit_exact(tinyllava_qwen3, tmp_path):
    src, _ = tinyllava_qwen3
    _convert("torch2jax", str(src), str(tmp_path / "ours"))
    meta = read_meta(tmp_path / "ours")
    assert meta["kind"] == "tinyllava" and meta["defaults"]["template"] == "qwen2_base"  # the family's template
    params = ParamsReader(tmp_path / "ours")
    assert params.get(("llm", "layers", 1, "attn", "k_norm", "scale")).tobytes() == \
        open_checkpoint(src).get("language_model.model.layers.1.self_attn.k_norm.weight").tobytes()
    _convert("jax2torch", str(tmp_path / "ours"), str(tmp_path / "torch"))
    assert_same_tensors(open_checkpoint(tmp_path / "torch"), open_checkpoint(src))
    written = json.loads((tmp_path / "torch" / "config.json").read_text())["text_config"]
    original = json.loads((src / "config.json").read_text())["text_config"]
    assert {k: written[k] for k in original} == original  # every original field kept, head_dim 12 included


def test_pretrain_layout_llm_is_the_same_qwen3_for_transformers(tinyllava_qwen3, tmp_path):
    src, llm = tinyllava_qwen3
    _convert("torch2jax", str(src), str(tmp_path / "ours"))
    _convert("jax2torch", str(tmp_path / "ours"), str(tmp_path / "pre"), "--layout", "pretrain")
    _assert_same_module(Qwen3ForCausalLM.from_pretrained(tmp_path / "pre" / "language_model"), llm)
    _convert("torch2jax", str(tmp_path / "pre"), str(tmp_path / "again"))  # and the pretrain layout reads back
    a, b = ParamsReader(tmp_path / "ours"), ParamsReader(tmp_path / "again")
    assert sorted(map(str, a.keys())) == sorted(map(str, b.keys()))
    assert all(a.get(p).tobytes() == b.get(p).tobytes() for p in a.keys())


def test_hf_qwen3_backbone_round_trip(tmp_path):
    hf = make_hf("qwen3", tmp_path / "hf")
    _convert("torch2jax", str(tmp_path / "hf"), str(tmp_path / "ours"))  # component detected from config.json
    meta = read_meta(tmp_path / "ours")
    assert meta["kind"] == "llm" and meta["source"]["layout"] == "hf"
    q_norm = ParamsReader(tmp_path / "ours").get(("llm", "layers", 0, "attn", "q_norm", "scale"))
    assert q_norm.tobytes() == hf.model.layers[0].self_attn.q_norm.weight.detach().numpy().tobytes()
    _convert("jax2torch", str(tmp_path / "ours"), str(tmp_path / "back"))
    back = Qwen3ForCausalLM.from_pretrained(tmp_path / "back")
    assert back.config.head_dim == 12
    _assert_same_module(back, hf)
