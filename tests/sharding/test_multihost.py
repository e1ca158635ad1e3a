"""A real two-process run on localhost: `jax.distributed` with a coordinator on 127.0.0.1, 2 processes x 4 CPU
devices (Gloo collectives), a few training steps, a checkpoint, a resume in fresh processes: the same losses and
parameters as one process with 8 devices. Processes that disagree on the config or the step stop with an error
naming the value and every process's view."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tlv_jax.sharding.mesh import make_mesh
from tlv_jax.train.checkpoint import Checkpointer, abstract_like

from .tiny import Trainer, assert_trees_close

WORKER = Path(__file__).with_name("multihost_worker.py")
ROOT = Path(__file__).resolve().parents[2]
MESH = (2, 4, 1)  # data across the two processes (as data over DCN between hosts), fsdp inside each


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir: Path, *, until: int = 0, salts=("", ""), offsets=(0, 0), check_only: bool = False,
           dcn_data: int = 1, timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """Starts both processes, waits for both (killing the ones started here if they outlive `timeout`)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = []
    for i in range(2):
        cmd = [sys.executable, str(WORKER), "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
               "--process_id", str(i), "--devices", "4", "--workdir", str(workdir), "--until", str(until),
               "--mesh", ",".join(map(str, MESH)), "--config_salt", salts[i], "--step_offset", str(offsets[i]),
               "--dcn_data", str(dcn_data)]
        procs.append(subprocess.Popen(cmd + (["--check_only"] if check_only else []), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def one_process():
    """The same 4 steps in this process on 8 devices, mesh (2, 4, 1)."""
    trainer = Trainer(make_mesh(*MESH))
    state, losses = trainer.run(trainer.init(), range(4))
    return trainer, state, losses


def test_two_processes_train_save_and_resume_like_one_process(tmp_path, one_process):
    first = [result(p) for p in launch(tmp_path, until=2)]
    # Fresh processes resume from step 2, now on a hybrid mesh: one data group per process (as one per TPU slice).
    second = [result(p) for p in launch(tmp_path, until=4, dcn_data=2)]
    for r in first + second:
        assert (r["processes"], r["devices"], r["local_devices"]) == (2, 8, 4)
    assert second[0]["data_groups"] == [[0], [1]]
    assert [r["start"] for r in second] == [2, 2]
    assert first[0]["losses"] == first[1]["losses"] and second[0]["losses"] == second[1]["losses"]
    trainer, state, losses = one_process
    np.testing.assert_allclose(first[0]["losses"] + second[0]["losses"], losses, rtol=1e-5)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["process_0.log", "process_1.log"]

    # The train state the two processes wrote restores in one process, onto its mesh, equal to its own state.
    # (Grain keeps one data position per process: those only restore with the same process count.)
    ckpt = Checkpointer(tmp_path / "checkpoints", every=1000, keep=2, async_save=False)
    assert ckpt.all_steps() == [2, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "4" / "iter").glob("process_*")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    restored, _ = ckpt.restore(4, abstract_like(trainer.abstract, trainer.shardings), with_iter=False)
    ckpt.close()
    assert int(restored.step) == 4
    assert_trees_close(restored.params, state.params, rtol=1e-5, atol=1e-6)
    assert_trees_close(restored.opt_state, state.opt_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("what, salts, offsets, message", [
    ("config", ("", "other"), (0, 0), r"processes disagree on config_hash: process 0: \d+, process 1: \d+"),
    ("step", ("", ""), (0, 3), "processes disagree on step: process 0: 0, process 1: 3"),
])
def test_processes_that_disagree_stop_with_a_clear_error(tmp_path, what, salts, offsets, message):
    procs = launch(tmp_path, salts=salts, offsets=offsets, check_only=True, timeout=120)
    for p in procs:
        assert p.returncode != 0, what
        assert re.search(message, p.stderr), p.stderr[-2000:]


def test_training_cli_joins_the_coordinator_and_refuses_different_configs(tmp_path):
    """`python -m tlv_jax.train ... --coordinator_address --num_processes --process_id`: the two processes meet,
    find their configs differ (another seed) and both stop before any work, naming each one's fingerprint."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = []
    for i in range(2):
        cmd = [sys.executable, "-m", "tlv_jax.train", "--config", "configs/demo.py", "--workdir", str(tmp_path),
               f"--config.seed={i}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
               f"--process_id={i}", "--distributed_timeout_s=60"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=ROOT))
    try:
        for p in procs:
            _, err = p.communicate(timeout=180)
            assert p.returncode != 0
            assert re.search(r"processes disagree on config_hash: process 0: \d+, process 1: \d+", err), err[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == ["process_0.log", "process_1.log"]
    text = (tmp_path / "logs" / "process_1.log").read_text()
    assert "process 1/2 up: 1 local / 2 global devices" in text and "processes disagree on config_hash" in text


def test_single_process_start_up_needs_no_coordinator_and_hashes_configs_by_content(tmp_path):
    import ml_collections

    from tlv_jax.sharding import distributed

    a = ml_collections.ConfigDict({"mesh": {"data": 2, "fsdp": 4}, "seed": 1})
    b = ml_collections.ConfigDict({"seed": 1, "mesh": {"fsdp": 4, "data": 2}})
    digest = distributed.startup(distributed.DistributedConfig(), tmp_path, a)
    assert digest == distributed.config_fingerprint(b) != distributed.config_fingerprint(
        ml_collections.ConfigDict({"seed": 2, "mesh": {"fsdp": 4, "data": 2}}))
    assert jax.process_count() == 1 and not (tmp_path / "logs").exists()
