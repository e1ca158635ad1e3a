"""A synthetic video-QA dataset whose answers need the video, plus real broken video files for the bad-input tests.

Each video (H.264 mp4 written with PyAV, lossless x264 in yuv420p, a few frames of a few dozen pixels over
per-frame background noise) shows coloured squares, built for one question type:

- `color`: one still square; what colour is it?
- `direction`: one square crossing the frame left / right / up / down (~3 px per frame at 32 px: strong motion, which
  a tiny model only learns with a good position encoding, see demo-notes.md); which way does it move?
- `count`: 1-4 squares of different colours, each visible during its own random interval (so one frame need not
  show them all); how many squares appear?
- `order`: two squares that appear at different times and stay; which colour appeared first?
- `color_change`: one square that switches colour once; what colour does it turn into? (its first colour is always
  one of the options).
- `position`: one still square wholly inside a quarter of the frame; where is it (top left ... bottom right)? Needs
  where, not when: a curriculum for `direction` (a model that reads where a square is learns sooner which way it went).

Questions are multiple-choice (4 options in a per-question shuffled order, letters A-D, the answer is the letter, the
prompt as the original's benchmarks write it) or open (a word or two). Annotations use the LLaVA-Video-178K JSON format;
each record also carries a `meta` dict (type, format, options, answer text and letter, chance level) that loaders
ignore and the demo uses to score accuracy per question type. A pretrain-style caption file covers the same videos.
Everything is a pure function of (seed, split, index), so the output does not depend on worker scheduling.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import struct
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import av
import numpy as np

QUESTION_TYPES = ("color", "direction", "count", "order", "color_change", "position")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255),
}
DIRECTIONS = ("left", "right", "up", "down")
PLACES = ("top left", "top right", "bottom left", "bottom right")
COUNTS = ("1", "2", "3", "4")
NUMBER_WORDS = {1: "One", 2: "Two", 3: "Three", 4: "Four"}
LETTERS = "ABCD"
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
OPEN_SUFFIX = "Answer the question directly without explanation."
CAPTION_PROMPT = "Describe the video briefly."
ANSWER_FORMATS = ("mc", "open", "mixed")
NOISE_LEVEL = 48  # background pixels are uniform in [0, NOISE_LEVEL): dark, so the saturated colours stand out
X264_OPTIONS = {"crf": "0", "threads": "1"}  # lossless in YUV; one thread per encoder (we parallelise over videos)


@dataclass(frozen=True)
class Square:
    """A square visible on frames [start, stop) at `positions[t]` (top-left y, x) with `colors[t]` (a COLORS name)."""

    positions: list[tuple[int, int]]
    colors: list[str]
    start: int
    stop: int


@dataclass(frozen=True)
class Scene:
    squares: list[Square]
    question: str
    answer: str  # answer text (a colour, a direction or a count)
    vocabulary: Sequence[str]  # every possible answer of this type (distractors are drawn from it)
    fixed_distractors: tuple[str, ...]  # options that must appear (e.g. the first colour for color_change)
    caption: str


def _static(pos: tuple[int, int], color: str, frames: int, start: int = 0, stop: int | None = None) -> Square:
    stop = frames if stop is None else stop
    return Square([pos] * frames, [color] * frames, start, stop)


def _cells(rng: np.random.Generator, k: int, size: int, side: int) -> list[tuple[int, int]]:
    """k distinct non-overlapping top-left corners on the grid of side-sized cells."""
    n = size // side
    cells = rng.choice(n * n, size=k, replace=False)
    return [(int(c // n) * side, int(c % n) * side) for c in cells]


def _scene(kind: str, rng: np.random.Generator, frames: int, size: int, side: int) -> Scene:
    names = list(COLORS)
    if kind == "color":
        color = str(rng.choice(names))
        pos = tuple(int(v) for v in rng.integers(0, size - side + 1, 2))
        return Scene([_static(pos, color, frames)], "What color is the square?", color, names, (),
                     f"A {color} square stays still.")
    if kind == "direction":
        color, direction = str(rng.choice(names)), str(rng.choice(DIRECTIONS))
        travel = size - side - int(rng.integers(0, max(1, size // 16) + 1))
        begin = int(rng.integers(0, size - side - travel + 1))
        along = np.rint(np.linspace(begin, begin + travel, frames)).astype(int)
        if direction in ("left", "up"):
            along = along[::-1]
        across = int(rng.integers(0, size - side + 1))
        positions = [(across, int(a)) if direction in ("left", "right") else (int(a), across) for a in along]
        square = Square(positions, [color] * frames, 0, frames)
        return Scene([square], "Which direction does the square move?", direction, DIRECTIONS, (),
                     f"A {color} square moves {direction}.")
    if kind == "count":
        k = int(rng.integers(1, 5))
        colors = [str(c) for c in rng.choice(names, size=k, replace=False)]
        squares = []
        for pos, color in zip(_cells(rng, k, size, side), colors):
            start = int(rng.integers(0, frames - 1))
            stop = int(rng.integers(start + 2, frames + 1)) if k > 1 else frames
            squares.append(_static(pos, color, frames, start, stop))
        order = [sq.colors[0] for sq in sorted(squares, key=lambda s: s.start)]
        listed = ", ".join(order[:-1]) + (" and " if k > 1 else "") + order[-1]
        noun = "square appears" if k == 1 else "squares appear"
        return Scene(squares, "How many squares appear in the video?", str(k), COUNTS, (),
                     f"{NUMBER_WORDS[k]} {noun}: {listed}.")
    if kind == "order":
        first, second = (str(c) for c in rng.choice(names, size=2, replace=False))
        t1 = int(rng.integers(0, frames // 2))
        t2 = int(rng.integers(t1 + 2, frames))
        p1, p2 = _cells(rng, 2, size, side)
        squares = [_static(p1, first, frames, t1), _static(p2, second, frames, t2)]
        return Scene(squares, "Which color is the square that appeared first?", first, names, (second,),
                     f"A {first} square appears, then a {second} square appears.")
    if kind == "color_change":
        before, after = (str(c) for c in rng.choice(names, size=2, replace=False))
        t = int(rng.integers(2, frames - 1))
        pos = tuple(int(v) for v in rng.integers(0, size - side + 1, 2))
        square = Square([pos] * frames, [before] * t + [after] * (frames - t), 0, frames)
        return Scene([square], "What color does the square change to?", after, names, (before,),
                     f"A {before} square turns {after}.")
    if kind == "position":
        color, place = str(rng.choice(names)), int(rng.integers(0, len(PLACES)))
        half = size // 2  # the square lies wholly inside its quarter of the frame
        pos = tuple(int(rng.integers(0, half - side + 1)) + half * bit for bit in (place // 2, place % 2))
        return Scene([_static(pos, color, frames)], "Where is the square?", PLACES[place], PLACES, (),
                     f"A {color} square stays in the {PLACES[place]}.")
    raise ValueError(f"unknown question type {kind!r}; known: {QUESTION_TYPES}")


def render(scene: Scene, rng: np.random.Generator, frames: int, size: int, side: int) -> np.ndarray:
    """uint8 (frames, size, size, 3): fresh background noise on every frame, squares drawn in list order."""
    video = rng.integers(0, NOISE_LEVEL, (frames, size, size, 3), dtype=np.uint8)
    for sq in scene.squares:
        for t in range(sq.start, sq.stop):
            y, x = sq.positions[t]
            video[t, y:y + side, x:x + side] = COLORS[sq.colors[t]]
    return video


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, codec: str = "libx264",
                pix_fmt: str = "yuv420p", options: dict[str, str] | None = None,
                container_options: dict[str, str] | None = None, rotation: int = 0) -> Path:
    """Encode uint8 (F, H, W, 3) RGB frames into a video file with PyAV (`options`: encoder options, default
    lossless x264; `container_options`: muxer options, e.g. {"movflags": "faststart"}; `rotation`: the display
    matrix's counter-clockwise degrees, as a phone records a turned video)."""
    path = Path(path)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=dict(X264_OPTIONS if options is None else options))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        turn_by_stream = rotation and hasattr(stream, "set_display_rotation")
        if turn_by_stream:
            stream.set_display_rotation(rotation)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    if rotation and not turn_by_stream:
        _write_track_rotation(path, rotation)
    return path


def _write_track_rotation(path: Path, degrees: int) -> None:
    """PyAV < 16 (what lmms-eval pins) cannot set a display matrix: write it into the MP4 track header (`tkhd`),
    where players and decoders read it, as 16.16 fixed-point rotation terms (a quarter-turn multiple)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    if at < 0 or degrees % 90:
        raise ValueError(f"{path}: can only turn an MP4 track by a multiple of 90 degrees")
    # version/flags, then times and ids (32 bytes in version 1, 20 in version 0), 8 reserved, layer..volume 8.
    matrix = at + 8 + (32 if data[at + 4] == 1 else 20) + 16
    theta = math.radians(-degrees)  # the header turns clockwise, `rotation` counts counter-clockwise
    cos, sin = round(math.cos(theta)), round(math.sin(theta))
    data[matrix:matrix + 36] = struct.pack(">9i", cos << 16, sin << 16, 0, -sin << 16, cos << 16, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))


def _mc_prompt(question: str, options: Sequence[str]) -> str:
    lines = [f"{letter}. {opt}" for letter, opt in zip(LETTERS, options)]
    return "\n".join([question, *lines, MC_SUFFIX])


def _options(scene: Scene, rng: np.random.Generator) -> list[str]:
    """The answer, the scene's required distractors, random others from the vocabulary; shuffled."""
    chosen = [scene.answer, *scene.fixed_distractors]
    others = [v for v in scene.vocabulary if v not in chosen]
    chosen += [str(v) for v in rng.choice(others, size=len(LETTERS) - len(chosen), replace=False)]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def _sample(args: tuple) -> tuple[dict, dict]:
    """Render, encode and annotate sample `index` (runs in a worker process)."""
    out_dir, split, index, seed, frames, size, side, fps, kind, answer_format = args
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    scene = _scene(kind, rng, frames, size, side)
    rel = f"videos/{split}/{split}_{index:06d}.mp4"
    write_video(Path(out_dir) / rel, render(scene, rng, frames, size, side), fps)
    fmt = answer_format if answer_format != "mixed" else ("mc", "open")[int(rng.integers(0, 2))]
    sample_id = f"{split}_{index:06d}"
    meta = {"type": kind, "format": fmt, "question": scene.question, "answer": scene.answer}
    if fmt == "mc":
        options = _options(scene, rng)
        letter = LETTERS[options.index(scene.answer)]
        prompt, reply = _mc_prompt(scene.question, options), letter
        meta.update(options=options, answer_letter=letter, chance=1 / len(options))
    else:
        prompt, reply = f"{scene.question}\n{OPEN_SUFFIX}", scene.answer
        meta.update(options=None, answer_letter=None, chance=1 / len(scene.vocabulary))
    qa = {"id": sample_id, "video": rel, "meta": meta,
          "conversations": [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": reply}]}
    caption = {"id": sample_id, "video": rel,
               "conversations": [{"from": "human", "value": f"<image>\n{CAPTION_PROMPT}"},
                                 {"from": "gpt", "value": scene.caption}]}
    return qa, caption


def generate_dataset(out_dir: str | os.PathLike, num_videos: int, seed: int = 0, frames: int = 8, size: int = 32,
                     question_types: Sequence[str] = QUESTION_TYPES, split: str = "train", fps: int = 8,
                     answer_format: str = "mc", workers: int | None = None, square: int = 0) -> Path:
    """Write `num_videos` videos under `out_dir/videos/<split>/` and return the QA annotation file
    `out_dir/<split>.json` (the video folder for loaders is `out_dir`). Also writes `out_dir/<split>_caption.json`
    (same videos, captions, for the pretrain template). Question types cycle in the given order, so each gets an
    equal share. `answer_format`: 'mc', 'open' or 'mixed' (each question draws one). `workers`: processes
    (default: all cores, 1 for small sets). `square`: the side of a square in pixels (default size / 4; at most
    size / 2, so that four fit)."""
    if unknown := set(question_types) - set(QUESTION_TYPES):
        raise ValueError(f"unknown question types {sorted(unknown)}; known: {QUESTION_TYPES}")
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    if size % 8 or size < 16 or frames < 4:
        raise ValueError(f"need size a multiple of 8 (>= 16; yuv420p and a 4x4 grid of squares) and frames >= 4, "
                         f"got size={size}, frames={frames}")
    side = square or size // 4
    if not 2 <= side <= size // 2:
        raise ValueError(f"square={square}: a square's side must be within 2..{size // 2} px for size={size}")
    out_dir = Path(out_dir)
    (out_dir / "videos" / split).mkdir(parents=True, exist_ok=True)
    jobs = [(str(out_dir), split, i, seed, frames, size, side, fps, question_types[i % len(question_types)], answer_format)
            for i in range(num_videos)]
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers > 1 and num_videos >= 256:
        # spawn, not fork: the caller may already run JAX threads. A script calling this needs the usual
        # `if __name__ == "__main__":` guard; without it the pool breaks (BrokenProcessPool), it does not hang.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_sample, jobs, chunksize=max(1, num_videos // (8 * workers))))
    else:
        results = [_sample(job) for job in jobs]
    annotation = out_dir / f"{split}.json"
    annotation.write_text(json.dumps([qa for qa, _ in results], indent=1))
    (out_dir / f"{split}_caption.json").write_text(json.dumps([cap for _, cap in results], indent=1))
    return annotation


# ----------------------------------------------------------------------------------------------------------------------
# Broken (and awkward but valid) videos for the bad-input tests.

BROKEN = ("missing", "empty", "truncated", "truncated_faststart", "random_bytes", "directory", "symlink_loop",
          "audio_only", "unknown_codec")  # must raise VideoDecodeError
AWKWARD = ("av1", "odd_width")  # valid files: must decode (AV1 through the PyAV fallback)
AV1_ENCODERS = ("libsvtav1", "libaom-av1", "librav1e")


def available_av1_encoder() -> str | None:
    for name in AV1_ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    return None


def _write_audio(path: Path) -> Path:
    """Half a second of silent AAC in an mp4: a valid container with no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_broken_videos(out_dir: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Create real files: `missing` (a path that does not exist), `empty` (0 bytes), `truncated` (a valid mp4 cut
    to half its bytes: its index, at the end, is lost), `truncated_faststart` (index first, media data cut at 60%:
    it opens, then runs out of frames), `random_bytes` (noise named .mp4), `directory` (a folder named .mp4),
    `symlink_loop` (a link to itself), `audio_only` (a valid mp4 without video), `unknown_codec` (a valid mp4 whose
    codec tag names no codec), `av1` (a valid AV1 mp4, which decord 0.6 cannot open; absent from the result when no
    AV1 encoder is built into PyAV) and `odd_width` (a valid 33x24 H.264 in yuv444p). Returns name -> path. Also
    writes `valid.mp4` (the source of `truncated`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (12, 32, 48, 3), dtype=np.uint8)
    valid = write_video(out_dir / "valid.mp4", frames)
    raw = valid.read_bytes()
    paths = {"missing": out_dir / "missing.mp4", "empty": out_dir / "empty.mp4",
             "truncated": out_dir / "truncated.mp4", "random_bytes": out_dir / "random_bytes.mp4"}
    paths["missing"].unlink(missing_ok=True)
    paths["empty"].write_bytes(b"")
    paths["truncated"].write_bytes(raw[: len(raw) // 2])
    paths["random_bytes"].write_bytes(rng.bytes(len(raw)))
    faststart = write_video(out_dir / "faststart.mp4", frames, container_options={"movflags": "faststart"})
    paths["truncated_faststart"] = out_dir / "truncated_faststart.mp4"
    paths["truncated_faststart"].write_bytes(faststart.read_bytes()[: len(faststart.read_bytes()) * 6 // 10])
    faststart.unlink()
    paths["directory"] = out_dir / "directory.mp4"
    paths["directory"].mkdir(exist_ok=True)
    paths["symlink_loop"] = out_dir / "symlink_loop.mp4"
    paths["symlink_loop"].unlink(missing_ok=True)
    paths["symlink_loop"].symlink_to(paths["symlink_loop"].name)
    paths["audio_only"] = _write_audio(out_dir / "audio_only.mp4")
    paths["unknown_codec"] = out_dir / "unknown_codec.mp4"
    paths["unknown_codec"].write_bytes(raw.replace(b"avc1", b"zzzz"))  # the H.264 sample entry (and ftyp brand)
    paths["odd_width"] = write_video(out_dir / "odd_width.mp4", frames[:, :24, :33], pix_fmt="yuv444p")
    encoder = available_av1_encoder()
    if encoder is not None:
        previous = os.environ.get("SVT_LOG")
        os.environ["SVT_LOG"] = "1"  # SVT-AV1 prints a banner at info level; errors only
        try:
            paths["av1"] = write_video(out_dir / "av1.mp4", frames[:, :, :48], codec=encoder, options={})
        finally:
            if previous is None:
                os.environ.pop("SVT_LOG")
            else:
                os.environ["SVT_LOG"] = previous
    return paths
