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
from flax import nnx

import tlv_jax

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


def run_together(commands: list[list[str]], env: dict[str, str], timeout: int) -> list[subprocess.CompletedProcess]:
    """Starts every command, waits for all (killing the ones started here if they outlive `timeout`)."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for cmd in commands]
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


def launch(workdir: Path, *, until: int = 0, salts=("", ""), offsets=(0, 0), check_only: bool = False,
           dcn_data: int = 1, timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """Both worker processes, run to the end."""
    port = free_port()
    commands = [[sys.executable, str(WORKER), "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
                 "--process_id", str(i), "--devices", "4", "--workdir", str(workdir), "--until", str(until),
                 "--mesh", ",".join(map(str, MESH)), "--config_salt", salts[i], "--step_offset", str(offsets[i]),
                 "--dcn_data", str(dcn_data)] + (["--check_only"] if check_only else []) for i in range(2)]
    return run_together(commands, dict(os.environ, PYTHONPATH=str(ROOT)), timeout)


def train_cli(workdir: Path, config: Path | str, *overrides: str, processes: int, devices: int,
              timeout: int = 400) -> list[subprocess.CompletedProcess]:
    """`python -m tlv_jax.train` as `processes` processes on localhost with `devices` CPU devices each."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    base = [sys.executable, "-m", "tlv_jax.train", "--config", str(config), "--workdir", str(workdir), *overrides]
    if processes == 1:
        return run_together([base], env, timeout)
    port = free_port()
    return run_together([base + [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                                 f"--process_id={i}", "--distributed_timeout_s=60"] for i in range(processes)],
                        env, timeout)


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
    commands = [[sys.executable, "-m", "tlv_jax.train", "--config", "configs/demo.py", "--workdir", str(tmp_path),
                 f"--config.seed={i}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 f"--process_id={i}", "--distributed_timeout_s=60"] for i in range(2)]
    for p in run_together(commands, env, timeout=180):
        assert p.returncode != 0
        assert re.search(r"processes disagree on config_hash: process 0: \d+, process 1: \d+", p.stderr), \
            p.stderr[-2000:]
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


@pytest.fixture(scope="module")
def scratch_config(tmp_path_factory):
    from train import tiny_run  # tests/train/tiny_run.py

    root = tmp_path_factory.mktemp("cli_multihost")
    qa, _, tokenizer = tiny_run.make_data(root / "data")
    return tiny_run.write_scratch_config(root / "tiny.py", tokenizer, qa, root / "data")


def test_training_cli_on_two_processes_trains_exports_and_resumes_on_one(tmp_path, scratch_config):
    """The real CLI as two processes (2 x 4 CPU devices, data split by process, fsdp inside): it trains, saves,
    exports our checkpoint once (process 0 writes, both take part in gathering the sharded parameters) and both
    exit. The same command in one process on 8 devices then extends the run: the train state restores onto the
    new mesh, the per-process data position is left out with a warning."""
    mesh = ["--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.train.global_batch=8",
            "--config.train.micro_batch=4"]
    first = train_cli(tmp_path, scratch_config, *mesh, "--config.mesh.dcn_data=2", "--config.train.num_steps=4",
                      processes=2, devices=4)
    for p in first:
        assert p.returncode == 0, p.stderr[-3000:]
    model_dir = tmp_path / "model"
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "4" / "iter").glob("process_*")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    assert not list(tmp_path.glob(".model.tmp-*"))
    model = tlv_jax.load_model(model_dir)
    params_after_4 = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}

    (second,) = train_cli(tmp_path, scratch_config, *mesh, "--config.train.num_steps=6", processes=1, devices=8)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "data position saved by other processes (process_0-of-2.json, process_1-of-2.json)" in second.stderr
    log = (tmp_path / "metrics.jsonl").read_text()
    assert [json.loads(line)["step"] for line in log.splitlines() if '"loss"' in line][-2:] == [5, 6]
    moved = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(tlv_jax.load_model(model_dir), nnx.Param))}
    assert moved.keys() == params_after_4.keys()
    assert any(not np.array_equal(moved[k], v) for k, v in params_after_4.items())
