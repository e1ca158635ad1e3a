"""The CPU demo's whole path on a tiny budget (the real run is `make demo`): generated videos, a BPE tokenizer,
training through the loop, export, held-out scoring, results.json and loss.png; rerunning resumes instead of
starting again."""

import json

import pytest

from tlv_jax.train import demo
from tlv_jax.train.config_file import load_config

from . import tiny_run


def small_demo_config():
    config = load_config(tiny_run.ROOT / "configs" / "demo.py")
    config.demo.update(dict(train_videos=48, test_videos=12, workers=1))
    config.train.update(dict(num_steps=3, global_batch=8, micro_batch=8))
    config.log.update(dict(progress=False, tensorboard=False))
    config.export.torch = False
    return config


def test_the_demo_trains_scores_held_out_questions_and_writes_its_report(tmp_path):
    results = demo.run(small_demo_config(), tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == results
    types = set(small_demo_config().demo.question_types)
    assert set(written["accuracy"]) == types and written["num_heldout"] == 12
    assert sum(written["num_heldout_per_type"].values()) == 12 and written["chance"] == 0.25
    assert all(0.0 <= a <= 1.0 for a in written["accuracy"].values())
    assert written["steps"] == 3 and written["resumed_from_step"] is None and written["wall_time_s"] > 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Same command again: the finished run resumes from its last checkpoint and scores the same model.
    again = demo.run(small_demo_config(), tmp_path)
    assert again["resumed_from_step"] == 3 and again["accuracy"] == results["accuracy"]


def test_the_curriculum_draws_its_first_batches_from_its_types_only_then_from_every_question():
    samples = [{"i": i} for i in range(40)]
    types = ["color", "direction"] * 20
    batches = list(demo.curriculum_batches(samples, types, {"steps": 6, "question_types": ("direction",)}, 4, 20,
                                           list, 0))
    assert len(batches) >= 20 and all(len(b) == 4 for b in batches)
    assert {types[s["i"]] for b in batches[:6] for s in b} == {"direction"}
    assert {types[s["i"]] for b in batches[6:] for s in b} == {"color", "direction"}
    plain = list(demo.curriculum_batches(samples, types, {}, 4, 20, list, 0))
    assert len(plain) >= 20 and {types[s["i"]] for s in plain[0] + plain[1]} == {"color", "direction"}
    with pytest.raises(ValueError, match=r"demo.curriculum.question_types=\('order',\): no training question"):
        demo.curriculum_batches(samples, types, {"steps": 6, "question_types": ("order",)}, 4, 20, list, 0)


def test_a_curriculum_share_mixes_the_other_types_into_its_first_batches_at_that_rate():
    samples = [{"i": i} for i in range(400)]
    types = ["color", "direction"] * 200
    curriculum = {"steps": 20, "question_types": ("direction",), "share": 0.8}
    first = [types[s["i"]] for b in list(demo.curriculum_batches(samples, types, curriculum, 10, 40, list, 0))[:20]
             for s in b]
    assert first.count("direction") / len(first) == pytest.approx(0.8, abs=0.05) and "color" in first
    with pytest.raises(ValueError, match=r"demo.curriculum.share=0.0"):
        demo.curriculum_batches(samples, types, {**curriculum, "share": 0.0}, 10, 40, list, 0)
