"""A training run whose data cannot work stops within seconds with one line saying why, through the real command line:
a typo in the video folder at start-up (before any model is built), an annotation file of unreadable videos once the
minimum number of samples has been seen (before, every sample was skipped silently and the run never ended)."""

import json
import subprocess
import time

import pytest

from tlv_jax.data.synthetic import write_broken_videos

from . import tiny_run

TIMEOUT_S = 300  # a hang would otherwise never end; the runs take seconds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_failures")
    qa, _, tokenizer = tiny_run.make_data(root, videos=8)
    broken = write_broken_videos(root / "broken")
    records = json.loads(qa.read_text())
    unreadable = [f"broken/{broken[name].name}" for name in ("random_bytes", "truncated")]  # files, not videos
    all_bad = root / "all_bad.json"
    all_bad.write_text(json.dumps([{**r, "video": unreadable[i % 2]} for i, r in enumerate(records)]))
    return {"root": root, "qa": qa, "all_bad": all_bad, "tokenizer": tokenizer}


def _train(tmp_path, tiny, annotation, data_root):
    config = tiny_run.write_scratch_config(tmp_path / "config.py", tiny["tokenizer"], annotation, data_root)
    start = time.monotonic()
    r = subprocess.run(tiny_run.train_command(config, tmp_path / "run"), capture_output=True, text=True,
                       cwd=tiny_run.ROOT, env=tiny_run.cli_env(), timeout=TIMEOUT_S)
    return r, time.monotonic() - start


def test_a_video_folder_typo_stops_the_run_at_start_up(tmp_path, tiny):
    r, seconds = _train(tmp_path, tiny, tiny["qa"], tiny["root"] / "vidoes")
    assert r.returncode != 0, r.stderr[-2000:]
    assert f"video folder {tiny['root'] / 'vidoes'} (for {tiny['qa']}) does not exist" in r.stderr, r.stderr[-2000:]
    print(f"typo: stopped after {seconds:.1f} s")


def test_an_annotation_file_of_unreadable_videos_stops_after_the_minimum_samples(tmp_path, tiny):
    r, seconds = _train(tmp_path, tiny, tiny["all_bad"], tiny["root"])
    assert r.returncode != 0, r.stderr[-2000:]
    assert "500 of 500 samples were unusable" in r.stderr and "unreadable_container=500" in r.stderr, \
        r.stderr[-2000:]
    print(f"all bad: stopped after {seconds:.1f} s")
