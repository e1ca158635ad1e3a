"""The whole evaluation with a real (tiny, random) TinyLLaVA-Video checkpoint made by the original code.

The model's greedy answers are arbitrary text; what is checked is the path from checkpoint to summary: the answerer
loads the PyTorch directory, answers several questions per video in one batch exactly as one at a time, and every
record and score follows from the recorded outputs by the original's rules.
"""

import random

import numpy as np
import pytest

from tlv_jax.evaluate import build_answerer, evaluate
from tlv_jax.evaluate.answers import parse_multi_choice_response, question_rng
from tlv_jax.evaluate.common import PREDICTIONS, read_predictions
from tlv_jax.evaluate.videomme import BENCHMARK

from .fixtures import make_videomme

NEW_TOKENS = 6  # one value for every call: it is a static argument of the compiled decode loop


@pytest.fixture(scope="module")
def answerer(fixtures_dir):
    return build_answerer(fixtures_dir / "qwen2-group-f16" / "finetune", max_batch=2)


def test_videomme_end_to_end(answerer, tmp_path):
    data = make_videomme(tmp_path / "data")
    summary = evaluate(BENCHMARK, data, answerer, tmp_path / "out", num_frames=4, max_frames=4, max_new_tokens=NEW_TOKENS,
                       progress=False)
    assert (summary["questions"], summary["answered"]) == (7, 5)
    assert (summary["missing"]["questions"], summary["unreadable"]["questions"]) == (1, 1)

    records = read_predictions(tmp_path / "out" / PREDICTIONS)
    questions = {q.qid: q for q in BENCHMARK.load(data)}
    by_duration = {"short": [], "medium": [], "long": []}
    for qid, r in records.items():
        q = questions[qid]
        if r["status"] == "ok":
            assert isinstance(r["output"], str)
            choice = parse_multi_choice_response(r["output"], q.choices, q.index2ans, question_rng(0, qid))
            assert (r["pred"], r["fallback"]) == (choice.letter, choice.fallback)
            assert r["correct"] == (choice.letter == q.answer)
        else:
            assert r["correct"] is False and r["output"] is None
        by_duration[q.group].append(r["correct"])
    expected = {k: 100 * sum(v) / len(v) for k, v in by_duration.items()}
    expected["Overall"] = 100 * sum(r["correct"] for r in records.values()) / 7
    assert summary["scores"] == pytest.approx(expected)


def test_batched_answers_equal_single_answers(answerer):
    rng = random.Random(0)
    frames = np.stack([np.full((32, 32, 3), rng.randrange(256), np.uint8) for _ in range(4)])
    prompts = ["What happens?", "Which colour is shown?\nA. Red\nB. Blue", "Describe it."]  # 2 + (1 padded to 1)
    together = answerer.answer(frames, prompts, NEW_TOKENS)
    assert together == [answerer.answer(frames, [p], NEW_TOKENS)[0] for p in prompts]
