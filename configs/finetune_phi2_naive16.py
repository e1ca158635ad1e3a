"""Finetune stage of TinyLLaVA-Video-Phi2-Naive-16-512. Starts from the output of
`--config configs/pretrain_phi2_naive16.py --workdir workdirs/pretrain_phi2_naive16`."""

import pathlib

from tlv_jax.train.config_file import load_module

base = load_module(pathlib.Path(__file__).with_name("base.py"))


def get_config():
    c = base.get_config()
    base.phi2(c)
    base.naive16(c)
    base.finetune_stage(c, "pretrain_phi2_naive16", template="phi")
    return c
