"""Video-MME over a fixture in the hub layout: prompts, PTS frames, scores per duration checked by hand, resume."""

import pytest

from .fixtures import make_videomme, resume, run

INSTRUCTION = "Answer with the option's letter from the given choices directly."
SCRIPT = {
    "first frame?": "A",  # 001-1, answer A: right
    "sky in the video?": "The sky is blue, so the answer is (B).",  # 001-2, answer B: right by "(B)"
    "colour is the car?": "",  # 001-3, answer C: empty -> seeded fallback, B for seed 0: wrong
    "How many people": "Four people appear in the video at the same time",  # 301-1, D: right by option text
    "story take place?": "A",  # 601-1, answer B: wrong
    # 302-1: corrupt file; 602-1: missing file -> wrong, never asked
}
SETTINGS = dict(num_frames=4, max_frames=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_videomme(tmp_path_factory.mktemp("videomme"))


def test_scores_per_duration(data, tmp_path):
    summary, answerer = run("videomme", data, tmp_path, SCRIPT, **SETTINGS)
    assert summary["scores"] == pytest.approx({"short": 200 / 3, "medium": 50.0, "long": 0.0, "Overall": 300 / 7})
    assert list(summary["scores"]) == ["short", "medium", "long", "Overall"]
    assert (summary["questions"], summary["answered"], summary["correct"]) == (7, 5, 3)
    assert (summary["fallbacks"], summary["empty_outputs"]) == (1, 1)
    assert summary["missing"]["paths"] == [str(data / "data" / "missingVid602.mp4")]
    assert summary["unreadable"]["paths"] == [str(data / "data" / "corruptVid302.mp4")]


def test_prompts_batching_and_frames(data, tmp_path):
    _, answerer = run("videomme", data, tmp_path, SCRIPT, **SETTINGS)
    # the three questions on shortVid001 share one read; 4 PTS-seek frames of 12 = linspace(0, 11, 4)
    assert [len(prompts) for _, prompts in answerer.calls] == [3, 1, 1]
    assert all(frames == [0, 3, 7, 11] for frames, _ in answerer.calls)
    assert answerer.calls[0][1][0] == (
        "What colour is the first frame?\nA. Red.\nB. Blue.\nC. Green.\nD. Yellow.\n" + INSTRUCTION)


def test_one_fps_sampling(data, tmp_path):
    """num_frames -1: one frame per second of the 3 s clips (12 frames at 4 fps) -> linspace(0, 11, 3)."""
    _, answerer = run("videomme", data, tmp_path, SCRIPT, num_frames=-1, max_frames=64)
    assert answerer.calls[0][0] == [0, 5, 11]


def test_resume(data, tmp_path):
    full, resumed, answerer, kept = resume("videomme", data, tmp_path, SCRIPT, keep=3, **SETTINGS)
    assert kept == ["001-1", "001-2", "001-3"]
    assert answerer.asked == ["How many people", "story take place?"]
    assert resumed["scores"] == full["scores"]
