"""Small fixture sets in each benchmark's exact file layout, with tiny generated videos.

Every decoded frame is one flat grey level, `level(i) = 10 + 20 * i` for frame i (for jpg frame folders, i is the file
number), so a test can tell which frames a reader picked (`frame_indices`). Each set has, besides good videos, one
video that is referenced but absent and one file that is not a video. Question texts are unique so a scripted answerer
can recognise them inside the prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
from PIL import Image

SIZE = 32  # frame height and width (decord 0.6.0 mis-decodes some widths; 32 is safe)
CORRUPT_BYTES = b"\x00\x00\x00\x18ftypmp42 this is not a video " * 8
MMVU_URL = "https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main"


def level(i: int) -> int:
    return 10 + 20 * i


def frame_indices(frames: np.ndarray) -> list[int]:
    """The frame numbers of decoded fixture frames (inverse of `level`)."""
    means = frames.reshape(frames.shape[0], -1).astype(np.float64).mean(axis=1)
    return [int(round((m - 10) / 20)) for m in means]


def write_video(path: Path, num_frames: int = 12, fps: int = 4, codec: str = "libx264") -> Path:
    """A constant-frame-rate video whose frame i is the flat grey `level(i)`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            image = np.full((SIZE, SIZE, 3), level(i), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(CORRUPT_BYTES)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------- Video-MME
def _vm(qid, video, duration, question, options, answer):
    return dict(video_id=qid.split("-")[0], duration=duration, domain="Knowledge", sub_category="Humanity & History",
                url=f"https://www.youtube.com/watch?v={video}", videoID=video, question_id=qid,
                task_type="Object Recognition", question=question, options=options, answer=answer)


COLORS = ["A. Red.", "B. Blue.", "C. Green.", "D. Yellow."]
VIDEOMME_ROWS = [
    _vm("001-1", "shortVid001", "short", "What colour is the first frame?", COLORS, "A"),
    _vm("001-2", "shortVid001", "short", "What colour is the sky in the video?", COLORS, "B"),
    _vm("001-3", "shortVid001", "short", "What colour is the car?", COLORS, "C"),
    _vm("301-1", "mediumVid301", "medium", "How many people appear?",
        ["A. One.", "B. Two.", "C. Three.", "D. Four."], "D"),
    _vm("302-1", "corruptVid302", "medium", "What is the man holding?",
        ["A. A cup.", "B. A phone.", "C. A book.", "D. A pen."], "A"),
    _vm("601-1", "longVid601", "long", "Where does the story take place?",
        ["A. In a forest.", "B. On a ship.", "C. In a city.", "D. In a desert."], "B"),
    _vm("602-1", "missingVid602", "long", "Which animal is shown last?",
        ["A. Cat.", "B. Dog.", "C. Horse.", "D. Bird."], "C"),
]


def make_videomme(root: Path) -> Path:
    """`videomme/test-00000-of-00001.parquet` and `data/{videoID}.mp4` as in the hub repository."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "videomme").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(VIDEOMME_ROWS), root / "videomme" / "test-00000-of-00001.parquet")
    for name in ("shortVid001", "mediumVid301", "longVid601"):
        write_video(root / "data" / f"{name}.mp4")
    write_corrupt(root / "data" / "corruptVid302.mp4")
    return root


# ----------------------------------------------------------------------------------------------------------- MVBench
MVBENCH_FILES = {  # task -> json file, as in the original's data_list
    "Fine-grained Pose": "fine_grained_pose.json", "Episodic Reasoning": "episodic_reasoning.json",
    "Action Sequence": "action_sequence.json", "Action Prediction": "action_prediction.json",
    "Action Antonym": "action_antonym.json", "Fine-grained Action": "fine_grained_action.json",
    "Unexpected Action": "unexpected_action.json", "Object Existence": "object_existence.json",
    "Object Interaction": "object_interaction.json", "Object Shuffle": "object_shuffle.json",
    "Moving Direction": "moving_direction.json", "Action Localization": "action_localization.json",
    "Scene Transition": "scene_transition.json", "Action Count": "action_count.json",
    "Moving Count": "moving_count.json", "Moving Attribute": "moving_attribute.json",
    "State Change": "state_change.json", "Character Order": "character_order.json",
    "Egocentric Navigation": "egocentric_navigation.json", "Counterfactual Inference": "counterfactual_inference.json",
}
MVBENCH_DATA = {
    "Action Sequence": [  # 'video' type with bounds: the bounds are ignored, so both share one read
        dict(video="ACT01.mp4", question="What did the person do first?", candidates=["Sat down.", "Opened the door."],
             answer="Opened the door.", start=0.5, end=2.0),
        dict(video="ACT01.mp4", question="What did the person do after sitting?",
             candidates=["Ate food.", "Took a book.", "Slept."], answer="Took a book.", start=1.0, end=2.5),
    ],
    "Fine-grained Pose": [dict(video="S001C001P001R001A001_rgb.avi", question="Which pose is performed?",
                               candidates=["drink water", "eat meal", "brush teeth"], answer="drink water")],
    "Action Antonym": [dict(video="12345.webm", question="What is the action in the video?",
                            candidates=["pushing something", "pulling something", "not sure"],
                            answer="pulling something")],
    "Episodic Reasoning": [  # 'frame' type: a folder of jpgs at 3 fps, first index 1, bounds used
        dict(video="s01e01_seg01_clip_00", question="Why is Sheldon upset?",
             candidates=["He lost.", "He won.", "He left.", "He slept.", "He sang."], answer="He lost.",
             start=1.0, end=3.0),
        dict(video="s01e01_seg01_clip_00", question="Who enters the room?",
             candidates=["Leonard", "Penny", "Howard", "Raj", "Amy"], answer="Penny", start=0.0, end=4.0),
    ],
    "Object Shuffle": [dict(video="missing_video.mp4", question="Where is the ball hidden?",
                            candidates=["left cup", "middle cup", "right cup"], answer="left cup")],
    "Action Count": [dict(video="corrupt_video.mp4", question="How many times did he jump?",
                          candidates=["1", "2", "3"], answer="3")],
    "Moving Count": [dict(video="video_10001.mp4", question="How many metal objects are moving?",
                          candidates=["0", "1", "2"], answer="5")],  # answer not among candidates -> "@"
}
MVBENCH_PREFIX = {  # task -> video folder under video/, as in data_list
    "Action Sequence": "star/Charades_v1_480", "Fine-grained Pose": "nturgbd", "Action Antonym": "ssv2_video",
    "Episodic Reasoning": "tvqa/frames_fps3_hq", "Object Shuffle": "perception/videos",
    "Action Count": "perception/videos", "Moving Count": "clevrer/video_validation",
}


def make_mvbench(root: Path) -> Path:
    """`json/<task>.json` (all 20, most empty) and `video/<dataset folder>/...` as in the hub repository."""
    for task, filename in MVBENCH_FILES.items():
        write_json(root / "json" / filename, MVBENCH_DATA.get(task, []))
    video = root / "video"
    write_video(video / MVBENCH_PREFIX["Action Sequence"] / "ACT01.mp4")
    write_video(video / MVBENCH_PREFIX["Fine-grained Pose"] / "S001C001P001R001A001_rgb.avi", codec="mpeg4")
    write_video(video / MVBENCH_PREFIX["Action Antonym"] / "12345.webm", codec="libvpx-vp9")
    write_video(video / MVBENCH_PREFIX["Moving Count"] / "video_10001.mp4")
    write_corrupt(video / MVBENCH_PREFIX["Action Count"] / "corrupt_video.mp4")
    folder = video / MVBENCH_PREFIX["Episodic Reasoning"] / "s01e01_seg01_clip_00"
    folder.mkdir(parents=True, exist_ok=True)
    for j in range(1, 13):
        Image.fromarray(np.full((SIZE, SIZE, 3), level(j), np.uint8)).save(folder / f"{j:05d}.jpg", quality=95)
    return root


# ---------------------------------------------------------------------------------------------------- LongVideoBench
def _lvb(qid, video, subtitle, question, candidates, correct, duration=3.0, start=0.0, group=15):
    return dict(video_id=video.split(".")[0], question=question, question_wo_referring_query=question,
                candidates=candidates, correct_choice=correct, position=[0], topic_category="NP-News-Programs",
                question_category="S2E", level="L1-Perception", id=qid, video_path=video, subtitle_path=subtitle,
                duration_group=group, starting_timestamp_for_subtitles=start, duration=duration, view_count=1000)


LVB_SUBTITLES = {
    "lvb01_en.json": [  # "start/end/line" format
        {"start": "00:00:00.200", "end": "00:00:00.900", "line": "Hello there"},
        {"start": "00:00:01.400", "end": "00:00:01.900", "line": "Second line"},
        {"start": "00:00:02.600", "end": "00:00:02.800", "line": "Never shown"},  # no frame within its span
    ],
    "lvb02_en.json": [  # "timestamp/text" format, offset by starting_timestamp_for_subtitles = 10
        {"timestamp": [10.5, 11.0], "text": "Offset line"},
        {"timestamp": [11.2, 12], "text": "Int end"},  # quirk: a non-float end becomes the duration (3.0)
    ],
    "lvb03_en.json": [], "lvb04_en.json": [],
}
LVB_ROWS = [
    _lvb("lvb01_0", "lvb01.mp4", "lvb01_en.json", "What is said first?",
         ["hello there", "goodbye", "thank you", "sorry"], 0),
    _lvb("lvb01_1", "lvb01.mp4", "lvb01_en.json", "What colour is the last frame?",
         ["black", "white", "grey", "red", "blue"], 2),
    _lvb("lvb02_0", "lvb02.mp4", "lvb02_en.json", "Which line has an offset?",
         ["offset line", "int end", "none"], 0, start=10.0, group=60),
    _lvb("lvb03_0", "lvb03.mp4", "lvb03_en.json", "Is the video missing?", ["yes", "no"], 0, group=60),
    _lvb("lvb04_0", "lvb04.mp4", "lvb04_en.json", "Is the video broken?", ["yes", "no"], 0, group=600),
]


def make_longvideobench(root: Path) -> Path:
    """`lvb_val.json`, `videos/` and `subtitles/` as in the hub repository."""
    write_json(root / "lvb_val.json", LVB_ROWS)
    for name, subtitles in LVB_SUBTITLES.items():
        write_json(root / "subtitles" / name, subtitles)
    write_video(root / "videos" / "lvb01.mp4")
    write_video(root / "videos" / "lvb02.mp4")
    write_corrupt(root / "videos" / "lvb04.mp4")
    return root


# -------------------------------------------------------------------------------------------------------------- MLVU
def _mlvu(video, question, candidates, answer, task):
    return dict(video=video, duration=3.0, question=question, candidates=candidates, answer=answer,
                question_type=task)


MLVU_DATA = {
    "1_plotQA.json": [
        _mlvu("plot1.mp4", "What does the girl in red do?", ["dances", "runs", "sings", "cries"], "runs", "plotQA"),
        _mlvu("plot1.mp4", "Where is the dog at the end?", ["garden", "house", "car", "park"], "park", "plotQA"),
    ],
    "2_needle.json": [_mlvu("needle1.mp4", "What object appears briefly?", ["a hat", "a key"], "a key", "needle")],
    "3_ego.json": [_mlvu("ego_broken.mp4", "What did I put in the bag?", ["keys", "phone"], "keys", "ego")],
    "4_count.json": [_mlvu("count_missing.mp4", "How many birds fly by?", ["1", "2", "3"], "2", "count")],
    "5_order.json": [_mlvu("order1.mp4", "In what order do events happen?", ["1-2-3", "3-2-1"], "1-2-3", "order")],
    "6_anomaly_reco.json": [],
    "7_topic_reasoning.json": [_mlvu("topic1.mp4", "What is the main topic?", ["cooking", "sports", "travel"],
                                     "travel", "topic_reasoning")],
}


def make_mlvu(root: Path) -> Path:
    """`json/<k_task>.json` (the 7 M-Avg tasks) and `video/<k_task>/...` as in the MLVU dev set."""
    for filename, rows in MLVU_DATA.items():
        write_json(root / "json" / filename, rows)
    video = root / "video"
    write_video(video / "1_plotQA" / "plot1.mp4")
    write_video(video / "2_needle" / "needle1.mp4")
    write_corrupt(video / "3_ego" / "ego_broken.mp4")
    write_video(video / "5_order" / "order1.mp4")
    write_video(video / "7_topic_reasoning" / "topic1.mp4")
    return root


# -------------------------------------------------------------------------------------------------------------- MMVU
def _mmvu(qid, subject, n, question, qtype, answer, choices=None):
    return dict(id=qid, video=f"{MMVU_URL}/videos/{subject}/{n}.mp4", youtube_url=None, question=question,
                choices=choices or {}, answer=answer, question_type=qtype,
                metadata=dict(subject=subject, textbook="", rationale="", knowledge_concepts=[]))


MMVU_ROWS = [
    _mmvu("validation_0", "Chemistry", 0, "Which reaction is shown?", "multiple-choice", "B",
          {"A": "Combustion", "B": "Neutralization", "C": "Electrolysis", "D": "Fermentation", "E": "Oxidation"}),
    _mmvu("validation_1", "Chemistry", 0, "What gas is produced in the video?", "open-ended", "Hydrogen"),
    _mmvu("validation_2", "Art", 3, "Which painting technique is used?", "multiple-choice", "A",
          {"A": "Impasto", "B": "Fresco", "C": "Glazing", "D": "Sfumato"}),
    _mmvu("validation_3", "Art", 3, "Who painted the work shown?", "open-ended", "Vincent van Gogh"),
    _mmvu("validation_4", "Biology", 7, "Which organelle is highlighted?", "multiple-choice", "C",
          {"A": "Nucleus", "B": "Ribosome", "C": "Mitochondrion", "D": "Vacuole"}),
    _mmvu("validation_5", "Physics", 9, "What law is demonstrated?", "open-ended", "Newton's third law"),
]


def make_mmvu(root: Path) -> Path:
    """`validation.json` (video fields are hub URLs, rewritten by the reader) and `videos/<Subject>/<n>.mp4`."""
    write_json(root / "validation.json", MMVU_ROWS)
    write_video(root / "videos" / "Chemistry" / "0.mp4")
    write_video(root / "videos" / "Art" / "3.mp4")
    write_corrupt(root / "videos" / "Physics" / "9.mp4")  # Biology/7.mp4 is missing
    return root


MAKERS = dict(videomme=make_videomme, mvbench=make_mvbench, longvideobench=make_longvideobench, mlvu=make_mlvu,
              mmvu=make_mmvu)


class ScriptedAnswerer:
    """A test double for the model: answers each prompt with the output scripted for the question text inside it,
    and records every call (the frame numbers it was given, the prompts) so tests can check batching and sampling."""

    def __init__(self, script: dict[str, str]):
        self.script = script
        self.calls: list[tuple[list[int], list[str]]] = []
        self.asked: list[str] = []  # the script keys found, in order

    def answer(self, frames: np.ndarray, prompts: list[str], max_new_tokens: int) -> list[str]:
        assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
        self.calls.append((frame_indices(frames), list(prompts)))
        return [self._output(p) for p in prompts]

    def _output(self, prompt: str) -> str:
        keys = [k for k in self.script if k in prompt]
        assert len(keys) == 1, f"prompt matches {keys} of the script: {prompt!r}"
        self.asked.append(keys[0])
        return self.script[keys[0]]

    @property
    def prompts(self) -> list[str]:
        return [p for _, prompts in self.calls for p in prompts]


def run(name: str, data: Path, out: Path, script: dict[str, str], **settings) -> tuple[dict, ScriptedAnswerer]:
    """One whole evaluation of benchmark `name` with a scripted answerer: (summary, answerer)."""
    from tlv_jax.evaluate import benchmark, evaluate

    answerer = ScriptedAnswerer(script)
    return evaluate(benchmark(name), data, answerer, out, progress=False, **settings), answerer


def resume(name: str, data: Path, tmp: Path, script: dict[str, str], keep: int, **settings):
    """A full run, then a run into a folder holding only the first `keep` prediction lines (and a torn line).

    Returns (full summary, resumed summary, the second run's answerer, the ids of the kept lines).
    """
    from tlv_jax.evaluate.common import PREDICTIONS

    full, _ = run(name, data, tmp / "full", script, **settings)
    lines = (tmp / "full" / PREDICTIONS).read_text(encoding="utf-8").splitlines()
    (tmp / "part").mkdir()
    (tmp / "part" / "run.json").write_text((tmp / "full" / "run.json").read_text())
    (tmp / "part" / PREDICTIONS).write_text("\n".join(lines[:keep]) + "\n" + lines[keep][:20], encoding="utf-8")
    resumed, answerer = run(name, data, tmp / "part", script, **settings)
    kept = [json.loads(line)["id"] for line in lines[:keep]]
    return full, resumed, answerer, kept
