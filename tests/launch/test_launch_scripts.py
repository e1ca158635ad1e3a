"""The launch scripts' --dry-run prints the exact commands they would run, and they reject bad arguments."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "launch" / script), *args], capture_output=True, text=True, cwd=ROOT)


def commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def test_tpu_pod_dry_run_creates_installs_and_trains_on_all_workers():
    r = run("tpu_pod.sh", "--dry-run", "--name", "pod1", "--zone", "us-east5-a", "--type", "v5p-64",
            "--config", "configs/finetune_qwen25_3b_group16.py", "--workdir", "gs://bucket/run1",
            "--", "--config.optim.lr=2e-5")
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert cmds[0] == ("gcloud compute tpus tpu-vm create pod1 --zone us-east5-a --accelerator-type v5p-64 "
                       "--version tpu-ubuntu2204-base")
    assert cmds[1].startswith("git archive --format=tar.gz")
    assert "tpu-vm scp" in cmds[2] and cmds[2].endswith("--worker=all")
    assert "--worker=all" in cmds[3] and "pip\\ install" in cmds[3]
    train = cmds[4]
    assert "tpu-vm ssh pod1 --zone us-east5-a --worker=all --command" in train
    assert ("python3\\ -m\\ tlv_jax.train\\ --config\\ configs/finetune_qwen25_3b_group16.py\\ "
            "--workdir\\ gs://bucket/run1\\ --config.optim.lr=2e-5") in train
    assert len(cmds) == 5


def test_tpu_pod_queued_resource_and_spot():
    r = run("tpu_pod.sh", "--dry-run", "--queued", "--spot", "--name", "q1", "--zone", "z", "--type", "v6e-256",
            "--config", "c.py", "--workdir", "w", "--project", "proj")
    assert r.returncode == 0, r.stderr
    first = commands(r.stdout)[0]
    assert first == ("gcloud compute tpus queued-resources create q1 --node-id q1 --zone z --project proj "
                     "--accelerator-type v6e-256 --runtime-version tpu-ubuntu2204-base --spot")


@pytest.mark.parametrize("missing", ["--name", "--zone", "--type", "--config", "--workdir"])
def test_tpu_pod_requires_each_argument(missing):
    args = {"--name": "n", "--zone": "z", "--type": "t", "--config": "c", "--workdir": "w"}
    argv = ["--dry-run"] + [x for k, v in args.items() if k != missing for x in (k, v)]
    r = run("tpu_pod.sh", *argv)
    assert r.returncode == 2 and f"{missing} is required" in r.stderr


def test_slurm_dry_run_one_process_per_gpu():
    r = run("slurm.sbatch", "--dry-run", "--nodes", "4", "--config", "configs/demo.py", "--workdir", "/shared/r",
            "--", "--config.train.steps=10")
    assert r.returncode == 0, r.stderr
    sbatch, srun = commands(r.stdout)
    assert sbatch.startswith("sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 ")
    assert sbatch.endswith("--config configs/demo.py --workdir /shared/r -- --config.train.steps=10")
    assert srun == ("srun --nodes=4 --ntasks-per-node=8 --gpus-per-task=1 --kill-on-bad-exit=1 "
                    "--output=/shared/r/logs/slurm-%j-%t.log .venv/bin/python -m tlv_jax.train "
                    "--config configs/demo.py --workdir /shared/r --config.train.steps=10")


def test_slurm_rejects_unknown_argument():
    r = run("slurm.sbatch", "--bogus")
    assert r.returncode == 2 and "unknown argument --bogus" in r.stderr
