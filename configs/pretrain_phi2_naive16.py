"""Pretrain stage of TinyLLaVA-Video-Phi2-Naive-16-512."""

import pathlib

from tlv_jax.train.config_file import load_module

base = load_module(pathlib.Path(__file__).with_name("base.py"))


def get_config():
    c = base.get_config()
    base.phi2(c)
    base.naive16(c)
    base.pretrain_stage(c)
    return c
