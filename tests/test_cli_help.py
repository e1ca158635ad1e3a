"""Every other command line answers `--help` with its usage and exit status 0 (the trainer's and the planner's are
in tests/train/test_cli.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "generate": ["-m", "tlv_jax.generate"],
    "evaluate": ["-m", "tlv_jax.evaluate"],
    "export": ["-m", "tlv_jax.train.export"],
    "prepare": ["-m", "tlv_jax.data.prepare"],
    "serve": ["-m", "tlv_jax.serve"],
    "convert": [str(ROOT / "convert_weights.py")],
    "convert torch2jax": [str(ROOT / "convert_weights.py"), "torch2jax"],
    "convert jax2torch": [str(ROOT / "convert_weights.py"), "jax2torch"],
}


@pytest.mark.parametrize("name", COMMANDS)
def test_help_exits_0(name):
    r = subprocess.run([sys.executable, *COMMANDS[name], "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout and "Traceback" not in r.stderr
