"""A model trained by the CPU demo's config (a few steps of `configs/demo.py` on a small generated set), exported by
training itself, answers held-out questions through transformers alone (`AutoProcessor` + `AutoModelForCausalLM`,
`trust_remote_code=True`, no tlv_jax importable) exactly as `tlv_jax.load(...).generate(...)` answers them."""

from __future__ import annotations

import json
from pathlib import Path

import tlv_jax
from tlv_jax.train import demo
from tlv_jax.train.config_file import load_config

from .test_hf_remote import assert_answers_as_ours, run_isolated

ROOT = Path(__file__).resolve().parents[2]
NEW_TOKENS = 8


def test_a_demo_model_answers_through_transformers_as_through_tlv_jax(tmp_path):
    config = load_config(ROOT / "configs" / "demo.py")
    config.demo.update(dict(train_videos=8, test_videos=2, workers=1))
    config.train.update(dict(num_steps=2, global_batch=8, micro_batch=8))
    config.log.update(dict(progress=False, tensorboard=False))
    config.export.torch = True
    run = tmp_path / "run"
    demo.run(config, run)
    records = json.loads((run / "data" / "test.json").read_text())
    videos = [str(run / "data" / r["video"]) for r in records]
    questions = [r["conversations"][0]["value"] for r in records]
    (got,) = run_isolated([{"dir": str(run / "export"), "video": videos, "questions": questions,
                            "max_new_tokens": NEW_TOKENS}], tmp_path)
    assert_answers_as_ours(got, tlv_jax.load(run / "model"), videos, questions)
    assert got["video"].shape[:2] == (len(records), 8)  # the run's 8 frames, as the export records them
