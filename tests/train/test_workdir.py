"""The run directory: a local path as it is, or a URL (gs://...) whose checkpoints Orbax writes there and whose log
and export are staged locally and copied up, so a run resumed on a fresh machine continues the same log."""

import subprocess
import sys

import pytest
from etils import epath

from tlv_jax.train import loop
from tlv_jax.train import workdir as workdir_lib
from tlv_jax.train.config_file import load_config
from tlv_jax.train.export import export_checkpoint
from tlv_jax.train.metrics import read_jsonl
from tlv_jax.train.workdir import Workdir

from . import tiny_run


def test_a_local_path_is_the_run_directory_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wd = Workdir.of("runs/a")
    assert wd.local == tmp_path / "runs" / "a" and wd.remote is None
    assert wd.checkpoints == wd.local / "checkpoints" and wd.name == str(wd.local)


def test_a_url_is_staged_in_a_local_folder_named_after_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TLV_JAX_STAGING", str(tmp_path))
    wd = Workdir.of("gs://bucket/runs/a/")
    assert wd.local == tmp_path / "gs" / "bucket" / "runs" / "a"
    assert wd.name == "gs://bucket/runs/a" and str(wd.checkpoints) == "gs://bucket/runs/a/checkpoints"


def test_a_url_without_a_bucket_is_refused():
    with pytest.raises(ValueError, match="names no bucket"):
        Workdir.of("gs://")


def test_the_demo_refuses_a_url_in_one_line_before_anything_is_written(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tlv_jax.train", "--config", str(tiny_run.ROOT / "configs" / "demo.py"),
                        "--workdir", "gs://bucket/run"], capture_output=True, text=True, cwd=tmp_path,
                       env=tiny_run.cli_env(), timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == ("error: --workdir gs://bucket/run: the demo runs in a local "
                                                  "directory; the trainer takes URLs")
    assert "Traceback" not in r.stderr and not (tmp_path / "gs:").exists()


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """gs://b/... mapped onto a local folder (Orbax's own gs:// support is not ours to test)."""
    root = tmp_path / "bucket"
    monkeypatch.setattr(workdir_lib, "remote_path", lambda url: epath.Path(root / url.partition("://")[2]))
    return root


def test_a_url_run_keeps_everything_there_and_resumes_on_a_fresh_machine(tiny_config, bucket, tmp_path, monkeypatch):
    config = load_config(tiny_config)
    config.train.update(dict(num_steps=4, global_batch=8, micro_batch=8))  # the suite has 8 CPU devices
    monkeypatch.setenv("TLV_JAX_STAGING", str(tmp_path / "machine1"))
    first = loop.train(config, "gs://b/run")
    remote = bucket / "b" / "run"
    assert first.stopped == "done" and first.model_dir == tmp_path / "machine1" / "gs" / "b" / "run" / "model"
    assert sorted(p.name for p in (remote / "checkpoints").iterdir()) == ["3", "4"]
    assert [r["step"] for r in read_jsonl(remote / "metrics.jsonl")] == [1, 2, 3, 4]
    assert (remote / "config.json").is_file() and (remote / "model" / "tlv_jax.json").is_file()
    assert any((remote / "tensorboard").iterdir())

    # A recreated machine: nothing staged locally, the same command with more steps resumes from the bucket.
    config.train.num_steps = 6
    monkeypatch.setenv("TLV_JAX_STAGING", str(tmp_path / "machine2"))
    second = loop.train(config, "gs://b/run")
    assert second.resumed_from == 4 and second.step == 6
    assert [r["step"] for r in read_jsonl(remote / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]

    # Exporting a checkpoint of the run from a third machine writes the model up there too.
    monkeypatch.setenv("TLV_JAX_STAGING", str(tmp_path / "machine3"))
    (remote / "model" / "tlv_jax.json").unlink()
    model_dir, _ = export_checkpoint("gs://b/run", step=4)
    assert model_dir == tmp_path / "machine3" / "gs" / "b" / "run" / "model"
    assert (remote / "model" / "tlv_jax.json").read_bytes() == (model_dir / "tlv_jax.json").read_bytes()
