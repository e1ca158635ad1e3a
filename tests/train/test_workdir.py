"""A URL as the run directory is refused in one line before anything is written, instead of becoming a local folder
named `gs:`."""

import subprocess
import sys

import pytest

from tlv_jax.train.workdir import local_workdir

from . import tiny_run


def test_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_workdir("runs/a") == tmp_path / "runs" / "a"


def test_a_url_is_refused_by_the_trainer_cli_before_anything_is_written(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tlv_jax.train", "--config", str(tiny_run.ROOT / "configs" / "demo.py"),
                        "--workdir", "gs://bucket/run"], capture_output=True, text=True, cwd=tmp_path,
                       env=tiny_run.cli_env(), timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: --workdir gs://bucket/run: URLs are not supported")
    assert "Traceback" not in r.stderr and not (tmp_path / "gs:").exists()


def test_the_python_api_refuses_it_too():
    with pytest.raises(ValueError, match="gcsfuse"):
        local_workdir("gs://bucket/run")
