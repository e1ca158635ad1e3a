"""MVBench over a fixture in the hub layout: the four readers of data_list, per-task scores and Avg, resume."""

import pytest

from tlv_jax.evaluate import benchmark

from .fixtures import make_mvbench, resume, run

SCRIPT = {
    "Which pose": "(A) drink water",  # Fine-grained Pose (avi), answer A: right
    "Sheldon upset?": "A",  # Episodic Reasoning (jpg folder) 0, answer A: right
    "enters the room?": "C",  # Episodic Reasoning 1, answer B (Penny): wrong
    "do first?": "B. Opened the door.",  # Action Sequence 0, answer B: right
    "after sitting?": "I am not sure.",  # Action Sequence 1, answer B: fallback, C for seed 0: wrong
    "action in the video?": "The person is pulling something across the table",  # Antonym (webm), B by text: right
    "metal objects": "C",  # Moving Count, answer "5" is no candidate -> "@": wrong whatever the output
    # Object Shuffle: missing video; Action Count: corrupt video -> wrong, never asked
}
SETTINGS = dict(num_frames=4, max_frames=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mvbench(tmp_path_factory.mktemp("mvbench"))


def test_scores_per_task_and_micro_average(data, tmp_path):
    summary, _ = run("mvbench", data, tmp_path, SCRIPT, **SETTINGS)
    assert summary["scores"] == pytest.approx({
        "Fine-grained Pose": 100.0, "Episodic Reasoning": 50.0, "Action Sequence": 50.0, "Action Antonym": 100.0,
        "Object Shuffle": 0.0, "Action Count": 0.0, "Moving Count": 0.0, "Avg": 400 / 9})
    assert (summary["questions"], summary["answered"], summary["fallbacks"]) == (9, 7, 1)
    assert (summary["missing"]["questions"], summary["unreadable"]["questions"]) == (1, 1)


def test_readers_and_batching(data, tmp_path):
    _, answerer = run("mvbench", data, tmp_path, SCRIPT, **SETTINGS)
    frames = [f for f, _ in answerer.calls]
    sizes = [len(p) for _, p in answerer.calls]
    # avi: get_index over 12 frames at 4 fps, whole clip: seg 2.75 -> int(1.375 + round(2.75 k)) = 1, 4, 7, 9
    # jpg folder, 12 files at 3 fps from 1, bounds (1, 3): frames 3..9, seg 1.5 -> 3, 5, 6, 7
    # jpg folder, bounds (0, 4): frames 1..12, seg 2.75 -> 2, 5, 8, 10 (a separate read: other bounds)
    # 'video' Action Sequence: bounds ignored, linspace(0, 11, 4); its two questions share one read
    # webm: as avi; Moving Count 'video': linspace
    assert frames == [[1, 4, 7, 9], [3, 5, 6, 7], [2, 5, 8, 10], [0, 3, 7, 11], [1, 4, 7, 9], [0, 3, 7, 11]]
    assert sizes == [1, 1, 1, 2, 1, 1]
    assert answerer.calls[3][1][0] == ("What did the person do first?\n(A) Sat down.\n(B) Opened the door.\n"
                                       "Answer with the option's letter from the given choices directly.")


def test_answer_not_among_candidates_is_at_sign(data):
    moving = [q for q in benchmark("mvbench").load(data) if q.group == "Moving Count"]
    assert [q.answer for q in moving] == ["@"]


def test_all_twenty_task_files_are_required(data, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data / "json", copy / "json")
    (copy / "json" / "state_change.json").unlink()
    with pytest.raises(FileNotFoundError, match="state_change.json"):
        benchmark("mvbench").load(copy)


def test_resume(data, tmp_path):
    full, resumed, answerer, kept = resume("mvbench", data, tmp_path, SCRIPT, keep=4, **SETTINGS)
    assert kept == ["Fine-grained Pose/0", "Episodic Reasoning/0", "Episodic Reasoning/1", "Action Sequence/0"]
    # Action Sequence/1 shares the video of a kept answer but is asked again on its own
    assert answerer.asked == ["after sitting?", "action in the video?", "metal objects"]
    assert resumed["scores"] == full["scores"]
