"""Videos per second of `python -m tlv_jax.data.prepare`: the process pool vs TFDS's Apache Beam path on the local
DirectRunner (multi-processing), on the same generated set in one run, and what that means for the published mix.

The set: `--videos` synthetic H.264 clips (`tlv_jax.data.synthetic`, `--size` px square, `--frames` at 8 fps) with
one broken file in every 16 entries, prepared as training does (16 frames, 384 px, PNG, the fixture's Qwen2
tokenizer). Each path runs on the whole set and on a 2-entry set: the difference gives its steady rate (videos/s
once started) and its start-up (Beam starts its worker processes, each worker its decoding child). The ratio
Beam / pool is printed for both the whole-run and the steady rates.

Scaling estimate (on paper): per-video cost c = workers / steady Beam rate (core-seconds per video here); the
published mix (890k samples) on N workers of K cores takes about 890k * c / (N * K) plus start-up. Real clips (720p,
30-180 s) cost more than these: `--real-rate` (videos/s on 2 cores, default the ~3 measured with real-size clips)
gives the same table for them.

    python bench/bench_prepare.py [--videos 48] [--workers 2] [--size 448] [--frames 240]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from tlv_jax.data.beam_prepare import pipeline_options
from tlv_jax.data.prepared_example import PrepareConfig
from tlv_jax.data.synthetic import generate_dataset, write_broken_videos
from tlv_jax.data.tfds_builder import prepare

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests/fixtures/upstream/qwen2-group-f16/finetune"
PUBLISHED_MIX = 890_000
BROKEN = ("truncated", "missing", "random_bytes", "empty", "audio_only")


def make_set(root: Path, videos: int, size: int, frames: int) -> tuple[Path, Path]:
    """The annotation file of the whole set (good videos, a broken one every 16 entries) and of its first 2."""
    annotation = generate_dataset(root, videos, seed=0, frames=frames, size=size, fps=8, answer_format="mixed")
    broken = write_broken_videos(root / "broken")
    records = json.loads(annotation.read_text())
    talk = records[0]["conversations"]
    for i, at in enumerate(range(15, len(records), 16)):
        name = BROKEN[i % len(BROKEN)]
        records.insert(at, {"id": f"broken_{i}", "video": f"broken/{broken[name].name}", "conversations": talk})
    annotation.write_text(json.dumps(records))
    small = root / "small.json"
    small.write_text(json.dumps(records[:2]))
    return annotation, small


def timed_prepare(annotation: Path, video_dir: Path, out: Path, workers: int, beam: bool) -> tuple[float, str]:
    config = PrepareConfig(annotation_file=str(annotation), video_dir=str(video_dir), tokenizer_dir=str(TOKENIZER),
                           num_frames=16, image_size=384, workers=workers)
    start = time.perf_counter()
    _, counter = prepare(config, str(out), beam_options=pipeline_options("", workers) if beam else None)
    return time.perf_counter() - start, counter.summary()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=48)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--real-rate", type=float, default=3.0, help="videos/s on 2 cores for real-size clips")
    args = p.parse_args()
    logging.disable(logging.WARNING)  # the broken videos' skip warnings, Beam's worker chatter

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        annotation, small = make_set(root / "src", args.videos, args.size, args.frames)
        entries = len(json.loads(annotation.read_text()))
        rows = {}
        for name, beam in (("pool", False), ("beam", True)):
            small_s, _ = timed_prepare(small, root / "src", root / f"{name}_small", args.workers, beam)
            whole_s, summary = timed_prepare(annotation, root / "src", root / name, args.workers, beam)
            steady = (entries - 2) / max(whole_s - small_s, 1e-9)
            rows[name] = dict(whole=whole_s, rate=entries / whole_s, steady=steady,
                              startup=max(small_s - 2 / steady, 0.0), summary=summary)

    print(f"\n{entries} entries ({args.videos} videos {args.size}x{args.size}, {args.frames} frames at 8 fps, "
          f"{entries - args.videos} broken), 16 frames -> 384 px PNG, {args.workers} workers")
    print(f"{'path':<28}{'total s':>9}{'videos/s':>10}{'steady v/s':>12}{'start-up s':>12}")
    for name, label in (("pool", "process pool"), ("beam", "Beam DirectRunner (multi-proc)")):
        r = rows[name]
        print(f"{label:<28}{r['whole']:>9.1f}{r['rate']:>10.2f}{r['steady']:>12.2f}{r['startup']:>12.1f}")
    print(f"Beam / pool: {rows['beam']['rate'] / rows['pool']['rate']:.2f}x whole run, "
          f"{rows['beam']['steady'] / rows['pool']['steady']:.2f}x steady (goal >= 0.8x)")
    print(f"both: {rows['pool']['summary']}" if rows["pool"]["summary"] == rows["beam"]["summary"]
          else f"counts differ: pool {rows['pool']['summary']} / beam {rows['beam']['summary']}")

    cost = args.workers / rows["beam"]["steady"]
    real_cost = 2 / args.real_rate
    print(f"\nPublished mix ({PUBLISHED_MIX:,} samples), hours on N workers of 4 cores (+ start-up):")
    print(f"{'N workers':>10}{'these clips':>14}{'real clips':>13}")
    for n in (1, 10, 50, 100, 250):
        hours = [PUBLISHED_MIX * c / (n * 4) / 3600 for c in (cost, real_cost)]
        print(f"{n:>10}{hours[0]:>14.2f}{hours[1]:>13.2f}")
    print(f"(per-video cost: {cost:.3f} core-s measured here, {real_cost:.3f} core-s at {args.real_rate} videos/s on "
          f"2 cores)")


if __name__ == "__main__":
    main()
