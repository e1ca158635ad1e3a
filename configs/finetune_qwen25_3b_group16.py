"""Finetune stage of TinyLLaVA-Video-Qwen2.5-3B-Group-16-512 (upstream-spec §8). Starts from the output of
`--config configs/pretrain_qwen25_3b_group16.py --workdir workdirs/pretrain_qwen25_3b_group16`."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import base  # noqa: E402


def get_config():
    c = base.get_config()
    base.qwen25_3b(c)
    base.group16(c)
    base.finetune_stage(c, "pretrain_qwen25_3b_group16")
    return c
