"""Shared helpers of the converter tests: fixture copies with one thing broken, tiny HF backbones, comparisons."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from safetensors.numpy import load_file

from tlv_jax.convert.safetensors_io import TensorReader, write_safetensors

FIXTURES = ("qwen2-group-f16", "phi-naive-f4")
LAYOUTS = ("finetune", "pretrain")


def copy_fixture(fixtures_dir: Path, name: str, layout: str, dst: Path) -> Path:
    shutil.copytree(fixtures_dir / name / layout, dst)
    return dst


def edit_flat(directory: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Rewrites a flat checkpoint's model.safetensors after `edit` changed its tensor dict in place."""
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    write_safetensors(path, list(tensors.items()), {"format": "pt"})


def assert_same_tensors(a: TensorReader, b: TensorReader) -> None:
    """Same keys, shapes, dtypes and bytes."""
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        x, y = a.get(k), b.get(k)
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), k


def leftovers(parent: Path) -> list[str]:
    """Temporary directories a conversion left next to its target (there should be none)."""
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name
                  or p.name.endswith(".partial_save"))


def save_tiny_qwen2(directory: Path, tie: bool = True) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie, bos_token_id=1,
                      eos_token_id=2)
    Qwen2ForCausalLM(cfg).save_pretrained(directory)


def save_tiny_phi(directory: Path) -> None:
    import torch
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(0)
    cfg = PhiConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                    partial_rotary_factor=0.5, bos_token_id=1, eos_token_id=2)
    PhiForCausalLM(cfg).save_pretrained(directory)


def tiny_siglip_vision_config() -> dict:
    return dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                patch_size=14)


def save_tiny_siglip(directory: Path, full: bool = False) -> None:
    """A `SiglipVisionModel`, or with full=True a whole `SiglipModel` (vision + text towers)."""
    import torch
    from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    if full:
        text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
                    bos_token_id=0, eos_token_id=1, pad_token_id=1)
        SiglipModel(SiglipConfig(vision_config=tiny_siglip_vision_config(), text_config=text)).save_pretrained(directory)
    else:
        SiglipVisionModel(SiglipVisionConfig(**tiny_siglip_vision_config())).save_pretrained(directory)
