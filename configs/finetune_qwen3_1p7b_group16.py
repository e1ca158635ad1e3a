"""Finetune stage of a TinyLLaVA-Video-Group-16-512 on Qwen3-1.7B. Starts from the output of
`--config configs/pretrain_qwen3_1p7b_group16.py --workdir workdirs/pretrain_qwen3_1p7b_group16`."""

import pathlib

from tlv_jax.train.config_file import load_module

base = load_module(pathlib.Path(__file__).with_name("base.py"))


def get_config():
    c = base.get_config()
    base.qwen3_1p7b(c)
    base.group16(c)
    base.finetune_stage(c, "pretrain_qwen3_1p7b_group16")
    return c
