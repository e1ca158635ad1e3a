"""Finetune stage of TinyLLaVA-Video-Qwen2.5-3B-Group-16-512 with LoRA on the LLM (docs/lora.md): the recipe of
finetune_qwen25_3b_group16.py, the LLM frozen with adapters (r 128, alpha 256) on every projection, the connector
trained in full, lr 2e-4."""

import pathlib

from tlv_jax.train.config_file import load_module

here = pathlib.Path(__file__).parent
base = load_module(here / "base.py")
full = load_module(here / "finetune_qwen25_3b_group16.py")


def get_config():
    c = full.get_config()
    base.lora_llm(c)
    return c
