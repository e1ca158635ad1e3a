"""Exact resume: a CLI run stopped by SIGTERM (it saves and exits) and later killed by SIGKILL between two saves,
restarted each time with the same command, logs the same losses step for step as a run never interrupted."""

import signal
import subprocess
import time

import numpy as np
import pytest

from tlv_jax.train.metrics import read_jsonl

from . import tiny_run

STEPS = 8  # checkpoints every 3 steps (tiny_run.SCRATCH_CONFIG)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    qa, _, tokenizer = tiny_run.make_data(root / "data", videos=16)
    return tiny_run.write_scratch_config(root / "tiny_scratch.py", tokenizer, qa, root / "data")


def start(config, workdir):
    env = tiny_run.cli_env(compile_cache=config.parent / "jax_cache")  # the 4 runs compile the same step once
    return subprocess.Popen(tiny_run.train_command(config, workdir), cwd=tiny_run.ROOT, env=env,
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


def test_sigterm_then_sigkill_resume_gives_the_uninterrupted_losses(config, tmp_path):
    reference = tmp_path / "reference"
    rc, err = finish(start(config, reference))
    assert rc == 0, err[-3000:]
    expected = read_jsonl(reference / "metrics.jsonl")
    assert [r["step"] for r in expected] == list(range(1, STEPS + 1))

    run = tmp_path / "interrupted"
    # 1. SIGTERM (preemption) after step 1: the run saves the step it is on and exits with 143.
    proc = start(config, run)
    wait_for_step(proc, run, 1)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 143, err[-3000:]
    stopped = saved_steps(run)[-1]
    assert stopped < STEPS and f"SIGTERM: saved step {stopped}" in err

    # 2. Restart; SIGKILL once step 5 is logged: between the saves of steps 3 and 6 (nothing is flushed).
    proc = start(config, run)
    wait_for_step(proc, run, 5)
    proc.kill()
    proc.wait()
    assert max(saved_steps(run)) < 6

    # 3. The same command again finishes the run from the last complete checkpoint.
    last = max(saved_steps(run))
    rc, err = finish(start(config, run))
    assert rc == 0, err[-3000:]
    assert f"resumed from step {last}" in err
    got = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm", "lr", "target_tokens"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in expected], rtol=1e-6, atol=0, err_msg=key)
    assert (run / "model" / "tlv_jax.json").exists()
