"""Every command line, run as a user runs it, fails in one line: exit status 1 (2 for a wrong command line), exactly
one `error:` line on stderr naming the file, key or value, and no traceback; the traceback is in a training run's
log file, and on stderr with `--verbose`. (The trainer's unknown config keys: tests/train/test_recipes.py.)"""

import subprocess
import sys
from pathlib import Path

import pytest

from train import tiny_run  # tests/train/tiny_run.py

ROOT = tiny_run.ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=tiny_run.cli_env(),
                          timeout=300)


def error_line(r: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a failed command, checked to come without a traceback."""
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny scratch config over 4 synthetic videos, and a broken annotation file next to it."""
    root = tmp_path_factory.mktemp("cli_failures")
    qa, _, tokenizer = tiny_run.make_data(root / "data", videos=4)
    (root / "broken.json").write_text('[{"id": "a", "video": ')
    return tiny_run.write_scratch_config(root / "tiny.py", tokenizer, qa, root / "data")


@pytest.mark.parametrize("overrides, named", [
    (["--config.data.annotation_files=('{broken}',)"], "{broken}"),
    (["--config.train.global_batch=8", "--config.train.micro_batch=3"], "train.micro_batch=3"),
    (["--config.model.connector=foo"], "'foo'"),
    (["--config.model.dtype=float8"], "model.dtype='float8'"),
    (["--config.model.scratch.llm.family=foo"], "model.scratch.llm.family='foo'"),
], ids=["annotations not JSON", "micro-batch", "connector", "dtype", "family"])
def test_a_training_run_that_cannot_start_is_one_line_and_its_traceback_is_in_the_log(tiny, tmp_path, overrides,
                                                                                     named):
    broken = str(tiny.parent / "broken.json")
    r = run(*tiny_run.train_command(tiny, tmp_path, *(o.format(broken=broken) for o in overrides))[1:])
    assert r.returncode == 1 and named.format(broken=broken) in error_line(r)
    assert "Traceback" in (tmp_path / "logs" / "process_0.log").read_text()


def test_a_missing_config_file_is_a_wrong_command_line(tmp_path):
    r = run("-m", "tlv_jax.train", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path))
    assert r.returncode == 2 and error_line(r) == f"error: --config {tmp_path / 'nope.py'}: no such file"


def test_verbose_adds_the_traceback(tiny, tmp_path):
    r = run(*tiny_run.train_command(tiny, tmp_path, "--config.train.micro_batch=3", "--verbose")[1:])
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr
    assert r.stderr.splitlines()[-1] == "error: train.global_batch=4 must be a multiple of train.micro_batch=3"


COMMANDS = {  # name: (arguments, given a path that does not exist; what the error line must name)
    "generate": lambda missing: (["-m", "tlv_jax.generate", "--model", str(missing), "--video", "clip.mp4",
                                  "--prompt", "What happens?"], str(missing)),
    "evaluate": lambda missing: (["-m", "tlv_jax.evaluate", "--benchmark", "mvbench", "--model", str(missing),
                                  "--data", str(missing.parent)], str(missing)),
    "convert": lambda missing: (["convert_weights.py", "torch2jax", str(missing), str(missing.parent / "out")],
                                str(missing)),
    "export": lambda missing: (["-m", "tlv_jax.train.export", "--workdir", str(missing)], str(missing)),
    "prepare": lambda missing: (["-m", "tlv_jax.data.prepare", "--annotations", str(missing), "--video-dir",
                                 str(missing.parent), "--tokenizer",
                                 str(ROOT / "tests/fixtures/upstream/qwen2-group-f16/finetune"), "--out",
                                 str(missing.parent / "out")], str(missing)),
    "plan": lambda missing: (["-m", "tlv_jax.plan", "--config", "configs/demo.py", "--mesh", "1,8"], "--mesh '1,8'"),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_other_command_names_what_it_could_not_use(name, tmp_path):
    args, named = COMMANDS[name](tmp_path / "missing")
    r = run(*args)
    assert r.returncode == 1 and named in error_line(r)
