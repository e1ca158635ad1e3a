"""Exact resume under faults: a CLI run stopped by SIGTERM (it saves and exits), killed by SIGKILL between two saves
or in the middle of one, or whose latest checkpoint was damaged, restarted with the same command, logs the same
losses step for step as a run never interrupted (the `reference` of conftest.py). A save that fails stops the run
with one line and keeps the checkpoints before it."""

import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from tests import fault_at
from tlv_jax.train.metrics import read_jsonl

from . import tiny_run
from .conftest import cli_env

STEPS = 8  # checkpoints every 3 steps (tiny_run.SCRATCH_CONFIG)


def start(config, workdir):
    return subprocess.Popen(tiny_run.train_command(config, workdir), cwd=tiny_run.ROOT, env=cli_env(config),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc, workdir, step, timeout=600):
    """Blocks until the run has logged `step` (it is then already computing the next one)."""
    deadline = time.time() + timeout
    path = workdir / "metrics.jsonl"
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early (rc {proc.returncode}): {proc.stderr.read()[-3000:]}")
        if path.exists() and any(r["step"] >= step for r in read_jsonl(path)):
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout} s")


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def saved_steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def assert_same_losses(workdir, reference, steps):
    got, expected = read_jsonl(workdir / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")[steps[0] - 1:]
    assert [r["step"] for r in got] == steps
    for key in ("loss", "grad_norm", "lr", "target_tokens"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in expected], rtol=1e-6, atol=0, err_msg=key)


def test_sigterm_then_sigkill_resume_gives_the_uninterrupted_losses(tiny_config, reference, tmp_path):
    run = tmp_path / "interrupted"
    # 1. SIGTERM (preemption) after step 1: the run saves the step it is on and exits with 143.
    proc = start(tiny_config, run)
    wait_for_step(proc, run, 1)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 143, err[-3000:]
    stopped = saved_steps(run)[-1]
    assert stopped < STEPS and f"SIGTERM: saved step {stopped}" in err

    # 2. Restart; SIGKILL once step 5 is logged: between the saves of steps 3 and 6 (nothing is flushed).
    proc = start(tiny_config, run)
    wait_for_step(proc, run, 5)
    proc.kill()
    proc.wait()
    assert max(saved_steps(run)) < 6

    # 3. The same command again finishes the run from the last complete checkpoint.
    last = max(saved_steps(run))
    rc, err = finish(start(tiny_config, run))
    assert rc == 0, err[-3000:]
    assert f"resumed from step {last}" in err
    assert_same_losses(run, reference, list(range(1, STEPS + 1)))
    assert (run / "model" / "tlv_jax.json").exists()


SAVING_STEP_6 = "tlv_jax.train.checkpoint:IteratorSnapshot.get_state", 2  # Grain asks for it while it writes


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_previous_checkpoint(tiny_config, tmp_path):
    run, marker, log = tmp_path / "run", tmp_path / "failed", tmp_path / "log"
    command = ["-m", "tlv_jax.train", "--config", tiny_config, "--workdir", run]
    proc = fault_at.start("enospc", marker, *SAVING_STEP_6, command, log, cli_env(tiny_config))
    assert proc.wait(timeout=600) == 1 and marker.exists()
    assert log.read_text().strip().splitlines()[-1] == (
        f"error: checkpoint of step 6 not saved in {run}/checkpoints (OSError: [Errno 28] No space left on device); "
        "the last complete checkpoint is step 3: fix the cause and rerun the same command")
    assert saved_steps(run) == [3]


def test_sigkill_during_a_save_keeps_the_previous_checkpoint(tiny_config, reference, tmp_path):
    run, marker, log = tmp_path / "run", tmp_path / "saving", tmp_path / "log"
    command = ["-m", "tlv_jax.train", "--config", tiny_config, "--workdir", run]
    proc = fault_at.start("stall", marker, *SAVING_STEP_6, command, log, cli_env(tiny_config))
    fault_at.kill_at_marker(proc, marker, log)  # inside the save of step 6
    assert saved_steps(run) == [3] and (run / "checkpoints" / "6.orbax-checkpoint-tmp").is_dir()

    rc, err = finish(start(tiny_config, run))
    assert rc == 0, err[-3000:]
    assert "resumed from step 3" in err
    assert saved_steps(run) == [6, 8] and not list((run / "checkpoints").glob("*tmp*"))
    assert_same_losses(run, reference, list(range(1, STEPS + 1)))


@pytest.mark.parametrize("damaged", ["state/manifest.ocdbt", "iter/process_0-of-1.json"])
def test_a_truncated_latest_checkpoint_is_skipped_with_a_warning(tiny_config, reference, tmp_path, damaged):
    run = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run / "checkpoints")  # steps 6 and 8
    path = run / "checkpoints" / "8" / damaged
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)

    rc, err = finish(start(tiny_config, run))
    assert rc == 0, err[-3000:]
    assert re.search(rf"{run}/checkpoints/8: cannot be restored \(\w+: [^\n]*\); kept as 8.unreadable; using step 6",
                     err), err[-3000:]
    assert "resumed from step 6" in err
    assert_same_losses(run, reference, [7, 8])
    assert saved_steps(run) == [6, 8] and (run / "checkpoints" / "8.unreadable").is_dir()
