"""Data-parallel evaluation gives what one device gives: the five fixture benchmarks with a real (tiny, random)
checkpoint on 1 device, on 8 devices of one process, and as two localhost processes of 4 devices each (the real
command line, `jax.distributed` over a coordinator on 127.0.0.1): the same predictions, summaries and report rows.
A process killed mid-run loses nothing: the rerun answers only what no shard holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from tlv_jax.evaluate import __main__ as cli
from tlv_jax.evaluate.batching import BatchedAnswerer
from tlv_jax.evaluate.shards import read_all, shard_files
from tlv_jax.evaluate.synthetic import make_videomme_like
from tlv_jax.generate import Generator

from .fixtures import MAKERS

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("eval_worker.py")
FOLDERS = dict(videomme="Video-MME", mvbench="MVBench", longvideobench="LongVideoBench", mlvu="MLVU", mmvu="MMVU")
SETTINGS = ["--num-frames", "4", "--max-frames", "4", "--max-new-tokens", "4", "--max-batch", "4", "--no-progress"]
ANSWER_FIELDS = ("status", "output", "pred", "correct", "fallback", "prompt")


@pytest.fixture(scope="module")
def model_dir(fixtures_dir) -> Path:
    return fixtures_dir / "qwen2-group-f16" / "finetune"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks")
    for name, make in MAKERS.items():
        make(root / FOLDERS[name])
    return root


def answers(out: Path) -> dict[str, tuple]:
    return {qid: tuple(r[k] for k in ANSWER_FIELDS) for qid, r in read_all(out).items()}


def in_process(monkeypatch, model_dir: Path, out: Path, devices: list, *args: str) -> dict:
    generator = Generator.from_pretrained(model_dir)
    monkeypatch.setattr(cli, "build_answerer", lambda model, dtype, max_batch: BatchedAnswerer(generator, max_batch,
                                                                                                devices))
    return cli.main(["--model", str(model_dir), "--out", str(out), *args, *SETTINGS])


def commands(out: Path, *args: str, die_after: tuple[int, int] = (-1, -1)) -> list[list[str]]:
    """The command line as two processes (process i SIGKILLs itself before its batch `die_after[i]`)."""
    from sharding.test_multihost import free_port  # tests/sharding/test_multihost.py

    port = free_port()
    return [[sys.executable, str(WORKER), "--die-after", str(die_after[i]), "--", *args, "--out", str(out), *SETTINGS,
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
             "--distributed_timeout_s=60"] for i in range(2)]


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """The worker processes share their compiled programs through JAX's persistent cache (reruns compile nothing)."""
    ENV.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


ENV = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")


def processes(out: Path, *args: str, timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """The command line as two processes of 4 CPU devices each, run to the end."""
    from sharding.test_multihost import run_together

    return run_together(commands(out, *args), ENV, timeout)


def kill_mid_run(out: Path, *args: str, timeout: int = 120) -> int:
    """Two processes, process 1 dying before its second batch; process 0, which cannot finish without it (it waits
    for it at the end), is killed once process 1 is dead. Returns process 1's exit status."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT)
             for cmd in commands(out, *args, die_after=(-1, 1))]
    try:
        return procs[1].wait(timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_one_device_eight_devices_and_two_processes_agree(tmp_path, monkeypatch, model_dir, data_root):
    args = ["--benchmark", "all", "--data-root", str(data_root)]
    one = in_process(monkeypatch, model_dir, tmp_path / "one", jax.devices()[:1], *args)
    eight = in_process(monkeypatch, model_dir, tmp_path / "eight", jax.devices(), *args)
    for p in processes(tmp_path / "two", "--model", str(model_dir), *args):
        assert p.returncode == 0, p.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "report.json").read_text())

    def comparable(report: dict) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in report["rows"]]

    assert comparable(one) == comparable(eight) == comparable(two)
    assert [r["questions"] for r in one["rows"]] == [7, 9, 5, 7, 6]
    for name in FOLDERS:
        assert answers(tmp_path / "one" / name) == answers(tmp_path / "eight" / name) == answers(
            tmp_path / "two" / name), name
        summaries = [json.loads((tmp_path / run / name / "summary.json").read_text()) for run in ("one", "two")]
        assert summaries[0]["scores"] == summaries[1]["scores"]
        assert [p.name for p in shard_files(tmp_path / "two" / name)] == [
            "predictions-00000-of-00002.jsonl", "predictions-00001-of-00002.jsonl"]


def test_a_process_killed_mid_run_loses_nothing_and_the_rerun_repeats_nothing(tmp_path, monkeypatch, model_dir):
    data = make_videomme_like(tmp_path / "data", videos=8, questions_per_video=3, frames=16, size=32)
    args = ["--benchmark", "videomme", "--model", str(model_dir), "--data", str(data)]
    assert kill_mid_run(tmp_path / "two", *args) == -9
    answered_first = {qid for qid, r in read_all(tmp_path / "two").items() if r["status"] == "ok"}
    assert 0 < len(answered_first) < 24

    for p in processes(tmp_path / "two", *args):
        assert p.returncode == 0, p.stderr[-3000:]
    lines = [json.loads(line) for path in shard_files(tmp_path / "two") for line in path.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == sorted({r["id"] for r in lines})  # every question answered once
    assert len(lines) == 24
    one = in_process(monkeypatch, model_dir, tmp_path / "one", jax.devices()[:1], *args)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["scores"] == one["scores"]
    assert answers(tmp_path / "two") == answers(tmp_path / "one")
