"""Reading video frames as the original does, without decoding what is not kept.

The original decodes every frame of a clip with decord (through pytorchvideo), converts the whole clip to
float32 and then keeps `linspace(0, N-1, n)` of it. We compute the same indices from the frame count and ask decord for
only those frames (`get_batch` seeks to the preceding keyframe and skips forward; same pixels). decord 0.6 cannot open
AV1 and other decord builds mis-decode some widths (environment.md), so every decoded batch is shape-checked and PyAV
is the fallback. The benchmark-specific index formulas live here too, so the evaluation code reuses
them instead of copying them.

Display rotation: decord turns a frame by the quarter turn its container's display matrix asks for (90 or 270
degrees; at 180, at other angles and for some small sizes it fails or returns a mis-shaped batch, so the fallback
reads those files); the PyAV fallback applies the same quarter turns, so a phone video comes out upright from either
reader. The Video-MME / MLVU PTS reader keeps the stored orientation, as the original's PyAV reader does.

All readers return uint8 RGB frames, channels-last (F, H, W, 3). A file that cannot be read raises
`VideoDecodeError` naming it, with a `code` saying why (the video reasons of `bad_samples`); the data pipeline
catches that to skip and count the sample under that reason.
"""

from __future__ import annotations

import bisect
import os
import stat
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Literal, NamedTuple, Sequence

import av
import decord
import numpy as np
from PIL import Image

from tlv_jax.data.bad_samples import (DECODE_ERROR, MISSING_VIDEO, NO_VIDEO_STREAM, NOT_A_FILE, UNREADABLE_CONTAINER,
                                      UNRESOLVABLE_PATH, UNSUPPORTED_CODEC)

Backend = Literal["auto", "decord", "av"]

# FFmpeg's own messages (e.g. "moov atom not found") would repeat, unstructured, what VideoDecodeError reports with
# its reason code; a run over thousands of broken files would print them by the thousand.
decord.logging.set_level(decord.logging.QUIET)


class VideoDecodeError(ValueError):
    """A video that cannot be read (missing, empty, truncated, undecodable...); the message names the file and
    `code` (one of `bad_samples.VIDEO_REASONS`) says which kind of problem it is."""

    def __init__(self, path: str | os.PathLike, reason: str, code: str = DECODE_ERROR):
        self.path = str(path)
        self.reason = reason
        self.code = code
        super().__init__(f"cannot read video {self.path}: {reason}")


class VideoInfo(NamedTuple):
    """What the index formulas need: frame count, average fps and duration = num_frames / fps (as the original)."""

    num_frames: int
    fps: float
    duration: float


# ----------------------------------------------------------------------------------------------------------------------
# Index formulas. Pure functions of the stream's numbers.


def uniform_indices(total: int, num_frames: int) -> np.ndarray:
    """`linspace(0, total-1, num_frames)` truncated to int; repeats kept for clips shorter than `num_frames`."""
    if total < 1 or num_frames < 1:
        raise ValueError(f"uniform_indices needs total >= 1 and num_frames >= 1, got {total}, {num_frames}")
    return np.linspace(0, total - 1, num_frames, dtype=int)


def fps_count(duration: float, max_frames: int | None = None) -> int:
    """Frames for 1 fps sampling: `max(1, int(duration))`, capped by `max_frames` (eval) or not (training)."""
    n = max(1, int(duration))
    return n if max_frames is None else min(max_frames, n)


def sample_indices(info: VideoInfo, num_frames: int = 16, max_frames: int | None = None) -> np.ndarray:
    """Training / eval.py / MVBench-'video' / MMVU sampling: `num_frames` uniform, or 1 fps when `num_frames == -1`
    (`max_frames` caps only the 1 fps count, as in the original)."""
    if num_frames > 0:
        return uniform_indices(info.num_frames, num_frames)
    if num_frames == -1:
        return uniform_indices(info.num_frames, fps_count(info.duration, max_frames))
    raise ValueError(f"num_frames must be > 0 or -1 (1 fps), got {num_frames}")


def pts_seek_indices(total: int, num_frames: int, duration: float, max_frames: int) -> np.ndarray:
    """Video-MME / MLVU PTS-seek reader (CFR branch): deduplicated uniform indices; 1 fps capped by `max_frames`.
    `duration` is in seconds (`stream.duration * time_base`)."""
    n = num_frames if num_frames > 0 else min(max_frames, max(1, int(duration)))
    return np.unique(np.linspace(0, total - 1, n, dtype=int))


def index_pts(indices: Sequence[int] | np.ndarray, time_base: Fraction, frame_rate: float) -> list[int]:
    """Target PTS of frame indices, as the original: `int(index / time_base / frame_rate)`, where the first division
    is exact (Fraction) and the second is in float (Fraction / float -> float)."""
    return [int(float(Fraction(int(i)) / time_base) / frame_rate) for i in indices]


def lvb_indices(duration: float, fps: float, num_frames: int, max_frames: int) -> np.ndarray:
    """LongVideoBench (`lvbenchdataset.load_video`): `int(total / n) * i` with `total = int(duration * fps)` and
    `n = min(cap, int(duration))`, `cap = num_frames` or, for 1 fps (`num_frames <= 0`), `min(max_frames, max(1,
    duration))`. `duration` comes from the annotation, `fps` from the file."""
    cap = num_frames if num_frames > 0 else min(max_frames, max(1, duration))
    n = int(min(cap, int(duration)))
    if n < 1:
        raise ValueError(f"LongVideoBench sampling needs a duration >= 1 s, got {duration}")
    return np.arange(n) * int(int(duration * fps) / n)


def mvbench_indices(num_frames: int, fps: float, max_frame: int, bound: tuple[float, float] | None = None,
                    first_idx: int = 0) -> np.ndarray:
    """MVBench `get_index`: the centres of `num_frames` equal segments of `[start, end]` (seconds; whole clip when
    `bound` is None), clipped to `[first_idx, max_frame]`. Python's and numpy's round-half-even, as the original."""
    start, end = bound if bound is not None else (-100000, 100000)
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg = float(end_idx - start_idx) / num_frames
    return np.array([int(start_idx + seg / 2 + np.round(seg * k)) for k in range(num_frames)], dtype=int)


# ----------------------------------------------------------------------------------------------------------------------
# Readers.

IndexChoice = Callable[[VideoInfo], np.ndarray] | Sequence[int] | np.ndarray


def check_file(path: str | os.PathLike) -> None:
    """Raises `VideoDecodeError` unless `path` is a non-empty regular file we may read; decodes nothing. One `stat`
    tells a missing file from a directory from a path that does not resolve (which `Path.exists()` calls missing)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise VideoDecodeError(path, "missing (no such file)", MISSING_VIDEO) from None
    except OSError as e:  # ELOOP (symlink loop), ENOTDIR (a file on the way), EACCES (a folder we may not enter)
        raise VideoDecodeError(path, f"cannot resolve the path ({e.strerror})", UNRESOLVABLE_PATH) from None
    if not stat.S_ISREG(info.st_mode):
        what = "a directory" if stat.S_ISDIR(info.st_mode) else "a special file"
        raise VideoDecodeError(path, f"not a regular file ({what})", NOT_A_FILE)
    if info.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)", UNREADABLE_CONTAINER)
    if not os.access(path, os.R_OK):
        raise VideoDecodeError(path, "no permission to read it", UNREADABLE_CONTAINER)


def _choose(select: IndexChoice, info: VideoInfo, path: Path) -> np.ndarray:
    if info.num_frames < 1:
        raise VideoDecodeError(path, "no frames")
    idx = np.asarray(select(info) if callable(select) else select, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise VideoDecodeError(path, "no frame index selected")
    if idx.min() < 0 or idx.max() >= info.num_frames:
        raise VideoDecodeError(path, f"frame index out of range [0, {info.num_frames}): {idx.min()}..{idx.max()}")
    return idx


def _check_batch(batch: np.ndarray, count: int, path: Path, backend: str) -> np.ndarray:
    """Reject what some decord builds return for some widths / rotations (4 or 6 channels, wrong frame count)."""
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[0] != count or batch.shape[3] != 3 \
            or batch.shape[1] < 1 or batch.shape[2] < 1:
        raise VideoDecodeError(path, f"{backend} returned a {batch.dtype} batch of shape {batch.shape}, "
                                     f"expected ({count}, H, W, 3) uint8")
    return batch


def _decord_open(path: Path, num_threads: int) -> decord.VideoReader:
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)


def _decord_info(vr: decord.VideoReader, path: Path) -> VideoInfo:
    total, fps = len(vr), float(vr.get_avg_fps())
    if not fps > 0:
        raise VideoDecodeError(path, f"decord reports fps {fps}")
    return VideoInfo(total, fps, total / fps)


@contextmanager
def _library_errors(path: Path, backend: str, code: str = DECODE_ERROR) -> Iterator[None]:
    """Turn whatever a decoding library raises (DECORDError and RuntimeError with multi-line C++ messages,
    av.FFmpegError subclasses, OSError...) into a VideoDecodeError naming the file, with the `code` of the stage
    (opening: unreadable container; decoding: decode error) unless FFmpeg says it has no decoder. Only library
    calls go inside, so a bug in an index function is not mistaken for a bad video."""
    try:
        yield
    except VideoDecodeError:
        raise
    except Exception as e:
        lines = str(e).strip().splitlines()
        code = UNSUPPORTED_CODEC if isinstance(e, av.error.DecoderNotFoundError) else code
        raise VideoDecodeError(path, f"{backend}: {type(e).__name__}: {lines[-1] if lines else ''}", code) from e


def _read_decord(path: Path, select: IndexChoice, num_threads: int) -> np.ndarray:
    with _library_errors(path, "decord", UNREADABLE_CONTAINER):
        vr = _decord_open(path, num_threads)
        info = _decord_info(vr, path)
    idx = _choose(select, info, path)
    with _library_errors(path, "decord"):
        batch = vr.get_batch(idx.tolist()).asnumpy()
    return _check_batch(batch, len(idx), path, "decord")


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoDecodeError(path, "no video stream", NO_VIDEO_STREAM)
    stream = container.streams.video[0]
    if stream.codec_context is None:  # PyAV found no decoder for the stream's codec
        raise VideoDecodeError(path, "PyAV has no decoder for its video codec", UNSUPPORTED_CODEC)
    return stream


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """The frame as decord 0.6 returns it: turned counter-clockwise by the display matrix's rotation (PyAV's
    `rotation`, counter-clockwise degrees) when that is a quarter turn, as stored otherwise."""
    pixels = frame.to_ndarray(format="rgb24")
    turns, rest = divmod(round(frame.rotation), 90)
    return pixels if rest else np.rot90(pixels, turns)


def _av_info(stream: av.video.stream.VideoStream, container: av.container.InputContainer, path: Path) -> VideoInfo:
    """Frame count from the container index (as decord), else by demuxing packets (no decoding)."""
    total = stream.frames
    if total <= 0:
        total = sum(1 for p in container.demux(stream) if p.size)
        container.seek(0, stream=stream)
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise VideoDecodeError(path, "PyAV finds no frame rate")
    fps = float(rate)
    return VideoInfo(total, fps, total / fps)


def _read_av(path: Path, select: IndexChoice, num_threads: int) -> np.ndarray:
    """Sequential decode, keeping the frames whose decode index is selected; stops after the last one."""
    with _library_errors(path, "PyAV", UNREADABLE_CONTAINER):
        container = av.open(str(path))
    with container:
        with _library_errors(path, "PyAV", UNREADABLE_CONTAINER):
            stream = _video_stream(container, path)
            stream.thread_type = "AUTO"
            if num_threads:
                stream.codec_context.thread_count = num_threads
            info = _av_info(stream, container, path)
        idx = _choose(select, info, path)
        wanted, last, kept, decoded = set(idx.tolist()), int(idx.max()), {}, 0
        with _library_errors(path, "PyAV"):
            for i, frame in enumerate(container.decode(stream)):
                decoded = i + 1
                if i in wanted:
                    kept[i] = _upright(frame)
                if i >= last:
                    break
    if len(kept) < len(wanted):
        raise VideoDecodeError(path, f"truncated or corrupt: decoded {decoded} of {info.num_frames} frames, "
                                     f"frame {last} needed")
    return _check_batch(np.stack([kept[i] for i in idx.tolist()]), len(idx), path, "PyAV")


def read_frames_at(path: str | os.PathLike, select: IndexChoice, *, backend: Backend = "auto",
                   num_threads: int = 0) -> np.ndarray:
    """Decode only the selected frames of a video, uint8 (F, H, W, 3) in the order (and with the repeats) given.

    `select` is a list of frame indices or a function of `VideoInfo` returning them (so the frame count is read once).
    `backend='auto'` uses decord and falls back to PyAV when decord cannot open the file or returns a wrongly shaped
    batch; 'decord' / 'av' force one (tests). `num_threads` = decoder threads (0 = the library's choice).
    """
    path = Path(path)
    check_file(path)
    if backend == "decord":
        return _read_decord(path, select, num_threads)
    if backend == "av":
        return _read_av(path, select, num_threads)
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'decord' or 'av', got {backend!r}")
    try:
        return _read_decord(path, select, num_threads)
    except VideoDecodeError as first:
        try:
            return _read_av(path, select, num_threads)
        except VideoDecodeError as second:  # PyAV's diagnosis is the finer one
            raise VideoDecodeError(path, f"{first.reason}; {second.reason}", second.code) from second


def read_frames(path: str | os.PathLike, num_frames: int = 16, max_frames: int | None = None, *,
                backend: Backend = "auto", num_threads: int = 0) -> np.ndarray:
    """The original's training / eval.py sampling (`num_frames` uniform, or -1 for 1 fps capped by `max_frames`),
    uint8 (F, H, W, 3); reads only the sampled frames."""
    return read_frames_at(path, lambda info: sample_indices(info, num_frames, max_frames), backend=backend,
                          num_threads=num_threads)


def video_info(path: str | os.PathLike, *, backend: Backend = "auto") -> VideoInfo:
    """(num_frames, fps, duration) without decoding, from decord (PyAV when decord cannot open the file)."""
    if backend not in ("auto", "decord", "av"):
        raise ValueError(f"backend must be 'auto', 'decord' or 'av', got {backend!r}")
    path = Path(path)
    check_file(path)
    errors = []
    if backend in ("auto", "decord"):
        try:
            with _library_errors(path, "decord", UNREADABLE_CONTAINER):
                return _decord_info(_decord_open(path, 1), path)
        except VideoDecodeError as e:
            errors.append(e)
    if backend in ("auto", "av"):
        try:
            with _library_errors(path, "PyAV", UNREADABLE_CONTAINER), av.open(str(path)) as container:
                return _av_info(_video_stream(container, path), container, path)
        except VideoDecodeError as e:
            errors.append(e)
    raise VideoDecodeError(path, "; ".join(e.reason for e in errors), errors[-1].code)


# ----------------------------------------------------------------------------------------------------------------------
# The Video-MME / MLVU PyAV reader and MVBench's jpg folders.


def read_frames_pts(path: str | os.PathLike, num_frames: int = 16, max_frames: int = 16) -> np.ndarray:
    """Video-MME / MLVU frames, uint8 (F, H, W, 3) sorted by PTS; F can be < num_frames (deduplicated).

    Constant frame rate (`average_rate == base_rate`): seek backwards to the keyframe before the last pending
    target PTS, decode forward and keep, for each target in that stretch, the first frame with `pts >= target`.
    Otherwise the original's naive branch: sequential decode keeping decode indices in the linspace, whose 1 fps
    count uses `stream.duration` in time-base units (effectively `max_frames`; reproduced on purpose).
    """
    path = Path(path)
    check_file(path)
    with _library_errors(path, "PyAV"):
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            if stream.frames <= 0:
                raise VideoDecodeError(path, "the stream has no frame count (the PTS reader needs it)")
            if num_frames <= 0 and stream.duration is None:
                raise VideoDecodeError(path, "the stream has no duration (1 fps sampling needs it)")
            if stream.average_rate != stream.base_rate:
                frames = _pts_naive(container, stream, num_frames, max_frames)
            else:
                frames = _pts_seek(container, stream, num_frames, max_frames, path)
    if not frames:
        raise VideoDecodeError(path, "no frame decoded")
    return _check_batch(np.stack(frames), len(frames), path, "PyAV")


def _pts_naive(container, stream, num_frames: int, max_frames: int) -> list[np.ndarray]:
    n = num_frames if num_frames > 0 else min(max_frames, max(1, int(stream.duration)))
    wanted = set(np.linspace(0, stream.frames - 1, n, dtype=int).tolist())
    frames = []
    for i, frame in enumerate(container.decode(stream)):
        if i in wanted:
            frames.append(frame.to_ndarray(format="rgb24"))
        if len(frames) >= n:
            break
    return frames


def _pts_seek(container, stream, num_frames: int, max_frames: int, path: Path) -> list[np.ndarray]:
    duration = float(stream.duration * stream.time_base) if num_frames <= 0 else 0.0
    idx = pts_seek_indices(stream.frames, num_frames, duration, max_frames)
    pending = index_pts(idx, stream.time_base, float(stream.base_rate))
    found: dict[int, np.ndarray] = {}
    while pending:
        container.seek(pending[-1], stream=stream, backward=True, any_frame=False)
        targets = None
        for frame in container.decode(stream):
            if frame.pts is None:
                raise VideoDecodeError(path, "a decoded frame has no PTS")
            if targets is None:  # this stretch serves the targets at or after the first decoded frame
                cut = bisect.bisect_left(pending, frame.pts)
                cut = 0 if cut == len(pending) else cut
                targets, pending = pending[cut:], pending[:cut]
            if frame.pts >= targets[0]:
                found[frame.pts] = frame.to_ndarray(format="rgb24")
                targets.pop(0)
                if not targets:
                    break
        if targets is None:
            raise VideoDecodeError(path, f"nothing decodes after seeking to PTS {pending[-1]}")
    return [found[pts] for pts in sorted(found)]


def read_frame_files(folder: str | os.PathLike, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """MVBench 'frame' type: `folder/{index:05d}.jpg` as RGB, uint8 (F, H, W, 3) in the given order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoDecodeError(folder, "missing frame folder", MISSING_VIDEO)
    frames = []
    for i in np.asarray(indices).reshape(-1).tolist():
        file = folder / f"{int(i):05d}.jpg"
        with _library_errors(file, "PIL"), Image.open(file) as img:
            frames.append(np.asarray(img.convert("RGB")))
    if len({f.shape for f in frames}) > 1:
        raise VideoDecodeError(folder, f"frame files differ in size: {sorted({f.shape for f in frames})}")
    if not frames:
        raise VideoDecodeError(folder, "no frame index selected")
    return np.stack(frames)
