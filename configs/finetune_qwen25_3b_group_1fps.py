"""Finetune stage of TinyLLaVA-Video-Qwen2.5-3B-Group-1fps-512 (upstream-spec §8). Starts from the output of
`--config configs/pretrain_qwen25_3b_group_1fps.py --workdir workdirs/pretrain_qwen25_3b_group_1fps`."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import base  # noqa: E402


def get_config():
    c = base.get_config()
    base.qwen25_3b(c)
    base.group_1fps(c)
    base.finetune_stage(c, "pretrain_qwen25_3b_group_1fps")
    return c
