"""Evaluation throughput: `python -m tlv_jax.evaluate`'s loop against the original's algorithm, same model, same run.

Data: a generated set in Video-MME's layout (`tlv_jax.evaluate.synthetic`: real lossy H.264 mp4 files with a
keyframe every 2 seconds as published videos have, several questions per video; 480 frames at 8 fps is a one-minute
video, shorter than Video-MME's shortest class averages, and the original's full decode grows with the length). Model: a checkpoint directory (default: the tiny test checkpoint made by the original code;
any of ours or a PyTorch TinyLLaVA-Video directory works), float32, greedy, `--new-tokens` at most per answer.

- original: what its evaluators do per question: open the video, decode every frame with PyAV into RGB arrays, keep
  16 uniformly spaced ones, preprocess them, answer that one question (batch 1); our compiled model answers, so the
  difference is the algorithm, not the framework.
- ours: `tlv_jax.evaluate.evaluate` exactly as the command line runs it: each video read once for all its questions
  (timestamp seeking, only the sampled frames decoded), the next videos read and preprocessed by `--workers` threads
  while the model answers, several videos' questions in one batch (`--max-batch`), spread over the local devices.
  Timed twice: cold (first run, compiling its batch shapes) and warm (a fresh output folder, compiled).

Prints one table, questions/s and the ratio to the original; the ratio is also the Video-MME wall-time saving.

    python bench/bench_eval.py [--quick] [--videos 12 --questions 3 --frames 480 --size 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from tlv_jax.data.frames import uniform_indices  # noqa: E402
from tlv_jax.evaluate import evaluate  # noqa: E402
from tlv_jax.evaluate.batching import BatchedAnswerer  # noqa: E402
from tlv_jax.evaluate.synthetic import make_videomme_like  # noqa: E402
from tlv_jax.evaluate.videomme import BENCHMARK  # noqa: E402
from tlv_jax.generate import Generator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "tests" / "fixtures" / "upstream" / "qwen2-group-f16" / "finetune"
FRAMES = 16


def decode_all_frames(path: str) -> np.ndarray:
    """Every frame of the video as RGB (the original's full decode), uint8 (N, H, W, 3)."""
    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def original(answerer: BatchedAnswerer, questions: list, new_tokens: int) -> float:
    """Seconds for the original's loop: per question, decode every frame, sample 16, answer alone."""
    start = time.perf_counter()
    for q in questions:
        frames = decode_all_frames(q.video.path)
        answerer.answer(frames[uniform_indices(len(frames), FRAMES)], [q.prompt], new_tokens)
    return time.perf_counter() - start


def ours(answerer: BatchedAnswerer, data: Path, out: Path, new_tokens: int, workers: int) -> float:
    start = time.perf_counter()
    evaluate(BENCHMARK, data, answerer, out, num_frames=FRAMES, max_frames=FRAMES, max_new_tokens=new_tokens,
             progress=False, workers=workers)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--questions", type=int, default=3, help="questions per video (Video-MME has 3)")
    p.add_argument("--frames", type=int, default=480, help="frames per video (8 fps, a keyframe every 2 s)")
    p.add_argument("--size", type=int, default=128, help="frame width and height")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="4 videos of 96 frames")
    args = p.parse_args()
    if args.quick:
        args.videos, args.frames = 4, 96

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_videomme_like(tmp / "data", args.videos, args.questions, frames=args.frames, size=args.size)
        questions = BENCHMARK.load(data)
        generator = Generator.from_pretrained(args.model)
        one_by_one = BatchedAnswerer(generator, 1, jax.local_devices()[:1])
        batched = BatchedAnswerer(generator, args.max_batch)
        original(one_by_one, questions[:1], args.new_tokens)  # compiles batch 1: the original's timing is warm
        t_original = original(one_by_one, questions, args.new_tokens)
        t_cold = ours(batched, data, tmp / "cold", args.new_tokens, args.workers)
        t_warm = ours(batched, data, tmp / "warm", args.new_tokens, args.workers)

    n = len(questions)
    print(f"{args.videos} videos x {args.questions} questions, {args.frames} frames of {args.size}x{args.size} each, "
          f"{FRAMES} sampled, <= {args.new_tokens} new tokens, model {args.model}, "
          f"{jax.local_device_count()} {jax.default_backend()} device(s), {os.cpu_count()} CPUs")
    print("| loop | seconds | questions/s | vs original |")
    print("|---|---|---|---|")
    for name, seconds in (("original: full PyAV decode, one question at a time (warm)", t_original),
                          ("ours, cold (compiles its batch shapes)", t_cold), ("ours, warm", t_warm)):
        print(f"| {name} | {seconds:.1f} | {n / seconds:.2f} | {t_original / seconds:.1f}x |")


if __name__ == "__main__":
    main()
