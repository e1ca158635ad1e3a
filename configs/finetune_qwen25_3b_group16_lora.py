"""Finetune stage of TinyLLaVA-Video-Qwen2.5-3B-Group-16-512 with LoRA on the LLM (docs/lora.md): the
adapters and the connector train. Starts from the output of the group-16 pretrain stage."""

import pathlib

from tlv_jax.train.config_file import load_module

base = load_module(pathlib.Path(__file__).with_name("base.py"))


def get_config():
    c = base.get_config()
    base.qwen25_3b(c)
    base.group16(c)
    base.finetune_stage(c, "pretrain_qwen25_3b_group16")
    base.lora_llm(c, base_dtype="bfloat16")
    return c
