"""Serving throughput: the OpenAI-compatible server (continuous batching, video cache) at concurrency 1, 4 and 16
vs the same requests answered one after another by `Generator.generate_tokens` (what `generate` runs), one run.

The model is bench_generate.py's mid-size one, random, built in memory: SigLIP so400m width (`--vision-layers`
blocks at `--image` px, 16 frames), the group resampler (512 video tokens), a Qwen2.5-0.5B-width decoder of
`--layers` blocks with the full 151936 vocabulary, fp32. Its text goes through the tiny Qwen2 tokenizer of the test
fixtures (ids it does not know decode to nothing: the answers are token streams, compared token count by token
count and text by text).

Requests: `--videos` distinct clips x `--questions` different questions each, `--new-tokens` greedy tokens each (the
random model never emits EOS). Every concurrency level gets its own fresh clips, so each level pays the same video
decoding and encoding and the same whole-prompt prefills (the first question about a clip misses the video cache and
the prefix cache, its follow-ups hit both and prefill only their question). The server runs with as many decode
slots as the largest concurrency; clients are threads with the `openai` client, each sending its share of the
requests back to back. Both sides are compiled for the timed prompts' shape before the clock starts (the baseline
by one untimed request, the server by `Engine.compile`). Reported per level: aggregate generated tokens/s (all
tokens / wall time), p50 and p95 request latency, the ratio to the sequential baseline's tokens/s, and the CPU
seconds the process used (all threads: model, server, clients) with the ratio of tokens per CPU second: on a
machine shared with other jobs the wall-time ratio moves with their load, the CPU-time one much less.

    python bench/bench_serve.py [--quick] [--new-tokens 32] [--videos 4] [--questions 4] [--prefix-cache 16]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_generate import build  # noqa: E402  (bench_generate.py's mid-size model)
from openai import OpenAI  # noqa: E402

from tlv_jax.data.records import load_tokenizer  # noqa: E402
from tlv_jax.data.templates import eval_prompt_ids  # noqa: E402
from tlv_jax.data.synthetic import write_video  # noqa: E402
from tlv_jax.generate import Generator, VideoSampling  # noqa: E402
from tlv_jax.serve.app import Service  # noqa: E402
from tlv_jax.serve.background import serve_in_thread  # noqa: E402
from tlv_jax.serve.engine import Engine  # noqa: E402
from tlv_jax.serve.metrics import Metrics  # noqa: E402
from tlv_jax.serve.video_cache import VideoEncoder  # noqa: E402

TOKENIZER = Path(__file__).resolve().parents[1] / "tests/fixtures/upstream/qwen2-group-f16/finetune"
LEVELS = (1, 4, 16)
QUESTION = "Question {}: what happens in this part of the video?"

Request = tuple[Path, str]


def write_clips(root: Path, tag: str, count: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    return [write_video(root / f"{tag}_{i}.mp4", rng.integers(0, 256, (24, 96, 128, 3), dtype=np.uint8))
            for i in range(count)]


def requests_for(clips: list[Path], questions: int) -> list[Request]:
    """Questions interleaved across clips (clip 0 q0, clip 1 q0, ...), as independent users would send them."""
    return [(clip, QUESTION.format(q)) for q in range(questions) for clip in clips]


def compile_server(service: Service) -> None:
    """Compiles the server's prefill calls for the timed prompts' shape (its warm-up compiled its short prompt's)."""
    gen = service.generator
    ids = eval_prompt_ids(QUESTION.format(0), gen.tokenizer, gen.template).input_ids.astype(np.int32)
    size = gen.model.cfg.vision.image_size
    service.engine.compile(ids, service.encoder.encode_frames(np.zeros((gen.sampling.num_frames, size, size, 3),
                                                                       np.uint8)))


def sequential(gen: Generator, requests: list[Request], new_tokens: int) -> tuple[list[int], list[float]]:
    """Token counts and latencies of the requests answered one at a time."""
    counts, latencies = [], []
    for clip, question in requests:
        start = time.perf_counter()
        row = gen.generate_tokens(str(clip), [question], max_new_tokens=new_tokens)[0]
        latencies.append(time.perf_counter() - start)
        counts.append(int(np.argmax(row == gen.eos)) if (row == gen.eos).any() else len(row))
    return counts, latencies


def concurrent_level(url: str, requests: list[Request], new_tokens: int, concurrency: int
                     ) -> tuple[list[int], list[float]]:
    """Token counts and latencies of the requests sent by `concurrency` clients at once."""
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)

    def one(r: Request) -> tuple[int, float]:
        start = time.perf_counter()
        content = [{"type": "video_url", "video_url": {"url": r[0].as_uri()}}, {"type": "text", "text": r[1]}]
        out = client.chat.completions.create(model="bench", max_tokens=new_tokens,
                                             messages=[{"role": "user", "content": content}])
        return out.usage.completion_tokens, time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, requests))
    return [c for c, _ in results], [t for _, t in results]


@contextlib.contextmanager
def clocked() -> Iterator[dict[str, float]]:
    """The block's wall seconds and this process's CPU seconds (every thread), as "wall" and "cpu"."""
    spent: dict[str, float] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    yield spent
    spent["wall"], spent["cpu"] = time.perf_counter() - wall, time.process_time() - cpu


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="224 px, 2 vision blocks, 2 LLM layers, 8 new tokens")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4, help="decoder blocks")
    ap.add_argument("--vision-layers", type=int, default=3, help="SigLIP blocks (hidden_states[-2] is read)")
    ap.add_argument("--image", type=int, default=384)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--max-context", type=int, default=1024, help="the server's tokens per slot")
    ap.add_argument("--prefix-cache", type=int, default=16, help="the server's prompt prefixes kept (0: off)")
    args = ap.parse_args()
    if args.quick:
        args.image, args.vision_layers, args.layers, args.new_tokens = 224, 2, 2, 8

    model = build(args)
    gen = Generator(model, load_tokenizer(str(TOKENIZER)), sampling=VideoSampling(16, 16))
    root = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    clips = {level: write_clips(root, f"c{level}", args.videos, seed=level) for level in LEVELS}
    n = args.new_tokens

    gen.generate_tokens(str(clips[1][0]), [QUESTION.format(0)], max_new_tokens=n)  # compile the baseline, not timed
    base_requests = requests_for(clips[max(LEVELS)], args.questions)
    with clocked() as base:
        base_counts, base_lat = sequential(gen, base_requests, n)
    print(f"(sequential baseline done in {base['wall']:.0f} s)", file=sys.stderr, flush=True)

    metrics = Metrics(max(LEVELS))
    engine = Engine(gen, metrics, max_batch=max(LEVELS), max_queue=4 * len(base_requests),
                    max_context=args.max_context, prefix_cache=args.prefix_cache)
    service = Service("bench", gen, engine, VideoEncoder(gen, metrics, root, workers=2), metrics)
    rows = []
    with serve_in_thread(service) as url:
        compile_server(service)
        for level in LEVELS:
            reqs = requests_for(clips[level], args.questions)
            with clocked() as spent:
                counts, lat = concurrent_level(url, reqs, n, level)
            if level == max(LEVELS) and counts != base_counts:
                raise SystemExit(f"token counts differ from the sequential run: {counts} vs {base_counts}")
            rows.append((f"server, concurrency {level}", sum(counts), lat, spent))
            print(f"(concurrency {level} done in {spent['wall']:.0f} s)", file=sys.stderr, flush=True)
    hits = metrics.registry.get_sample_value("tlv_video_cache_hits_total")
    prefix_hits = metrics.registry.get_sample_value("tlv_prefix_cache_hits_total")

    v = model.cfg.vision
    print(f"Serving, fp32, random mid-size model: SigLIP {v.hidden_size}/{v.num_layers} blocks at {v.image_size} px, "
          f"16 frames, group resampler 512 tokens, Qwen2 896 x {args.layers} layers, vocab {args.vocab}; "
          f"{len(base_requests)} requests per run ({args.videos} clips x {args.questions} questions), {n} new tokens "
          f"each, greedy; server: {max(LEVELS)} decode slots, context {args.max_context}, video cache ({hits:.0f} hits "
          f"in all), prefix cache of {args.prefix_cache} ({prefix_hits:.0f} hits)")
    print(f"{'':28s} {'tokens/s':>9s} {'p50 s':>7s} {'p95 s':>7s} {'wall s':>7s} {'vs sequential':>14s} "
          f"{'CPU s':>7s} {'per CPU s vs seq.':>18s}")
    for name, tokens, lat, spent in [("sequential generate_tokens", sum(base_counts), base_lat, base), *rows]:
        ratio = tokens / spent["wall"] / (sum(base_counts) / base["wall"])
        per_cpu = tokens / spent["cpu"] / (sum(base_counts) / base["cpu"])
        print(f"{name:28s} {tokens / spent['wall']:9.1f} {pct(lat, 50):7.2f} {pct(lat, 95):7.2f} "
              f"{spent['wall']:7.1f} {ratio:13.2f}x {spent['cpu']:7.1f} {per_cpu:17.2f}x")
    print(f"(sequential latency mean {statistics.mean(base_lat):.2f} s per request; the machine's CPU is shared)")


if __name__ == "__main__":
    main()
