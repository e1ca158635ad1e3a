"""Video reading and SigLIP preprocessing on CPU: ours vs the original's way, measured in the same run.

(a) Decode time for 16 frames of a 30 s 720p 30 fps H.264 clip. Ours: `read_frames(path, 16)` (decord `get_batch`
    of the 16 sampled indices only). Original (pytorchvideo's decord path): `get_batch` of every frame, then
    the whole clip cast to float32 (done here with torch, 64 frames at a time, so the 10 GB float32 clip is never
    held: optimistic for the original), then 16 kept. Also shown: decord `get_batch` of all frames without the cast,
    and a plain sequential PyAV decode of all frames (the cheapest way to decode everything). Two encodings of the
    same content: x264's default keyframe interval (250 frames, 8.3 s) and a 2 s GOP (typical of web video). A long
    GOP limits what seeking can skip: every reference frame up to the last sampled one must still be decoded.
(b) Videos per second through read + preprocess to 384 px (what this module owns). Ours: `read_frames` +
    `siglip_preprocess` with 1 and 2 resize threads. Original: full decode, keep 16, transformers'
    `SiglipImageProcessor` per frame. `read_preprocess_rate(..., after=fn)` is the hook for the tokenise / batch part.

    python bench/bench_data.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import av
import decord
import numpy as np
import torch

from tlv_jax.data.frames import read_frames, uniform_indices
from tlv_jax.data.preprocess import siglip_preprocess


def write_clip(path: Path, seconds: int, gop: int | None, height: int = 720, width: int = 1280, fps: int = 30) -> Path:
    """A drifting gradient with a moving square and light noise, x264 veryfast crf 23 (B-frames on)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    noise = rng.integers(0, 12, (4, height, width, 3), dtype=np.uint8)
    options = {"preset": "veryfast", "crf": "23", **({"g": str(gop)} if gop else {})}
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(seconds * fps):
            frame = np.broadcast_to((ramp + 2 * t) % 256, (height, width, 3)).astype(np.uint8) + noise[t % 4]
            x = int((width - 160) * t / (seconds * fps))
            frame[280:440, x:x + 160] = (230, 30, 30)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def original_decode(path: Path, cast: bool) -> np.ndarray:
    """The original: all frames from decord (one get_batch), optionally the float32 cast, then keep linspace(16)."""
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=0)
    clip = vr.get_batch(list(range(len(vr)))).asnumpy()
    if cast:
        for start in range(0, len(clip), 64):
            torch.from_numpy(clip[start:start + 64]).to(torch.float32)
    return clip[uniform_indices(len(clip), 16)]


def pyav_decode_all(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        clip = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(clip)[uniform_indices(len(clip), 16)]


def best_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def read_preprocess_rate(paths: list[Path], size: int, threads: int,
                         after: Callable[[np.ndarray], object] | None = None) -> float:
    """Videos per second through read_frames(16) + siglip_preprocess(size); `after` gets the float32 frames (hook
    for tokenise / batch)."""
    start = time.perf_counter()
    for path in paths:
        pixels = siglip_preprocess(read_frames(path, 16), size, num_threads=threads)
        if after is not None:
            after(pixels)
    return len(paths) / (time.perf_counter() - start)


def original_rate(paths: list[Path], size: int) -> float:
    from transformers import SiglipImageProcessor

    proc = SiglipImageProcessor(size={"height": size, "width": size}, resample=3, image_mean=[0.5] * 3,
                                image_std=[0.5] * 3)
    start = time.perf_counter()
    for path in paths:
        kept = original_decode(path, cast=False)
        np.stack([proc(frame, return_tensors="np")["pixel_values"][0] for frame in kept])
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 s clip, 2 s GOP only, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds, gops, repeats = (10, [60], 1) if args.quick else (30, [None, 60], args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        print(f"CPU threads: {torch.get_num_threads()}; clips: {seconds} s 1280x720 30 fps H.264; best of {repeats}")
        print(f"{'(a) 16 frames of one clip':44s} {'GOP':>6s} {'ours s':>8s} {'reference s':>12s} {'speed-up':>9s}")
        clips = []
        for gop in gops:
            start = time.perf_counter()
            clip = write_clip(Path(tmp) / f"clip_gop{gop or 250}.mp4", seconds, gop)
            clips.append(clip)
            label = f"{gop or 250}"
            print(f"  (clip written in {time.perf_counter() - start:.0f} s, {clip.stat().st_size / 1e6:.1f} MB)")
            np.testing.assert_array_equal(read_frames(clip, 16), original_decode(clip, cast=False))  # same frames
            ours = best_time(lambda: read_frames(clip, 16), repeats)
            for name, fn in [("vs original: decode all + float32", lambda: original_decode(clip, True)),
                             ("vs decord get_batch(all frames)", lambda: original_decode(clip, False)),
                             ("vs PyAV sequential decode of all", lambda: pyav_decode_all(clip))]:
                ref = best_time(fn, repeats)
                print(f"{name:44s} {label:>6s} {ours:8.3f} {ref:12.3f} {ref / ours:8.1f}x")

        print(f"\n{'(b) read + preprocess to 384 px':44s} {'GOP':>6s} {'ours v/s':>8s} {'reference v/s':>12s} "
              f"{'speed-up':>9s}")
        for clip, gop in zip(clips, gops):
            paths = [clip] * max(2, repeats)
            ref = original_rate(paths, 384)
            for threads in (1, 2):
                rate = read_preprocess_rate(paths, 384, threads)
                print(f"{f'read_frames + siglip_preprocess, {threads} thread(s)':44s} {gop or 250:>6} {rate:8.2f} "
                      f"{ref:12.2f} {rate / ref:8.1f}x")


if __name__ == "__main__":
    main()
