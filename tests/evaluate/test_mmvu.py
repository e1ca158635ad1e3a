"""MMVU over a fixture of validation.json (hub URLs rewritten to the folder): MC + open-ended, micro Avg, resume."""

import pytest

from .fixtures import make_mmvu, resume, run

SCRIPT = {
    "Which reaction": "B",  # validation_0, MC answer B: right
    "What gas": " Hydrogen gas is produced",  # validation_1, open "Hydrogen": inside the longer output: right
    "painting technique": "Glazing and impasto are both visible here, mostly impasto",  # MC A: last text match A
    "Who painted": "Claude Monet",  # validation_3, open "Vincent van Gogh": wrong
    # validation_4: video missing (Biology/7.mp4); validation_5: corrupt (Physics/9.mp4) -> wrong, never asked
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mmvu(tmp_path_factory.mktemp("mmvu"))


def test_scores(data, tmp_path):
    summary, answerer = run("mmvu", data, tmp_path, SCRIPT, num_frames=-1, max_frames=64)
    assert summary["scores"] == pytest.approx({"multiple-choice": 200 / 3, "open-ended": 100 / 3, "Avg": 50.0})
    assert (summary["questions"], summary["answered"], summary["fallbacks"]) == (6, 4, 0)
    assert summary["missing"]["paths"] == [str(data / "videos" / "Biology" / "7.mp4")]
    assert summary["unreadable"]["paths"] == [str(data / "videos" / "Physics" / "9.mp4")]
    # mmvu.sh's 1 fps with max 64: 3 frames of the 3 s clips, linspace(0, 11, 3); two questions per video
    assert answerer.calls == [([0, 5, 11], answerer.calls[0][1]), ([0, 5, 11], answerer.calls[1][1])]
    assert answerer.calls[0][1] == [
        "Which reaction is shown?\nA. Combustion\nB. Neutralization\nC. Electrolysis\nD. Fermentation\n"
        "E. Oxidation\nAnswer with the option's letter from the given choices directly.",
        "What gas is produced in the video?\nAnswer the question directly without explanation.",
    ]


def test_resume(data, tmp_path):
    full, resumed, answerer, kept = resume("mmvu", data, tmp_path, SCRIPT, keep=2, num_frames=4, max_frames=4)
    assert kept == ["validation_0", "validation_1"]
    assert answerer.asked == ["painting technique", "Who painted"]
    assert resumed["scores"] == full["scores"]
