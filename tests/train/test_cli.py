"""The command lines: `--help` is an answer (exit 0) for the trainer and the planner, and a recipe finds its shared
defaults from any working directory."""

import subprocess
import sys

import pytest

from . import tiny_run


@pytest.mark.parametrize("module", ["tlv_jax.train", "tlv_jax.plan"])
@pytest.mark.parametrize("flag", ["--help", "--helpfull"])
def test_help_exits_0_and_lists_the_flags(module, flag):
    r = subprocess.run([sys.executable, "-m", module, flag], capture_output=True, text=True, cwd=tiny_run.ROOT,
                       env=tiny_run.cli_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--config" in r.stdout and "Traceback" not in r.stderr


def test_a_recipe_loads_from_another_working_directory(tmp_path):
    recipe = tiny_run.ROOT / "configs" / "demo.py"
    r = subprocess.run([sys.executable, "-m", "tlv_jax.plan", "--config", str(recipe), "--mesh", "1,1,1",
                        "--config.model.scratch.llm.vocab_size=64"], capture_output=True, text=True, cwd=tmp_path,
                       env=tiny_run.cli_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mesh data=1 fsdp=1 tensor=1 (1 devices)" in r.stdout
