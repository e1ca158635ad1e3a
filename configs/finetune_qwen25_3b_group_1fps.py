"""Finetune stage of TinyLLaVA-Video-Qwen2.5-3B-Group-1fps-512. Starts from the output of
`--config configs/pretrain_qwen25_3b_group_1fps.py --workdir workdirs/pretrain_qwen25_3b_group_1fps`."""

import pathlib

from tlv_jax.train.config_file import load_module

base = load_module(pathlib.Path(__file__).with_name("base.py"))


def get_config():
    c = base.get_config()
    base.qwen25_3b(c)
    base.group_1fps(c)
    base.finetune_stage(c, "pretrain_qwen25_3b_group_1fps")
    return c
