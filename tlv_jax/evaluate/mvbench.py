"""MVBench: 20 task files, four ways of reading frames, accuracy per task and the micro average.

How each task is read follows the original's `data_list`: `video` files are decoded whole and sampled uniformly (their
start/end bounds are ignored, as in the original); `video_avi` / `video_webm` are sampled with `get_index` on decord's
frame count and fps; `frame` tasks (TVQA) are jpg folders at 3 fps numbered from 1, sampled with `get_index` and the
question's bounds.
"""

from __future__ import annotations

from pathlib import Path

from tlv_jax.data import frames
from tlv_jax.evaluate.common import read_json_file, Benchmark, Clip, Question, VideoRef, accuracy, accuracy_by_group, \
    candidates_question

QUESTIONS = Path("json")
VIDEOS = Path("video")
FRAME_FOLDER_FPS = 3

# task -> (json file, video folder under video/, reader, uses start/end), in the original's order
TASKS = {
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd", "video_avi", False),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq", "frame", True),
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480", "video", True),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480", "video", True),
    "Action Antonym": ("action_antonym.json", "ssv2_video", "video_webm", False),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos", "video", False),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test", "video", False),
    "Object Existence": ("object_existence.json", "clevrer/video_validation", "video", False),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480", "video", True),
    "Object Shuffle": ("object_shuffle.json", "perception/videos", "video", False),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation", "video", False),
    "Action Localization": ("action_localization.json", "sta/sta_video", "video", True),
    "Scene Transition": ("scene_transition.json", "scene_qa/video", "video", False),
    "Action Count": ("action_count.json", "perception/videos", "video", False),
    "Moving Count": ("moving_count.json", "clevrer/video_validation", "video", False),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation", "video", False),
    "State Change": ("state_change.json", "perception/videos", "video", False),
    "Character Order": ("character_order.json", "perception/videos", "video", False),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa", "video", False),
    "Counterfactual Inference": ("counterfactual_inference.json", "clevrer/video_validation", "video", False),
}


def load(data_dir: Path) -> list[Question]:
    """Questions of `<data>/json/<task>.json` (all 20 files, as the original requires), videos under `<data>/video/`."""
    questions = []
    for task, (filename, folder, kind, bounded) in TASKS.items():
        path = data_dir / QUESTIONS / filename
        items = read_json_file(path, "MVBench task file (expected json/<task>.json for all 20 tasks)")
        for i, item in enumerate(items):
            questions.append(_question(task, i, item, data_dir / VIDEOS / folder, kind, bounded, path))
    return questions


def _question(task: str, i: int, item: dict, folder: Path, kind: str, bounded: bool, source: Path) -> Question:
    try:
        # the original reads bounds for every bounded task but only 'frame' readers use them
        bound = (float(item["start"]), float(item["end"])) if bounded and kind != "video" else None
        return Question(
            qid=f"{task}/{i}",
            video=VideoRef(str(folder / item["video"]), kind, bound),
            group=task,
            **candidates_question(item["question"], item["candidates"], item["answer"]),
        )
    except KeyError as err:
        raise ValueError(f"{source}: item {i} has no field {err}") from None


def read(ref: VideoRef, num_frames: int, max_frames: int) -> Clip:
    if ref.recipe == "video":
        return Clip(frames.read_frames(ref.path, num_frames, max_frames))
    if ref.recipe == "frame":
        count = len(list(Path(ref.path).iterdir()))  # the original's max_frame = number of files
        n = _count(num_frames, max_frames, count / FRAME_FOLDER_FPS)
        return Clip(frames.read_frame_files(ref.path, frames.mvbench_indices(n, FRAME_FOLDER_FPS, count, ref.bound, 1)))
    # video_avi / video_webm: indices from decord's frame count (max_frame = count - 1) and average fps
    return Clip(frames.read_frames_at(ref.path, lambda info: frames.mvbench_indices(
        _count(num_frames, max_frames, info.duration), info.fps, info.num_frames - 1, ref.bound, 0)))


def _count(num_frames: int, max_frames: int, duration: float) -> int:
    return num_frames if num_frames > 0 else frames.fps_count(duration, max_frames)


def aggregate(records: list[dict]) -> dict[str, float]:
    return {**accuracy_by_group(records, list(TASKS)), "Avg": accuracy(records)}


BENCHMARK = Benchmark("mvbench", load, read, aggregate)
