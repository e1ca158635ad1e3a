"""LongVideoBench validation set: frames interleaved with subtitles, accuracy overall and per duration group.

The prompt depends on the frames read: subtitles are placed between "[image]" marks by the frames' timestamps, as in
the original's `insert_subtitles_into_frames`, and the result goes before the question; the template then moves the
`<image>` of "question: <image>" to the front.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from tlv_jax.data import frames
from tlv_jax.evaluate.common import read_json_file, LETTER_INSTRUCTION, Benchmark, Clip, Question, VideoRef, accuracy, \
    accuracy_by_group, query_text

ANNOTATIONS = "lvb_val.json"
VIDEOS = Path("videos")
SUBTITLES = Path("subtitles")


def load(data_dir: Path) -> list[Question]:
    """Questions of `<data>/lvb_val.json`, videos in `<data>/videos/`, subtitles in `<data>/subtitles/`."""
    path = data_dir / ANNOTATIONS
    return [_question(item, data_dir, path, i)
            for i, item in enumerate(read_json_file(path, "LongVideoBench annotation file"))]


def _question(item: dict, data_dir: Path, source: Path, i: int) -> Question:
    try:
        options = [". ".join([chr(ord("A") + k), c]) for k, c in enumerate(item["candidates"])]
        tail = ["Question: " + item["question"], *options, LETTER_INSTRUCTION]
        question, option_lines = _question_and_options(tail)
        choices = tuple(opt.split(".")[0] for opt in option_lines)
        index2ans = {opt.split(".")[0]: opt.split(". ")[1][:-1] for opt in option_lines}
        subtitles = data_dir / SUBTITLES / item["subtitle_path"]
        group = str(item.get("duration_group", ""))
        return Question(
            qid=str(item["id"]),
            video=VideoRef(str(data_dir / VIDEOS / item["video_path"]), "lvb", duration=float(item["duration"])),
            prompt=partial(_prompt, subtitles, float(item["starting_timestamp_for_subtitles"]),
                           float(item["duration"]), question),
            answer=chr(ord("A") + item["correct_choice"]),
            group=group,
            choices=choices,
            index2ans=index2ans,
        )
    except (KeyError, IndexError) as err:
        raise ValueError(f"{source}: item {i} ({item.get('id')}): missing or malformed field {err}") from None


def _question_and_options(items: list[str]) -> tuple[str, list[str]]:
    """The original's `extract_question_and_following`: the question and what follows it, joined by newlines."""
    found, lines, options = False, [], []
    for item in items:
        if item.startswith("Question:"):
            lines.append(item.split("Question: ")[-1])
            found = True
        elif found:
            lines.append(item)
            if not item.startswith("Answer"):
                options.append(item)
    return "\n".join(lines), options


def _prompt(subtitle_path: Path, offset: float, duration: float, question: str, clip: Clip) -> str:
    subtitles = json.loads(subtitle_path.read_text(encoding="utf-8"))
    try:
        parts = interleave(clip.timestamps, subtitles, offset, duration)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{subtitle_path}: malformed subtitles ({type(err).__name__}: {err})") from None
    interleaved = "".join("[image]" if part is None else part for part in parts)
    return query_text("subtitles:" + interleaved + "\n" + "question: <image>" + "\n" + question)


def interleave(timestamps: tuple[float, ...], subtitles: list[dict], offset: float, duration: float) -> list:
    """Frames (None) and subtitle texts in the original's order (`insert_subtitles_into_frames`, quirks included).

    Each subtitle's midpoint decides which frames precede it; a subtitle is kept only if some frame falls strictly
    inside its span (spans shorter than 1 s are widened to 1 s around the midpoint); a non-float end time in the
    "timestamp" format is replaced by the video duration before the offset is subtracted.
    """
    out: list = []
    cur = 0
    for sub in subtitles:
        if "timestamp" in sub:
            start, end = sub["timestamp"]
            if not isinstance(end, float):
                end = duration
            start, end, text = start - offset, end - offset, sub["text"]
        else:
            start = _seconds(sub["start"]) - offset
            end = _seconds(sub["end"]) - offset
            text = sub["line"]
        middle = (start + end) / 2
        while cur < len(timestamps) and timestamps[cur] <= middle:
            out.append(None)
            cur += 1
        if end - start < 1:
            start, end = middle - 0.5, middle + 0.5
        if any(start < t < end for t in timestamps):
            out.append(text)
    out.extend(None for _ in timestamps[cur:])
    return out


def _seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def read(ref: VideoRef, num_frames: int, max_frames: int) -> Clip:
    """decord's `get_batch` of `lvb_indices` (annotation duration, the file's fps); timestamps = index / fps."""
    fps = frames.video_info(ref.path).fps
    indices = frames.lvb_indices(ref.duration, fps, num_frames, max_frames)
    return Clip(frames.read_frames_at(ref.path, indices), tuple(float(i) / fps for i in indices))


def aggregate(records: list[dict]) -> dict[str, float]:
    groups = accuracy_by_group(records, sorted({r["group"] for r in records if r["group"]}, key=_group_order))
    return {**{f"duration {k}": v for k, v in groups.items() if k}, "Overall": accuracy(records)}


def _group_order(name: str) -> float:
    try:
        return float(name)
    except ValueError:
        return float("inf")


BENCHMARK = Benchmark("longvideobench", load, read, aggregate)
