"""One tiny CLI run shared by the tests that interrupt, damage or export such runs: its config file and the
workdir of one uninterrupted run of it (8 steps, checkpoints every 3, the last 2 kept: steps 6 and 8)."""

import subprocess

import pytest

from tlv_jax.train.metrics import read_jsonl

from . import tiny_run


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_cli")
    qa, _, tokenizer = tiny_run.make_data(root / "data", videos=16)
    return tiny_run.write_scratch_config(root / "tiny_scratch.py", tokenizer, qa, root / "data")


def cli_env(config):
    """A user's environment, with one persistent compilation cache: every run of the config compiles its step once."""
    return tiny_run.cli_env(compile_cache=config.parent / "jax_cache")


@pytest.fixture(scope="session")
def reference(tiny_config, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    done = subprocess.run(tiny_run.train_command(tiny_config, workdir), cwd=tiny_run.ROOT, env=cli_env(tiny_config),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in read_jsonl(workdir / "metrics.jsonl")] == list(range(1, 9))
    return workdir
