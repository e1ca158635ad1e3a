"""MLVU dev set: 7 multiple-choice task files, PyAV PTS-seek frames, per-task accuracy and M-Avg.

M-Avg is the mean of the task accuracies (not the micro average), over the tasks that have questions.
"""

from __future__ import annotations

from pathlib import Path

from tlv_jax.data import frames
from tlv_jax.evaluate.common import (read_json_file, Benchmark, Clip, Question,
                                     VideoRef, accuracy_by_group, candidates_question)

QUESTIONS = Path("json")
VIDEOS = Path("video")

# task -> file stem (also the video folder), in the original's data_list order
TASKS = {
    "count": "4_count",
    "ego": "3_ego",
    "needle": "2_needle",
    "order": "5_order",
    "plotQA": "1_plotQA",
    "anomaly_reco": "6_anomaly_reco",
    "topic_reasoning": "7_topic_reasoning",
}


def load(data_dir: Path) -> list[Question]:
    """Questions of `<data>/json/<k_task>.json`, videos `<data>/video/<k_task>/<video>`."""
    questions = []
    for task, stem in TASKS.items():
        path = data_dir / QUESTIONS / f"{stem}.json"
        items = read_json_file(path, "MLVU task file (expected json/<k_task>.json for the 7 tasks)")
        for i, item in enumerate(items):
            try:
                questions.append(Question(
                    qid=f"{task}/{i}",
                    video=VideoRef(str(data_dir / VIDEOS / stem / item["video"]), "pts"),
                    group=task,
                    **candidates_question(item["question"], item["candidates"], item["answer"]),
                ))
            except KeyError as err:
                raise ValueError(f"{path}: item {i} has no field {err}") from None
    return questions


def read(ref: VideoRef, num_frames: int, max_frames: int) -> Clip:
    return Clip(frames.read_frames_pts(ref.path, num_frames, max_frames))


def aggregate(records: list[dict]) -> dict[str, float]:
    tasks = accuracy_by_group(records, list(TASKS))
    return {**tasks, "M-Avg": sum(tasks.values()) / len(tasks) if tasks else 0.0}


BENCHMARK = Benchmark("mlvu", load, read, aggregate)
