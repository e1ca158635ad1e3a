"""Packing in a real CLI run (`data.packing=True`): the Grain packer's position travels in the checkpoints, so a run
killed by SIGKILL between two saves and restarted with the same command logs the same losses, gradient norms and
target tokens step for step as a packed run never interrupted; each step's rows hold several samples."""

import subprocess

import pytest

from tlv_jax.train.metrics import read_jsonl

from . import tiny_run
from .conftest import cli_env
from .test_checkpoint import STEPS, assert_same_losses, finish, saved_steps, wait_for_step

PACKED = ("--config.data.packing=True", "--config.data.videos_per_row=3")


def start(config, workdir):
    return subprocess.Popen(tiny_run.train_command(config, workdir, *PACKED), cwd=tiny_run.ROOT,
                            env=cli_env(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def packed_reference(tiny_config, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("packed_reference")
    rc, err = finish(start(tiny_config, workdir))
    assert rc == 0, err[-3000:]
    return workdir


def test_packed_rows_hold_several_samples(tiny_config, reference, packed_reference):
    packed, padded = read_jsonl(packed_reference / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
    assert [r["step"] for r in packed] == list(range(1, STEPS + 1))
    # The same global batch of 4 (rows instead of samples) carries more target tokens per step.
    assert sum(r["target_tokens"] for r in packed) > 1.5 * sum(r["target_tokens"] for r in padded)


def test_sigkill_between_saves_then_resume_gives_the_uninterrupted_packed_losses(tiny_config, packed_reference,
                                                                                 tmp_path):
    run = tmp_path / "killed"
    proc = start(tiny_config, run)
    wait_for_step(proc, run, 5)  # checkpoints every 3 steps: killed between the saves of steps 3 and 6
    proc.kill()
    proc.wait()
    # Step 3's save is asynchronous: on a loaded machine it may not have completed when the kill came, and the
    # rerun then starts from the beginning, which must give the same losses too.
    saved = saved_steps(run) if (run / "checkpoints").exists() else []
    assert not saved or max(saved) < 6
    rc, err = finish(start(tiny_config, run))
    assert rc == 0, err[-3000:]
    assert not saved or f"resumed from step {max(saved)}" in err
    assert_same_losses(run, packed_reference, list(range(1, STEPS + 1)))
