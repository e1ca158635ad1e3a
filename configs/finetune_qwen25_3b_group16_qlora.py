"""Finetune stage of TinyLLaVA-Video-Qwen2.5-3B-Group-16-512 with QLoRA: finetune_qwen25_3b_group16_lora.py on an
int8 base (the adapted layers' kernels stored quantised per output channel)."""

import pathlib

from tlv_jax.train.config_file import load_module

lora = load_module(pathlib.Path(__file__).with_name("finetune_qwen25_3b_group16_lora.py"))


def get_config():
    c = lora.get_config()
    c.lora.base_dtype = "int8"
    return c
