"""MLVU over a fixture in the dev-set layout: per-task scores, M-Avg = mean of task accuracies, resume."""

import pytest

from .fixtures import make_mlvu, resume, run

SCRIPT = {
    "appears briefly?": "(B) a key",  # needle, answer B: right
    "order do events": "B",  # order, answer A: wrong
    "girl in red": "B",  # plotQA 0, answer B (runs): right
    "dog at the end?": "garden",  # plotQA 1, answer D: one word, no letter -> fallback, D for seed 0: right by luck
    "main topic?": "C",  # topic_reasoning, answer C: right
    # count: missing video; ego: corrupt video -> wrong, never asked; anomaly_reco: no questions
}
SETTINGS = dict(num_frames=4, max_frames=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mlvu(tmp_path_factory.mktemp("mlvu"))


def test_scores_m_avg_is_the_mean_of_tasks(data, tmp_path):
    summary, answerer = run("mlvu", data, tmp_path, SCRIPT, **SETTINGS)
    # 4 of 7 right (57.1 % micro), but M-Avg averages the 6 tasks that have questions: (0+0+100+0+100+100) / 6
    assert summary["scores"] == pytest.approx({"count": 0.0, "ego": 0.0, "needle": 100.0, "order": 0.0,
                                               "plotQA": 100.0, "topic_reasoning": 100.0, "M-Avg": 50.0})
    assert (summary["questions"], summary["correct"], summary["fallbacks"]) == (7, 4, 1)
    assert summary["missing"]["paths"] == [str(data / "video" / "4_count" / "count_missing.mp4")]
    assert summary["unreadable"]["paths"] == [str(data / "video" / "3_ego" / "ego_broken.mp4")]
    assert [len(p) for _, p in answerer.calls] == [1, 1, 2, 1]
    assert all(f == [0, 3, 7, 11] for f, _ in answerer.calls)
    assert answerer.calls[2][1][1] == ("Where is the dog at the end?\n(A) garden\n(B) house\n(C) car\n(D) park\n"
                                       "Answer with the option's letter from the given choices directly.")


def test_resume(data, tmp_path):
    full, resumed, answerer, kept = resume("mlvu", data, tmp_path, SCRIPT, keep=4, **SETTINGS)
    assert kept == ["count/0", "ego/0", "needle/0", "order/0"]
    assert answerer.asked == ["girl in red", "dog at the end?", "main topic?"]
    assert resumed["scores"] == full["scores"]
