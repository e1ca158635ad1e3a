"""MMVU validation set: multiple-choice and open-ended questions, decord frames, micro average.

Video fields are hub URLs; as in the original, the hub prefix is replaced by the data folder. Open-ended answers are
scored by substring matching (`answers.open_ended_match`).
"""

from __future__ import annotations

from pathlib import Path

from tlv_jax.data import frames
from tlv_jax.evaluate.common import read_json_file, LETTER_INSTRUCTION, Benchmark, Clip, Question, VideoRef, accuracy, \
    accuracy_by_group, query_text

ANNOTATIONS = "validation.json"
HUB_PREFIX = "https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main"
OPEN_INSTRUCTION = "Answer the question directly without explanation."
TYPES = ("multiple-choice", "open-ended")


def load(data_dir: Path) -> list[Question]:
    """Questions of `<data>/validation.json`; a video URL `<hub>/videos/X/n.mp4` becomes `<data>/videos/X/n.mp4`."""
    path = data_dir / ANNOTATIONS
    return [_question(item, i, data_dir, path) for i, item in enumerate(read_json_file(path, "MMVU annotation file"))]


def _question(item: dict, i: int, data_dir: Path, source: Path) -> Question:
    try:
        kind, question = item["question_type"], item["question"]
        video = VideoRef(item["video"].replace(HUB_PREFIX, str(data_dir)), "decord")
        qid = str(item.get("id", i))
        if kind == "open-ended":
            text = "<image>" + "\n" + question + "\n" + OPEN_INSTRUCTION
            return Question(qid, video, query_text(text), item["answer"], kind)
        if kind == "multiple-choice":
            choices = dict(item["choices"])
            if not choices:
                raise ValueError(f"{source}: item {i} ({qid}) is multiple-choice without choices")
            question = question + "\n" + "\n".join(f"{key}. {value}" for key, value in choices.items())
            text = "<image>" + "\n" + question + "\n" + LETTER_INSTRUCTION
            return Question(qid, video, query_text(text), item["answer"], kind, tuple(choices), choices)
    except KeyError as err:
        raise ValueError(f"{source}: item {i} has no field {err}") from None
    raise ValueError(f"{source}: item {i}: unknown question_type {kind!r} (expected one of {TYPES})")


def read(ref: VideoRef, num_frames: int, max_frames: int) -> Clip:
    return Clip(frames.read_frames(ref.path, num_frames, max_frames))


def aggregate(records: list[dict]) -> dict[str, float]:
    return {**accuracy_by_group(records, TYPES), "Avg": accuracy(records)}


BENCHMARK = Benchmark("mmvu", load, read, aggregate)
