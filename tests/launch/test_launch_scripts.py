"""The launch scripts' --dry-run prints the exact commands they would run, they reject bad arguments, and everything
under launch/ passes shellcheck."""

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CFG = "configs/finetune_qwen25_3b_group16.py"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "launch" / script), *args], capture_output=True, text=True, cwd=ROOT)


def commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def argv(out: str) -> list[list[str]]:
    """Each printed command as the argv it runs."""
    return [shlex.split(c) for c in commands(out)]


def remote(cmd: list[str]) -> list[str]:
    """The command an ssh line runs on the workers, as an argv."""
    return shlex.split(cmd[cmd.index("--command") + 1])


def tpu_dry_run(*args: str) -> list[list[str]]:
    r = run("tpu_pod.sh", "--dry-run", "--zone", "us-east5-a", "--config", CFG, *args)
    assert r.returncode == 0, r.stderr
    return argv(r.stdout)


# Each generation gets its documented software version; single hosts and pods alike use every worker.
@pytest.mark.parametrize("tpu_type, image", [
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5p-64", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_tpu_pod_dry_run_per_generation(tpu_type, image):
    cmds = tpu_dry_run("--name", "run1", "--type", tpu_type, "--workdir", "gs://bucket/run1",
                       "--", "--config.optim.lr=2e-5")
    assert [" ".join(c[:5]) for c in cmds] == [
        "gcloud compute tpus tpu-vm create",
        f"git -C {ROOT} archive --format=tar.gz",
        "gcloud compute tpus tpu-vm scp",
        "gcloud compute tpus tpu-vm ssh",
        "gcloud compute tpus tpu-vm ssh",
    ]
    create, archive, scp, setup, train = cmds
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "run1", "--zone", "us-east5-a",
                      "--accelerator-type", tpu_type, "--version", image]
    assert archive[-3:] == ["-o", "/tmp/tlv_jax-run1.tar.gz", "HEAD"]
    assert scp[5:] == ["/tmp/tlv_jax-run1.tar.gz", f"{ROOT}/launch/tpu_worker.sh", "run1:/tmp/",
                       "--zone", "us-east5-a", "--worker=all"]
    for ssh in (setup, train):
        assert ssh[5:10] == ["run1", "--zone", "us-east5-a", "--worker=all", "--command"]
    # The environment: a Python >= 3.11 virtualenv with this checkout and JAX for TPU (steps in tpu_worker.sh).
    assert remote(setup) == ["bash", "/tmp/tpu_worker.sh", "setup", "--archive", "/tmp/tlv_jax-run1.tar.gz",
                             "--python", "3.12", "--jax", "jax[tpu]"]
    assert remote(train) == ["bash", "/tmp/tpu_worker.sh", "train",
                             "--logs-to", "gs://bucket/run1/logs/tpu_pod/attempt-1", "--",
                             "--config", CFG, "--workdir", "gs://bucket/run1", "--config.optim.lr=2e-5"]


def test_tpu_pod_dry_run_two_slices_one_queued_resource():
    cmds = tpu_dry_run("--name", "ms", "--type", "v5p-16", "--num-slices", "2", "--spot", "--project", "proj",
                       "--workdir", "gs://bucket/ms/", "--delete-when-done", "--", "--config.train.steps=10")
    create, _, scp, setup, train, delete = cmds
    assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "ms",
                      "--node-count", "2", "--node-prefix", "ms", "--zone", "us-east5-a", "--project", "proj",
                      "--accelerator-type", "v5p-16", "--runtime-version", "v2-alpha-tpuv5", "--spot"]
    # Every worker of every slice (2 slices x 2 VMs of a v5p-16) at once.
    every = ["--zone", "us-east5-a", "--project", "proj", "--worker=all", "--node=all", "--batch-size=4"]
    assert scp[3:5] == ["queued-resources", "scp"] and scp[-len(every):] == every
    for ssh in (setup, train):
        assert ssh[3:6] == ["queued-resources", "ssh", "ms"] and ssh[6:6 + len(every)] == every
    assert remote(setup)[2:] == ["setup", "--archive", "/tmp/tlv_jax-ms.tar.gz", "--python", "3.12",
                                 "--jax", "jax[tpu]"]
    assert remote(train)[2:] == ["train", "--logs-to", "gs://bucket/ms/logs/tpu_pod/attempt-1", "--",
                                 "--config", CFG, "--workdir", "gs://bucket/ms",
                                 "--config.mesh.dcn_data=2", "--config.train.steps=10"]
    assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", "ms", "--zone", "us-east5-a",
                      "--project", "proj", "--force", "--quiet"]


def test_tpu_pod_queued_single_slice_version_override_and_python():
    cmds = tpu_dry_run("--name", "q1", "--type", "v6e-8", "--queued", "--version", "v2-alpha-tpuv6e-custom",
                       "--python", "3.11", "--jax", "jax[tpu]==0.10.2", "--workdir", "local/run")
    create, _, _, setup, train = cmds
    assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "q1", "--node-id", "q1",
                      "--zone", "us-east5-a", "--accelerator-type", "v6e-8",
                      "--runtime-version", "v2-alpha-tpuv6e-custom"]
    assert remote(setup)[-4:] == ["--python", "3.11", "--jax", "jax[tpu]==0.10.2"]
    # A local workdir (one worker, no restarts) keeps its logs itself: nothing is copied.
    assert remote(train)[2:] == ["train", "--", "--config", CFG, "--workdir", "local/run"]


@pytest.mark.parametrize("args, message", [
    (["--type", "v3-8"], "unknown TPU type 'v3-8'; known: v4-N (v4), v5litepod-N (v5e), v5p-N (v5p), v6e-N (v6e)"),
    (["--type", "v5p-x"], "the part after '-' must be a number"),
    (["--python", "3.10"], "tlv_jax needs Python 3.11 or newer"),
    (["--num-slices", "0"], "--num-slices 0: not a positive number"),
    (["--type", "v5p-64", "--workdir", "/local/run"], "use a gs:// workdir with several workers"),
    (["--restart-on-preemption", "--workdir", "/local/run"], "use a gs:// workdir"),
    (["--num-slices", "2", "--", "--config.mesh.dcn_data=4"], "--num-slices 2 sets --config.mesh.dcn_data"),
    (["--type", "v5p-1024"], "more than 64 workers: use --queued"),
    (["--name", "Bad_Name"], "--name Bad_Name"),
])
def test_tpu_pod_rejects(args, message):
    defaults = {"--name": "n", "--zone": "z", "--type": "v5p-8", "--config": "c.py", "--workdir": "gs://b/r"}
    r = run("tpu_pod.sh", "--dry-run", *[x for k, v in defaults.items() if k not in args for x in (k, v)], *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def readme_tpu_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return [shlex.split(line.strip()) for line in text.splitlines() if line.strip().startswith("launch/tpu_pod.sh ")]


def test_readme_tpu_commands_run():
    found = readme_tpu_commands()
    assert len(found) == 4, found
    for cmd in found:
        r = run("tpu_pod.sh", "--dry-run", *cmd[1:])
        assert r.returncode == 0, (cmd, r.stderr)
    two = argv(run("tpu_pod.sh", "--dry-run", *found[-1][1:]).stdout)
    assert "--config.mesh.dcn_data=2" in remote(two[-1])


@pytest.mark.parametrize("missing", ["--name", "--zone", "--type", "--config", "--workdir"])
def test_tpu_pod_requires_each_argument(missing):
    args = {"--name": "n", "--zone": "z", "--type": "v4-8", "--config": "c", "--workdir": "w"}
    r = run("tpu_pod.sh", "--dry-run", *[x for k, v in args.items() if k != missing for x in (k, v)])
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


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (Debian/Ubuntu: apt-get install -y shellcheck)")
def test_launch_scripts_pass_shellcheck():
    scripts = sorted(p for p in (ROOT / "launch").iterdir() if p.suffix in (".sh", ".sbatch"))
    assert {p.name for p in scripts} >= {"tpu_pod.sh", "tpu_worker.sh", "slurm.sbatch"}
    r = subprocess.run(["shellcheck", "--shell=bash", *map(str, scripts)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
