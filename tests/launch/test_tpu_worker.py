"""launch/tpu_worker.sh, run here with fake `uv`, `python3`, `gcloud` and trainer in place of the TPU VM's: the
environment steps (uv venv with the asked Python, reused when it matches; the checkout and JAX installed into it)
and the train step (the trainer's status passed on, the per-process logs copied, the exit line tpu_pod.sh reads)."""

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "launch" / "tpu_worker.sh"

FAKE_UV = f"""#!{sys.executable}
import os, sys
from pathlib import Path
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write("uv " + " ".join(sys.argv[1:]) + "\\n")
if sys.argv[1] == "venv":  # uv venv --python X.Y DIR: a python that knows its version
    py = Path(sys.argv[-1]) / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("#!/bin/sh\\necho " + sys.argv[sys.argv.index("--python") + 1] + "\\n")
    py.chmod(0o755)
"""

FAKE_PYTHON3 = f"""#!{sys.executable}
import os, shutil, sys
from pathlib import Path
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write("python3 " + " ".join(sys.argv[1:]) + "\\n")
if sys.argv[1:4] == ["-m", "pip", "install"] and sys.argv[-1] == "uv":  # pip install --user uv
    dest = Path.home() / ".local" / "bin" / "uv"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(os.environ["FAKE_UV"], dest)
"""


def write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def worker(tmp_path):
    """A fake worker: HOME, a PATH with only the system tools and the fakes, and a checkout archive."""
    home, fakes = tmp_path / "home", tmp_path / "fakes"
    home.mkdir()
    log = tmp_path / "calls.log"
    uv = write_exe(tmp_path / "uv_template", FAKE_UV)
    write_exe(fakes / "python3", FAKE_PYTHON3)
    write_exe(fakes / "gcloud", "#!/bin/sh\necho \"gcloud $*\" >> \"$FAKE_LOG\"\n")
    archive = tmp_path / "tlv_jax.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"from setuptools import setup\nsetup()\n"
        info = tarfile.TarInfo("setup.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    env = {"HOME": str(home), "PATH": f"{fakes}:/usr/bin:/bin", "FAKE_LOG": str(log), "FAKE_UV": str(uv)}

    def run(*args, **kw):
        return subprocess.run(["bash", str(WORKER), *args], capture_output=True, text=True, env=env, **kw)

    class W:
        pass

    w = W()
    w.home, w.log, w.archive, w.env, w.run = home, log, archive, env, run
    w.calls = lambda: log.read_text().splitlines() if log.exists() else []
    return w


def test_setup_installs_uv_makes_a_python_312_venv_and_installs_checkout_and_jax(worker):
    r = worker.run("setup", "--archive", str(worker.archive))
    assert r.returncode == 0, r.stderr
    venv, src = worker.home / "tlv_jax" / "venv", worker.home / "tlv_jax" / "src"
    assert (src / "setup.py").exists()
    assert worker.calls() == [
        "python3 -m pip install --user --quiet uv",  # no uv on the image: installed first
        f"uv venv --python 3.12 {venv}",
        f"uv pip install --python {venv}/bin/python -e {src}[gcs] jax[tpu]",
    ]


def test_setup_reuses_a_matching_environment_and_replaces_another(worker):
    assert worker.run("setup", "--archive", str(worker.archive)).returncode == 0
    venv = worker.home / "tlv_jax" / "venv"
    first = len(worker.calls())
    r = worker.run("setup", "--archive", str(worker.archive), "--jax", "jax[tpu]==0.10.2")
    assert r.returncode == 0 and f"reusing {venv} (Python 3.12)" in r.stdout
    assert worker.calls()[first:] == [  # uv is on PATH now; the venv is kept
        f"uv pip install --python {venv}/bin/python -e {worker.home}/tlv_jax/src[gcs] jax[tpu]==0.10.2"]
    r = worker.run("setup", "--archive", str(worker.archive), "--python", "3.11")
    assert r.returncode == 0, r.stderr
    assert worker.calls()[first + 1] == f"uv venv --python 3.11 {venv}"


@pytest.mark.parametrize("args, message", [
    (["--python", "3.10"], "needs Python 3.11 or newer"),
    (["--archive", "/nonexistent.tar.gz"], "is not a file"),
])
def test_setup_refuses(worker, args, message):
    r = worker.run("setup", "--archive", str(worker.archive), *args)
    assert r.returncode == 2 and message in r.stderr


def test_setup_stops_a_trainer_left_running(worker):
    stale = subprocess.Popen(["bash", "-c", "exec -a tlv_jax.train sleep 120"])
    try:
        (worker.home / "tlv_jax").mkdir()
        (worker.home / "tlv_jax" / "train.pid").write_text(f"{stale.pid}\n")
        r = worker.run("setup", "--archive", str(worker.archive), timeout=60)
        assert r.returncode == 0, r.stderr
        assert f"stopping the trainer left from an earlier attempt (pid {stale.pid})" in r.stdout
        assert stale.wait(timeout=5) == -signal.SIGTERM
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait()


TRAINER = """#!/bin/bash
# the fake trainer: logs like a multi-process run with a gs:// workdir, then ends with $FAKE_RC
echo "args: $*"
mkdir -p logs && echo "process 0 log" > logs/process_0.log
if [[ -n "${FAKE_WAIT_TERM:-}" ]]; then
  trap 'echo saved; exit 143' TERM
  touch started; while true; do sleep 0.1; done
fi
exit "${FAKE_RC:-0}"
"""


@pytest.mark.parametrize("rc", [0, 1, 3])
def test_train_runs_the_trainer_in_the_venv_copies_logs_and_reports(worker, rc):
    write_exe(worker.home / "tlv_jax" / "venv" / "bin" / "python", TRAINER)
    (worker.home / "tlv_jax" / "src").mkdir()
    worker.env["FAKE_RC"] = str(rc)
    r = worker.run("train", "--logs-to", "gs://b/r/logs/tpu_pod/attempt-2/", "--",
                   "--config", "configs/x.py", "--workdir", "gs://b/r", "--config.mesh.dcn_data=2")
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert r.returncode == rc
    assert r.stdout.splitlines() == [
        "args: -m tlv_jax.train --config configs/x.py --workdir gs://b/r --config.mesh.dcn_data=2",
        f"tlv_jax-exit host={host} rc={rc}"]
    assert worker.calls() == ["gcloud storage cp logs/process_0.log gs://b/r/logs/tpu_pod/attempt-2/"]
    assert not (worker.home / "tlv_jax" / "train.pid").exists()


def test_train_passes_sigterm_to_the_trainer_and_reports_143(worker):
    write_exe(worker.home / "tlv_jax" / "venv" / "bin" / "python", TRAINER)
    src = worker.home / "tlv_jax" / "src"
    src.mkdir()
    worker.env["FAKE_WAIT_TERM"] = "1"
    p = subprocess.Popen(["bash", str(WORKER), "train", "--", "--config", "c.py"], env=worker.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while not (src / "started").exists():
            assert time.time() < deadline and p.poll() is None, "the fake trainer did not start"
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    lines = out.splitlines()
    assert p.returncode == 143
    assert lines[-2] == "saved"  # the trainer got the signal and ended on its own
    assert lines[-1].startswith("tlv_jax-exit host=") and lines[-1].endswith(" rc=143")
