"""Finetune stage of TinyLLaVA-Video-Phi2-Naive-16-512 (upstream-spec §8). Starts from the output of
`--config configs/pretrain_phi2_naive16.py --workdir workdirs/pretrain_phi2_naive16`."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import base  # noqa: E402


def get_config():
    c = base.get_config()
    base.phi2(c)
    base.naive16(c)
    base.finetune_stage(c, "pretrain_phi2_naive16", template="phi")
    return c
