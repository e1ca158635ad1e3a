"""Real (non-padding) tokens/s of the finetune train step with sequence packing vs today's bucketed padding, in one
run (CPU, float32, the mid-size model of bench_train.py with the recipe's 512 video tokens), with the padding and the
compiled FLOPs per real token of each side.

The length mix models LLaVA-Video-178K open-ended QA samples as the finetune recipe sees them (the data set is not on
this machine: the mix is an assumption built from its description, not a measurement of it): every sample is 512 video tokens
(group resampler, 16 frames -> 512 queries) + the qwen2_base template's fixed text (26 tokens: system line, role
tags, <image> line) + an open-ended question (uniform 8..40 tokens) + an answer (log-normal, median 70 tokens,
clipped to 4..600: one or two generated sentences, a few longer descriptions). Samples are then 550-1176 tokens,
mean 650, 10th-90th percentile 588-731.

Steady state: both sides batch one long stream of that mix (`--stream` samples) the way the training loader does.
- bucketed (today): per-host loader batches of `--loader-batch` samples (the finetune recipe's 64), each padded to
  the smallest of the 1024 / 2048 / 3072 buckets that fits its longest sample, split into micro-batches of 4;
- packed: the loader's own packer (`tlv_jax.data.packing.pack`, Grain first-fit) with the finetune recipe's row
  length, video slots and packing bins, one row per step; the last packed batch of bins (whatever is left when the
  stream ends) is left out. `--layouts` adds other (row length x video slots) layouts to compare.
A step's cost depends on its shape only, so each step shape is timed `--repeats` times (median; all shapes
interleaved) and weighted by how many steps of that shape the stream makes: the rates and the padding are the whole
stream's. The FLOPs are XLA's cost analysis of each compiled step (on CPU, attention computes every query block
against its whole causal prefix: blocks across packed samples are masked, not skipped).

    python bench/bench_packing.py [--stream 2048] [--layouts 3072x4,4096x6] [--repeats 3] [--quick]
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

from tlv_jax.data.loader_config import TrainLoaderConfig  # noqa: E402
from tlv_jax.data.packing import PACKED_BATCH_NDIMS, ExpandVideo, pack, real_tokens, videos_per_row  # noqa: E402
from tlv_jax.data.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX, collate  # noqa: E402
from tlv_jax.sharding.mesh import make_mesh, tree_shardings  # noqa: E402
from tlv_jax.train import optim, setup  # noqa: E402
from tlv_jax.train import step as step_lib  # noqa: E402
from tlv_jax.train.config_file import load_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TEMPLATE_TOKENS = 26
MICRO_BATCH = 4


def length_mix(n: int, seed: int, scale: int = 1) -> list[tuple[int, int]]:
    """(prompt tokens before the answer, answer tokens) of n samples, the video's placeholder not counted."""
    rng = np.random.default_rng(seed)
    question = rng.integers(8, 41, n)
    answer = np.clip(np.round(rng.lognormal(np.log(70), 0.7, n)), 4, 600).astype(int)
    return [(max(2, (TEMPLATE_TOKENS + q) // scale), max(1, a // scale)) for q, a in zip(question, answer)]


def make_stream(mix: list[tuple[int, int]], frames: int, vocab: int, seed: int) -> list[dict]:
    """Processed samples as the loader makes them (one placeholder after the system line, targets = the answer),
    their frames left out (`frames_of` makes them for the few samples a timed step uses)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (prompt, answer) in enumerate(mix):
        ids = rng.integers(1, vocab, prompt + answer).astype(np.int32)
        ids[min(4, prompt - 1)] = IMAGE_TOKEN_INDEX
        labels = np.where(np.arange(len(ids)) >= prompt, ids, IGNORE_INDEX).astype(np.int32)
        out.append({"input_ids": ids, "labels": labels, "pixel_values": np.zeros((frames, 1, 1, 3), np.float32),
                    "frames_mask": np.ones(frames, bool), "sample_index": np.int64(i)})
    return out


def frames_of(index: int, s: dict) -> np.ndarray:
    return np.random.default_rng(index).normal(size=(s["frames"], s["image"], s["image"], 3)).astype(np.float32)


def bucketed_steps(lengths: list[int], buckets: tuple[int, ...], loader_batch: int
                   ) -> tuple[list[list[int]], list[int]]:
    """Today's loader: batches of `loader_batch` samples (model lengths `lengths`), each padded to the smallest
    bucket that fits its longest, split into micro-batches. -> (the micro-batches' sample indices, their widths)."""
    steps, widths = [], []
    for start in range(0, len(lengths) - loader_batch + 1, loader_batch):
        width = next(b for b in buckets if b >= max(lengths[start:start + loader_batch]))
        for m in range(start, start + loader_batch - MICRO_BATCH + 1, MICRO_BATCH):
            steps.append(list(range(m, m + MICRO_BATCH)))
            widths.append(width)
    return steps, widths


def bucketed_batch(stream: list[dict], indices: list[int], width: int, queries: int, s: dict) -> dict:
    group = [stream[i] for i in indices]
    text = collate([x["input_ids"] for x in group], [x["labels"] for x in group], pad_id=0, eos_id=None,
                   pad_to=width - queries + 1)
    return {**text, "pixel_values": np.stack([frames_of(i, s) for i in indices]),
            "frames_mask": np.stack([x["frames_mask"] for x in group])}


def packed_rows(stream: list[dict], length: int, videos: int, bins: int, queries: int) -> list[dict]:
    """The loader's packing of the stream (ExpandVideo + Grain first-fit), without its last packed batch."""
    ds = grain.MapDataset.source(stream).map(ExpandVideo(queries)).to_iter_dataset()
    return list(pack(ds, length, videos, pad_id=0, bins=bins))[:-bins]


def packed_batch(row: dict, s: dict) -> dict:
    """One row as a batch of one, with the frames of the samples in its slots."""
    pixels = np.zeros((len(row["sample_index"]), s["frames"], s["image"], s["image"], 3), np.float32)
    for slot, index in enumerate(row["sample_index"]):
        if index >= 0:
            pixels[slot] = frames_of(int(index), s)
    return {**{k: row[k][None] for k in (*PACKED_BATCH_NDIMS, "sample_index")}, "pixel_values": pixels[None]}


def recipe_layout(recipe: str) -> tuple[int, int, int]:
    """(row length, video slots, packing bins) the training loader packs with under `recipe`: rows of
    model.max_length, data.videos_per_row slots (0: `videos_per_row`), the loader's default bins."""
    c = load_config(CONFIGS / recipe)
    length = c.model.max_length
    return length, videos_per_row(length, (c.model.num_queries,), c.data.videos_per_row), TrainLoaderConfig.packing_bins


def model_config(s: dict, length: int) -> ml_collections.ConfigDict:
    config = load_config(CONFIGS / "base.py")  # the finetune recipe's optimizer and freezing, mid-size model
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


def flops(jitted, state, batch: dict) -> float:
    """XLA's FLOP count of one compiled step (newer JAX: a dict; older: a list with one)."""
    cost = jitted.lower(state, batch).cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stream", type=int, default=2048, help="samples of the mix each side batches")
    ap.add_argument("--loader-batch", type=int, default=64, help="today's per-host loader batch (the recipe's 64)")
    ap.add_argument("--recipe", default="finetune_qwen25_3b_group16.py", help="the packing settings' recipe")
    ap.add_argument("--layouts", default="3072x4,4096x6",
                    help="more packed layouts to time: LENGTHxSLOTS,...")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each step shape")
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
    length, videos, bins = recipe_layout(args.recipe)
    layouts = [(length // scale, videos)]
    for item in filter(None, args.layouts.split(",")):
        extra = tuple(int(x) for x in item.split("x"))
        if (extra[0] // scale, extra[1]) not in layouts:
            layouts.append((extra[0] // scale, extra[1]))
    config = model_config(s, max(max(buckets), *(n for n, _ in layouts)))
    source = setup.model_source(config)
    model = setup.build_model(config, source)
    queries = source.config.model.video_tokens(s["frames"])
    stream = make_stream(length_mix(args.stream, seed=0, scale=scale), s["frames"], s["vocab"], seed=1)

    # Each side: the steps it makes of the whole stream (an example batch per step shape, how many steps of each
    # shape, the stream's real tokens and model tokens). A step's time depends on its shape only, so timing one step
    # of each shape gives the stream's time without running all of it.
    lengths = [len(x["input_ids"]) - 1 + queries for x in stream]  # model tokens of each sample
    steps, widths = bucketed_steps(lengths, buckets, args.loader_batch)
    first = {w: steps[widths.index(w)] for w in sorted(set(widths))}
    sides = {f"bucketed (batches of {args.loader_batch})": dict(
        examples={w: bucketed_batch(stream, first[w], w, queries, s) for w in first},
        counts={w: widths.count(w) for w in first}, ndims=setup.BATCH_NDIMS,
        real=sum(lengths[i] for step in steps for i in step), cells=MICRO_BATCH * sum(widths),
        samples=MICRO_BATCH * len(steps))}
    for row_length, slots in layouts:
        rows = packed_rows(stream, row_length, slots, bins, queries)
        sides[f"packed {row_length} x {slots} slots"] = dict(
            examples={row_length: packed_batch(rows[len(rows) // 2], s)}, counts={row_length: len(rows)},
            ndims=PACKED_BATCH_NDIMS, real=sum(real_tokens(r) for r in rows), cells=row_length * len(rows),
            samples=sum(int((r["sample_index"] >= 0).sum()) for r in rows))

    tx = setup.optimizer(config, optim.make_schedule(2e-5, 1000, 0.0, "constant"))
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    graphdef, params, frozen, rest = setup.split(model, optim.check_freeze(config.freeze))
    step_fn = step_lib.make_train_step(graphdef, tx, setup.loss_fn(config))  # dispatches on the batch's arrays
    fns, cost = {}, {}
    for name, side in sides.items():
        state = jax.tree.map(lambda x: x.copy(), step_lib.init_state(params, frozen, rest, tx))  # (donated)
        shardings = tree_shardings(state, mesh)
        jitted = step_lib.jit_train_step(step_fn, shardings, mesh, side["ndims"])
        holder = {"state": jax.device_put(state, shardings)}
        for shape, example in side["examples"].items():
            batch = jax.device_put({k: example[k] for k in side["ndims"]})
            cost[name, shape] = flops(jitted, holder["state"], batch)

            def one_step(jitted=jitted, holder=holder, batch=batch) -> None:
                holder["state"], metrics = jitted(holder["state"], batch)
                jax.block_until_ready(metrics)

            fns[name, shape] = one_step

    times = interleaved_times(fns, warmup=1, repeats=args.repeats)
    threads = len(os.sched_getaffinity(0))
    print(f"\nfinetune train step, float32, {threads} threads; a stream of {args.stream} samples of the "
          f"LLaVA-Video-178K-like mix (module docstring), {queries} video tokens each; packing as {args.recipe} "
          f"({bins} bins); seconds per step: median of {args.repeats} per step shape, weighted by the stream's steps")
    print(f"{'':28s} {'steps':>5s} {'samples':>7s} {'real tok':>8s} {'padding':>7s} {'MFLOP/tok':>9s} {'s/step':>7s} "
          f"{'cpu s':>7s} {'tok/s':>7s} {'x wall':>6s} {'x cpu':>6s} {'x flop':>6s}")
    ref = None
    for name, side in sides.items():
        steps_n = sum(side["counts"].values())
        total = {k: sum(n * statistics.median(t[k] for t in times[name, shape]) for shape, n in side["counts"].items())
                 for k in (0, 1)}  # (wall, cpu) seconds of the whole stream
        per_token = sum(n * cost[name, shape] for shape, n in side["counts"].items()) / side["real"]
        row = (side["real"] / total[0], side["real"] / total[1], per_token)
        ref = ref or row
        print(f"{name:28s} {steps_n:5d} {side['samples']:7d} {side['real']:8d} {1 - side['real'] / side['cells']:7.1%} "
              f"{per_token / 1e6:9.1f} {total[0] / steps_n:7.2f} {total[1] / steps_n:7.2f} {row[0]:7.1f} "
              f"{row[0] / ref[0]:6.2f} {row[1] / ref[1]:6.2f} {ref[2] / row[2]:6.2f}")
    print("x: real tokens/s relative to the bucketed side, by wall time, by CPU time, by FLOPs per real token "
          "(goal >= 1.3x, padding < 5%)")


if __name__ == "__main__":
    main()
