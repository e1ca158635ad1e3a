"""Real (non-padding) tokens/s of the finetune train step with sequence packing vs today's bucketed padding, on the
same samples, in one run (CPU, float32, the mid-size model of bench_train.py with the recipe's 512 video tokens).

The length mix models LLaVA-Video-178K finetune samples as the recipe sees them (the data set is not on this machine,
so the mix is built from its published shape, not measured from it): every sample is 512 video tokens (group
resampler, 16 frames -> 512 queries) + the qwen2_base template's fixed text (26 tokens: system line, role tags,
<image> line) + an open-ended question (uniform 8..40 tokens) + an answer (log-normal, median 70 tokens, clipped to
4..600; LLaVA-Video-178K's open-ended answers are one or two sentences, a few are detailed descriptions). A typical
sample is then ~600-700 tokens; the buckets are the recipe's 1024 / 2048 / 3072, the packed rows model.max_length
= 3072 with 5 video slots (3072 // 513).

Both sides process the same N samples: bucketed in batches of 4 samples (each padded to the smallest bucket that
fits its longest), packed by the loader's own Grain first-fit packer into rows of 3072 (batches of 1 row). One
warm-up pass compiles every shape; then the passes are timed alternately.

    python bench/bench_packing.py [--samples 16] [--repeats 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_siglip import interleaved_times  # noqa: E402

from tlv_jax.data.packing import PACKED_BATCH_NDIMS, ExpandVideo, pack, real_tokens, videos_per_row  # noqa: E402
from tlv_jax.data.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX, collate  # noqa: E402
from tlv_jax.sharding.mesh import make_mesh, tree_shardings  # noqa: E402
from tlv_jax.train import optim, setup  # noqa: E402
from tlv_jax.train import step as step_lib  # noqa: E402
from tlv_jax.train.config_file import load_config  # noqa: E402

BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "base.py"
TEMPLATE_TOKENS = 26


def length_mix(n: int, seed: int, scale: int = 1) -> list[tuple[int, int]]:
    """(prompt tokens before the answer, answer tokens) of n samples, the video's placeholder not counted."""
    rng = np.random.default_rng(seed)
    question = rng.integers(8, 41, n)
    answer = np.clip(np.round(rng.lognormal(np.log(70), 0.7, n)), 4, 600).astype(int)
    return [(max(2, (TEMPLATE_TOKENS + q) // scale), max(1, a // scale)) for q, a in zip(question, answer)]


def make_samples(mix: list[tuple[int, int]], s: dict, vocab: int, seed: int) -> list[dict]:
    """Processed samples as the loader makes them: one placeholder after the system line, targets = the answer."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (prompt, answer) in enumerate(mix):
        ids = rng.integers(1, vocab, prompt + answer).astype(np.int32)
        ids[min(4, prompt - 1)] = IMAGE_TOKEN_INDEX
        labels = np.where(np.arange(len(ids)) >= prompt, ids, IGNORE_INDEX).astype(np.int32)
        pixels = rng.normal(size=(s["frames"], s["image"], s["image"], 3)).astype(np.float32)
        out.append({"input_ids": ids, "labels": labels, "pixel_values": pixels,
                    "frames_mask": np.ones(s["frames"], bool), "sample_index": np.int64(i)})
    return out


def bucketed(samples: list[dict], buckets: tuple[int, ...], queries: int, batch: int) -> list[dict]:
    """Today's batching: `batch` samples padded to the smallest bucket that fits (text width = bucket - Q + 1)."""
    out = []
    for start in range(0, len(samples) - batch + 1, batch):
        group = samples[start:start + batch]
        longest = max(len(x["input_ids"]) for x in group) - 1 + queries
        width = next(b for b in buckets if b >= longest) - queries + 1
        text = collate([x["input_ids"] for x in group], [x["labels"] for x in group], pad_id=0, eos_id=None,
                       pad_to=width)
        out.append({**text, "pixel_values": np.stack([x["pixel_values"] for x in group]),
                    "frames_mask": np.stack([x["frames_mask"] for x in group])})
    return out


def packed(samples: list[dict], length: int, queries: int, rows: int) -> list[dict]:
    """The loader's packing: ExpandVideo + Grain first-fit (16 bins), then batches of `rows` rows."""
    ds = grain.MapDataset.source(samples).map(ExpandVideo(queries)).to_iter_dataset()
    packed_rows = list(pack(ds, length, videos_per_row(length, queries), pad_id=0, bins=16))
    return [{k: np.stack([r[k] for r in packed_rows[i:i + rows]]) for k in (*PACKED_BATCH_NDIMS, "sample_index")}
            for i in range(0, len(packed_rows) - rows + 1, rows)]


def model_config(s: dict, length: int) -> ml_collections.ConfigDict:
    config = load_config(BASE_CONFIG)  # the finetune recipe's optimizer and freezing, mid-size model
    config.model.update(dict(init="scratch", num_queries=s["queries"], group=s["group"],
                             num_resampler_layers=s["res_layers"], vision_feature_layer=-2, dtype="float32",
                             remat="", max_length=length))
    config.model.scratch = ml_collections.ConfigDict(dict(
        vision=dict(hidden_size=s["vis"], intermediate_size=s["vis_mlp"], num_layers=s["vis_layers"],
                    num_heads=s["vis_heads"], image_size=s["image"], patch_size=16, use_head=False),
        llm=dict(family="qwen2", vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["mlp"],
                 num_layers=s["layers"], num_heads=s["heads"], num_kv_heads=2, head_dim=s["d"] // s["heads"],
                 rope_theta=1e6, tie_word_embeddings=True),
        connector=dict()))
    config.data.update(dict(num_frames=s["frames"], tokenizer_dir="unused"))
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a small model, lengths / 8 (smoke run)")
    args = ap.parse_args()
    s = dict(vis=384, vis_mlp=1536, vis_layers=4, vis_heads=6, image=224, frames=4, d=512, mlp=1408, layers=4,
             heads=8, vocab=8192, queries=512, group=4, res_layers=2)
    scale = 1
    if args.quick:
        s.update(vis=64, vis_mlp=128, vis_layers=1, vis_heads=2, image=64, frames=2, d=64, mlp=128, layers=1,
                 heads=4, vocab=512, queries=64, group=2, res_layers=1)
        scale = 8
    buckets = tuple(b // scale for b in (1024, 2048, 3072))
    length = buckets[-1]
    config = model_config(s, length)
    source = setup.model_source(config)
    model = setup.build_model(config, source)
    queries = source.config.model.video_tokens(s["frames"])

    samples = make_samples(length_mix(args.samples, seed=0, scale=scale), s, s["vocab"], seed=1)
    sides = {"bucketed": (bucketed(samples, buckets, queries, batch=4), setup.BATCH_NDIMS),
             "packed": (packed(samples, length, queries, rows=1), PACKED_BATCH_NDIMS)}

    tx = setup.optimizer(config, optim.make_schedule(2e-5, 1000, 0.0, "constant"))
    freeze = optim.check_freeze(config.freeze)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    graphdef, params, frozen, rest = setup.split(model, freeze)
    step_fn = step_lib.make_train_step(graphdef, tx, setup.loss_fn(config))  # dispatches on the batch's arrays
    passes, stats = {}, {}
    for name, (batches, ndims) in sides.items():
        state = jax.tree.map(lambda x: x.copy(), step_lib.init_state(params, frozen, rest, tx))  # (donated)
        shardings = tree_shardings(state, mesh)
        jitted = step_lib.jit_train_step(step_fn, shardings, mesh, ndims)
        holder = {"state": jax.device_put(state, shardings)}
        device_batches = [jax.device_put({k: b[k] for k in ndims}) for b in batches]

        def one_pass(jitted=jitted, holder=holder, device_batches=device_batches) -> None:
            for b in device_batches:
                holder["state"], metrics = jitted(holder["state"], b)
            jax.block_until_ready(metrics)

        passes[name] = one_pass
        cells = sum(b["input_ids"].size + (queries - 1) * len(b["input_ids"]) * ("attention_mask" in b)
                    for b in batches)
        real = sum(int(b["attention_mask"].sum()) + (queries - 1) * len(b["input_ids"]) if "attention_mask" in b
                   else real_tokens(b) for b in batches)
        used = sum(len(b["input_ids"]) if "attention_mask" in b else int((b["sample_index"] >= 0).sum())
                   for b in batches)
        stats[name] = dict(steps=len(batches), real=real, cells=cells, samples=used)

    times = interleaved_times(passes, warmup=1, repeats=args.repeats)
    threads = len(os.sched_getaffinity(0))
    print(f"\nfinetune train step, {args.samples} samples (LLaVA-Video-178K-like mix, module docstring), float32, "
          f"{threads} threads; {queries} video tokens per sample, buckets {buckets}, packed rows {length}")
    print(f"{'':10s} {'steps':>6s} {'real tokens':>12s} {'padding':>8s} {'wall s':>8s} {'cpu s':>8s} "
          f"{'real tok/s':>11s}")
    rate, cpu_rate = {}, {}
    for name, st in stats.items():
        wall = statistics.median(w for w, _ in times[name])
        cpu = statistics.median(c for _, c in times[name])
        rate[name], cpu_rate[name] = st["real"] / wall, st["real"] / cpu
        print(f"{name:10s} {st['steps']:6d} {st['real']:12d} {1 - st['real'] / st['cells']:8.1%} {wall:8.2f} "
              f"{cpu:8.2f} {rate[name]:11.1f}")
    print(f"packed / bucketed real tokens/s: {rate['packed'] / rate['bucketed']:.2f}x wall, "
          f"{cpu_rate['packed'] / cpu_rate['bucketed']:.2f}x per cpu second (goal >= 1.3x); samples trained on: "
          f"bucketed {stats['bucketed']['samples']}, packed {stats['packed']['samples']}")


if __name__ == "__main__":
    main()
