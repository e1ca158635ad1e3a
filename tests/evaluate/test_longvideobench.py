"""LongVideoBench over a fixture in the hub layout: subtitle interleaving, sampling, scores by hand, resume."""

import pytest

from tlv_jax.evaluate.longvideobench import interleave

from .fixtures import make_longvideobench, resume, run

INSTRUCTION = "Answer with the option's letter from the given choices directly."
SCRIPT = {
    "said first?": "A",  # lvb01_0, answer A: right
    # lvb01_1, answer C ("grey"): the parser compares option texts minus their last character, so "red" becomes
    # "re", found inside "grey" after "gre": E (red) is picked: wrong
    "last frame?": "The last frame is grey in colour overall",
    "has an offset?": "",  # lvb02_0, answer A: empty -> fallback, B for seed 0: wrong
    # lvb03_0: missing video; lvb04_0: corrupt -> wrong, never asked
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_longvideobench(tmp_path_factory.mktemp("lvb"))


def test_scores(data, tmp_path):
    summary, _ = run("longvideobench", data, tmp_path, SCRIPT)
    assert summary["scores"] == pytest.approx(
        {"duration 15": 50.0, "duration 60": 0.0, "duration 600": 0.0, "Overall": 20.0})
    assert (summary["questions"], summary["answered"], summary["fallbacks"]) == (5, 3, 1)
    assert (summary["missing"]["questions"], summary["unreadable"]["questions"]) == (1, 1)


def test_prompts_frames_and_batching(data, tmp_path):
    """16 frames asked of a 3 s clip (annotation duration 3): n = min(16, 3) = 3, indices int(12 / 3) * i."""
    _, answerer = run("longvideobench", data, tmp_path, SCRIPT)
    assert [f for f, _ in answerer.calls] == [[0, 4, 8], [0, 4, 8]]
    assert [len(p) for _, p in answerer.calls] == [2, 1]
    # frames at 0, 1, 2 s; "Hello there" (0.2-0.9 s) follows frame 0, "Second line" frame 1, "Never shown" has no
    # frame inside its widened span (2.2-3.2 s) and is dropped; the template strips "<image>" from "question: <image>"
    assert answerer.calls[0][1][0] == (
        "subtitles:[image]Hello there[image]Second line[image]\nquestion: \nWhat is said first?\n"
        "A. hello there\nB. goodbye\nC. thank you\nD. sorry\n" + INSTRUCTION)
    # offset 10 s; the integer end of "Int end" becomes the duration (3) before the offset: span 1.2 .. -7 -> dropped
    assert answerer.calls[1][1][0] == (
        "subtitles:[image]Offset line[image][image]\nquestion: \nWhich line has an offset?\n"
        "A. offset line\nB. int end\nC. none\n" + INSTRUCTION)


def test_interleave_places_subtitles_by_midpoint_and_drops_uncovered_ones():
    frames = (0.0, 2.0, 4.0, 6.0)
    subs = [{"timestamp": [0.0, 3.0], "text": "long"},  # midpoint 1.5; frame 2 lies inside (0, 3)
            {"timestamp": [5.5, 5.9], "text": "short"},  # widened to (5.2, 6.2): frame 6 inside
            {"timestamp": [4.8, 5.0], "text": "gap"}]  # widened to (4.4, 5.4): no frame -> dropped
    assert interleave(frames, subs, 0.0, 10.0) == [None, "long", None, None, "short", None]
    assert interleave(frames, subs[2:], 0.0, 10.0) == [None, None, None, None]


def test_resume(data, tmp_path):
    full, resumed, answerer, kept = resume("longvideobench", data, tmp_path, SCRIPT, keep=1)
    assert kept == ["lvb01_0"]
    assert answerer.asked == ["last frame?", "has an offset?"]
    assert resumed["scores"] == full["scores"]
