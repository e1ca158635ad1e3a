"""The prepared accelerator check runs end to end at tiny sizes on the CPU (`--quick`), so that the script a lent
GPU or TPU runs has not rotted: one table with the finetune step, the attention comparison and decode speeds."""

import importlib.util
import math
import re
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "device_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def cell(table: str, row: str) -> str:
    line = next(x for x in table.splitlines() if x.startswith(f"| {row}"))
    return line.split("|")[2].strip()


def number(text: str) -> float:
    return float(re.search(r"[-0-9.,]+(e-?[0-9]+)?", text).group(0).replace(",", ""))


def test_quick_mode_prints_the_whole_table():
    table = load_script().main(["--quick", "--steps", "1"])
    assert cell(table, "finetune step: micro-batch").startswith("4 packed rows x 96 tokens")
    assert number(cell(table, "finetune step: time")) > 0
    tokens = cell(table, "finetune step: real tokens/s")
    assert number(tokens) > 0 and 0 < number(tokens.split("padding")[1]) < 100
    assert number(cell(table, "finetune step: process peak RSS")) > 0
    assert math.isfinite(number(cell(table, "attention xla (no fused backend on this device) vs xla")))
    assert number(cell(table, "decode tokens/s, batch 1")) > 0 and number(cell(table, "decode tokens/s, batch 4")) > 0
