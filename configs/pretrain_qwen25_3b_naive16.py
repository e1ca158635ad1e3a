"""Pretrain stage of TinyLLaVA-Video-Qwen2.5-3B-Naive-16-512 (upstream-spec §8)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import base  # noqa: E402


def get_config():
    c = base.get_config()
    base.qwen25_3b(c)
    base.naive16(c)
    base.pretrain_stage(c)
    return c
