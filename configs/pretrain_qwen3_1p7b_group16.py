"""Pretrain stage of a TinyLLaVA-Video-Group-16-512 on Qwen3-1.7B: the Qwen2.5-3B recipe with this decoder."""

import pathlib

from tlv_jax.train.config_file import load_module

base = load_module(pathlib.Path(__file__).with_name("base.py"))


def get_config():
    c = base.get_config()
    base.qwen3_1p7b(c)
    base.group16(c)
    base.pretrain_stage(c)
    return c
