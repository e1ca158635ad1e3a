"""The shared loop: batching by video, JSONL predictions and resume, failures counted, summary and table."""

import json
from pathlib import Path

import numpy as np
import pytest

from tlv_jax.data.frames import VideoDecodeError
from tlv_jax.evaluate.common import PREDICTIONS, Benchmark, Clip, Question, VideoRef, accuracy, accuracy_by_group, \
    evaluate, format_table, read_predictions

from .fixtures import ScriptedAnswerer, level


def _toy(tmp_path: Path) -> Benchmark:
    """Four questions on two readable videos, one on a missing file, one on a file the reader rejects."""
    for name in ("v1", "v2", "bad"):
        (tmp_path / name).write_text("x")
    letters = ("A", "B", "C")

    def q(qid, video, text, answer, group="g1"):
        return Question(qid, VideoRef(str(tmp_path / video), "toy"), text, answer, group, letters,
                        {"A": "apples", "B": "bananas", "C": "cherries"})

    questions = [q("q1", "v1", "first?", "A"), q("q2", "v2", "second?", "B", "g2"), q("q3", "v1", "third?", "C"),
                 q("q4", "gone", "fourth?", "A", "g2"), q("q5", "bad", "fifth?", "B", "g2"),
                 q("q6", "v2", "sixth?", "A", "g2")]

    def read(ref, num_frames, max_frames):
        if ref.path.endswith("bad"):
            raise VideoDecodeError(ref.path, "cannot decode")
        return Clip(np.stack([np.full((4, 4, 3), level(i), np.uint8) for i in range(num_frames)]))

    def aggregate(records):
        return {**accuracy_by_group(records), "Avg": accuracy(records)}

    return Benchmark("toy", lambda data_dir: questions, read, aggregate)


SCRIPT = {"first?": "A", "second?": "(C)", "third?": "", "sixth?": "It is A"}


def test_batches_by_video_and_counts_failures(tmp_path):
    answerer = ScriptedAnswerer(SCRIPT)
    summary = evaluate(_toy(tmp_path), tmp_path, answerer, tmp_path / "out", num_frames=3, progress=False)
    # one call per readable video, with all of its questions, in first-appearance order
    assert [prompts for _, prompts in answerer.calls] == [["first?", "third?"], ["second?", "sixth?"]]
    assert [frames for frames, _ in answerer.calls] == [[0, 1, 2], [0, 1, 2]]
    # q1 right, q2 wrong, q3 empty -> seeded fallback, q6 right ("A" first character), q4/q5 failures -> wrong
    fallback = json.loads((tmp_path / "out" / PREDICTIONS).read_text().splitlines()[1])
    assert fallback["id"] == "q3" and fallback["fallback"]
    q3 = fallback["pred"] == "C"
    assert summary["scores"] == pytest.approx({"g1": 100 * (1 + q3) / 2, "g2": 25.0, "Avg": 100 * (2 + q3) / 6})
    assert summary["missing"] == dict(videos=1, questions=1, paths=[str(tmp_path / "gone")])
    assert summary["unreadable"]["questions"] == 1
    assert "cannot decode" in summary["unreadable"]["errors"][str(tmp_path / "bad")]
    assert (summary["answered"], summary["fallbacks"], summary["empty_outputs"]) == (4, 1, 1)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved == summary
    table = format_table(summary)
    assert "Avg" in table and "missing videos (questions)" in table


def test_fallback_is_reproducible(tmp_path):
    runs = [evaluate(_toy(tmp_path), tmp_path, ScriptedAnswerer(SCRIPT), tmp_path / f"out{i}", num_frames=1,
                     progress=False) for i in range(2)]
    preds = [read_predictions(tmp_path / f"out{i}" / PREDICTIONS)["q3"]["pred"] for i in range(2)]
    assert preds[0] == preds[1] and runs[0]["scores"] == runs[1]["scores"]


def test_resume_answers_only_the_remaining_ids(tmp_path):
    full = evaluate(_toy(tmp_path), tmp_path, ScriptedAnswerer(SCRIPT), tmp_path / "full", num_frames=1,
                    progress=False)
    out = tmp_path / "resumed"
    evaluate(_toy(tmp_path), tmp_path, ScriptedAnswerer(SCRIPT), out, num_frames=1, progress=False)
    lines = (out / PREDICTIONS).read_text().splitlines()
    # keep the first video's two answers and a line cut short by a crash
    (out / PREDICTIONS).write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])
    again = ScriptedAnswerer(SCRIPT)
    resumed = evaluate(_toy(tmp_path), tmp_path, again, out, num_frames=1, progress=False)
    assert again.prompts == ["second?", "sixth?"]
    assert resumed["scores"] == full["scores"]
    assert sorted(read_predictions(out / PREDICTIONS)) == ["q1", "q2", "q3", "q4", "q5", "q6"]
    assert len((out / PREDICTIONS).read_text().splitlines()) == 6
    # a complete file: nothing left to ask
    idle = ScriptedAnswerer(SCRIPT)
    evaluate(_toy(tmp_path), tmp_path, idle, out, num_frames=1, progress=False)
    assert idle.calls == []


def test_resume_retries_videos_that_failed(tmp_path):
    out = tmp_path / "out"
    first = evaluate(_toy(tmp_path), tmp_path, ScriptedAnswerer(SCRIPT), out, num_frames=1, progress=False)
    assert first["missing"]["questions"] == 1
    (tmp_path / "gone").write_text("x")  # the missing video arrives
    again = ScriptedAnswerer({**SCRIPT, "fourth?": "A"})
    second = evaluate(_toy(tmp_path), tmp_path, again, out, num_frames=1, progress=False)
    assert again.prompts == ["fourth?"]  # the unreadable one failed again without reaching the answerer
    assert second["missing"]["questions"] == 0 and second["unreadable"]["questions"] == 1
    assert second["correct"] == first["correct"] + 1
    assert read_predictions(out / PREDICTIONS)["q4"]["status"] == "ok"


def test_limit_takes_the_first_questions(tmp_path):
    answerer = ScriptedAnswerer(SCRIPT)
    summary = evaluate(_toy(tmp_path), tmp_path, answerer, tmp_path / "out", num_frames=1, limit=2, progress=False)
    assert answerer.prompts == ["first?", "second?"] and summary["questions"] == 2


def test_resume_with_other_settings_is_refused(tmp_path):
    evaluate(_toy(tmp_path), tmp_path, ScriptedAnswerer(SCRIPT), tmp_path / "out", num_frames=1, progress=False)
    with pytest.raises(ValueError, match="num_frames"):
        evaluate(_toy(tmp_path), tmp_path, ScriptedAnswerer(SCRIPT), tmp_path / "out", num_frames=2, progress=False)


def test_wrong_number_of_outputs_is_an_error(tmp_path):
    class Short(ScriptedAnswerer):
        def answer(self, frames, prompts, max_new_tokens):
            return super().answer(frames, prompts, max_new_tokens)[:1]

    with pytest.raises(RuntimeError, match="1 outputs for 2 prompts"):
        evaluate(_toy(tmp_path), tmp_path, Short(SCRIPT), tmp_path / "out", num_frames=1, progress=False)


def test_a_bug_in_a_reader_is_not_hidden_as_an_unreadable_video(tmp_path):
    toy = _toy(tmp_path)

    def broken(ref, num_frames, max_frames):
        raise TypeError("a programming error")

    with pytest.raises(TypeError, match="programming error"):
        evaluate(Benchmark("toy", toy.load, broken, toy.aggregate), tmp_path, ScriptedAnswerer(SCRIPT),
                 tmp_path / "out", progress=False)


def test_duplicate_ids_are_refused(tmp_path):
    toy = _toy(tmp_path)
    questions = toy.load(tmp_path)
    twice = Benchmark("toy", lambda d: questions + questions[:1], toy.read, toy.aggregate)
    with pytest.raises(ValueError, match="not unique"):
        evaluate(twice, tmp_path, ScriptedAnswerer(SCRIPT), tmp_path / "out", progress=False)


def test_open_ended_scoring(tmp_path):
    (tmp_path / "v").write_text("x")
    ref = VideoRef(str(tmp_path / "v"), "toy")
    questions = [Question("o1", ref, "capital?", "Paris", "open-ended"),
                 Question("o2", ref, "river?", "Seine", "open-ended")]
    toy = Benchmark("open", lambda d: questions, lambda r, n, m: Clip(np.zeros((1, 2, 2, 3), np.uint8)),
                    lambda records: {"Avg": accuracy(records)})
    summary = evaluate(toy, tmp_path, ScriptedAnswerer({"capital?": " The capital is Paris.", "river?": "Loire"}),
                       tmp_path / "out", progress=False)
    assert summary["scores"] == {"Avg": 50.0} and summary["fallbacks"] == 0
