"""The prepared accelerator check: one script, one table, a few minutes on one GPU or TPU chip.

1. train: the published Qwen2.5-3B group-16 finetune step (the finetune recipe: vision frozen, LLM and connector
   trained, AdamW with fp32 master weights, bf16 compute, full remat), random weights, at the largest micro-batch
   that fits: step time, real (non-padding) tokens/s, MFU with the vision tower's FLOPs counted, peak device memory.
   Rows are packed (`data.packing`, as the recipe trains) with finetune-shaped samples (16 frames -> 512 video
   tokens, a short question and answer), each with its own video slot, segment and positions.
2. attention: the fused backend `auto` picks on this device (cuDNN on a GPU, splash on a TPU) against the written-out
   XLA reference, on the finetune's causal + segment mask: max |difference| of the outputs (bf16 tolerance) and
   forward + backward time of each, with the ratio.
3. decode: cached greedy decode tokens/s of the 3B decoder at batch 1 and 32 (a 512-video-token prompt).

`--quick` runs the same code at tiny sizes (the CPU, inside the test suite) so that it cannot rot.

    python bench/device_check.py [--quick] [--steps 5] [--micro-batch N]
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlv_jax.data.packing import PACKED_BATCH_NDIMS, videos_per_row  # noqa: E402
from tlv_jax.generate import _decode_all, _prefill, sample  # noqa: E402
from tlv_jax.models.layers.attention import attention, resolve_impl  # noqa: E402
from tlv_jax.models.layers.attention_mask import AttentionMask  # noqa: E402
from tlv_jax.models.tinyllava import TinyLlavaVideo  # noqa: E402
from tlv_jax.models.tinyllava_config import ModelConfig  # noqa: E402
from tlv_jax.sharding.mesh import make_mesh, tree_shardings  # noqa: E402
from tlv_jax.train import flops as flops_lib  # noqa: E402
from tlv_jax.train import optim, setup  # noqa: E402
from tlv_jax.train import step as step_lib  # noqa: E402
from tlv_jax.train.config_file import load_config  # noqa: E402

RECIPE = ROOT / "configs" / "finetune_qwen25_3b_group16.py"
NEVER = -1  # an EOS id argmax never returns: decode runs every step
QUICK_SCRATCH = dict(
    vision=dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, image_size=32, patch_size=8,
                use_head=False),
    llm=dict(family="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
             num_kv_heads=2, head_dim=16, rope_theta=10000.0, tie_word_embeddings=True),
    connector=dict(), posemb_init="sincos2d")


@dataclasses.dataclass(frozen=True)
class Sizes:
    frames: int
    max_length: int
    # A finetune sample's text (question + answer, template included) is drawn from this range of tokens; the
    # open-QA finetune set's answers are a sentence or two.
    text_tokens: tuple[int, int]
    decode_prompt_text: int
    decode_tokens: int
    decode_batches: tuple[int, ...]
    micro_batches: tuple[int, ...]  # tried largest first


FULL = Sizes(frames=16, max_length=3072, text_tokens=(60, 200), decode_prompt_text=64, decode_tokens=128, decode_batches=(1, 32),
             micro_batches=(8, 4, 2, 1))
QUICK = Sizes(frames=4, max_length=96, text_tokens=(8, 40), decode_prompt_text=8, decode_tokens=8, decode_batches=(1, 4),
              micro_batches=(4, 2))


def recipe(quick: bool) -> ml_collections.ConfigDict:
    """The finetune recipe as the check runs it: bf16 compute, full remat, random weights (tiny for --quick)."""
    config = load_config(RECIPE)
    config.model.update(dict(dtype="bfloat16", remat="full"))
    config.data.packing = True
    if quick:
        config.model.update(dict(init="scratch", num_queries=16, group=4, num_resampler_layers=1, max_length=96))
        config.model.scratch = ml_collections.ConfigDict(QUICK_SCRATCH)
        config.data.update(dict(num_frames=QUICK.frames, length_buckets=(QUICK.max_length,)))
    return config


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    return setup.model_source(config, presets=True).config.model


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_memory() -> tuple[Optional[int], str]:
    """(bytes, what was measured): the device's peak where JAX reports it, else this process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


# ---- 1. the finetune step -----------------------------------------------------------------------------------------

def packed_rows(cfg: ModelConfig, rows: int, sizes: Sizes, slots: int, rng: np.random.Generator
                ) -> tuple[dict, np.ndarray, np.ndarray]:
    """(a packed micro-batch as the loader makes it, frames per sample, model tokens per sample): each row filled
    in order with finetune-shaped samples (a few prompt tokens, the video's placeholders, the rest of the text with
    its last third as the answer) while the next one fits, in at most `slots` samples."""
    video, length = cfg.video_tokens(sizes.frames), sizes.max_length
    ids = np.zeros((rows, length), np.int32)
    labels = np.full((rows, length), -100, np.int32)
    segments, positions = np.zeros((rows, length), np.int32), np.zeros((rows, length), np.int32)
    frames_mask = np.zeros((rows, slots, sizes.frames), bool)
    lengths = []
    for r in range(rows):
        at = 0
        for slot in range(slots):
            text = int(rng.integers(*sizes.text_tokens))
            n = video + text
            if at + n > length:
                break
            ids[r, at:at + n] = rng.integers(10, cfg.llm.vocab_size, n)
            ids[r, at + 4:at + 4 + video] = cfg.image_token_index
            labels[r, at + n - text // 3:at + n] = ids[r, at + n - text // 3:at + n]
            segments[r, at:at + n], positions[r, at:at + n] = slot + 1, np.arange(n)
            frames_mask[r, slot] = True
            lengths.append(n)
            at += n
    size = cfg.vision.image_size
    batch = {"input_ids": ids, "labels": labels, "segment_ids": segments, "positions": positions,
             "pixel_values": rng.normal(size=(rows, slots, sizes.frames, size, size, 3)).astype(np.float32),
             "frames_mask": frames_mask}
    return batch, np.full(len(lengths), sizes.frames), np.asarray(lengths)


def train_check(config: ml_collections.ConfigDict, cfg: ModelConfig, sizes: Sizes, steps: int,
                micro_batches: tuple[int, ...]) -> dict[str, Any]:
    """The step at the largest of `micro_batches` that compiles and runs (out-of-memory ones are skipped)."""
    freeze = optim.check_freeze(config.freeze)
    tx = setup.optimizer(config, optax.constant_schedule(config.optim.lr))
    model = TinyLlavaVideo(cfg, rngs=nnx.Rngs(0))
    graphdef, params, frozen, rest = setup.split(model, freeze)
    del model
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    state = step_lib.init_state(params, frozen, rest, tx)
    shardings = tree_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    step = step_lib.jit_train_step(step_lib.make_train_step(graphdef, tx, setup.loss_fn(config)), shardings, mesh,
                                   PACKED_BATCH_NDIMS)
    rng = np.random.default_rng(0)
    failures = []
    slots = videos_per_row(sizes.max_length, (cfg.video_tokens(sizes.frames),), config.data.videos_per_row)
    for rows in micro_batches:
        batch, frames, lengths = packed_rows(cfg, rows, sizes, slots, rng)
        device_batch = jax.device_put(batch)
        try:
            t = time.perf_counter()
            state, metrics = step(state, device_batch)
            loss = float(metrics["loss"])
            compile_s = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - XLA's out-of-memory error type differs by backend and version
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            failures.append(rows)
            continue
        holder = {"state": state}

        def one() -> Any:
            holder["state"], m = step(holder["state"], device_batch)
            return m["loss"]

        seconds = median_time(one, steps)
        flops = flops_lib.train_flops(cfg, freeze, frames, lengths)  # per sample: packed attention stays within one
        peak, what = peak_memory()
        return dict(rows=rows, seq=sizes.max_length, samples=len(lengths), too_big=failures, loss=loss,
                    compile_s=compile_s, step_s=seconds, tokens_per_s=float(lengths.sum()) / seconds,
                    padding=1 - lengths.sum() / (rows * sizes.max_length), flops=flops,
                    mfu=flops_lib.mfu(flops, seconds, 1, flops_lib.peak_tflops()), peak=peak, peak_what=what)
    raise RuntimeError(f"no micro-batch of {micro_batches} fits this device")


# ---- 2. fused vs reference attention ------------------------------------------------------------------------------

def attention_check(cfg: ModelConfig, rows: int, seq: int, segments: int, repeats: int) -> dict[str, Any]:
    """`auto` against `xla` on causal attention over `segments` packed samples per row, bf16."""
    n, k, h = cfg.llm.num_heads, cfg.llm.num_kv_heads, cfg.llm.head_dim
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (rows, seq, n, h), jnp.bfloat16)
    kv = [jax.random.normal(kk, (rows, seq, k, h), jnp.bfloat16) for kk in keys[1:]]
    seg = jnp.broadcast_to(jnp.arange(seq) * segments // seq, (rows, seq)).astype(jnp.int32)
    mask = AttentionMask(causal=True, q_segments=seg, kv_segments=seg)
    fused = resolve_impl("auto", q.dtype, q.shape, kv[0].shape, mask)
    results: dict[str, Any] = {"fused": fused, "shape": (rows, seq, n, k, h), "segments": segments}
    outs = {}
    for impl in dict.fromkeys((fused, "xla")):  # once when there is no fused backend here
        fwd = jax.jit(lambda q, k, v, impl=impl: attention(q, k, v, mask, impl=impl))
        grad = jax.jit(jax.grad(lambda q, k, v, impl=impl: attention(q, k, v, mask, impl=impl).astype(
            jnp.float32).sum(), argnums=(0, 1, 2)))
        outs[impl] = np.asarray(fwd(q, *kv).astype(jnp.float32))
        jax.block_until_ready(grad(q, *kv))
        results[f"{impl}_s"] = median_time(lambda: (fwd(q, *kv), grad(q, *kv)), repeats)
    results["max_abs_diff"] = float(np.abs(outs[fused] - outs["xla"]).max())
    return results


# ---- 3. decode ----------------------------------------------------------------------------------------------------

def decode_check(cfg: ModelConfig, sizes: Sizes, batch: int) -> float:
    """Greedy cached decode tokens/s (all rows together) after a prefill of video tokens + text."""
    model = TinyLlavaVideo(cfg, rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    rng = np.random.default_rng(1)
    ids = rng.integers(10, cfg.llm.vocab_size, (batch, sizes.decode_prompt_text)).astype(np.int32)
    ids[:, 4] = cfg.image_token_index
    mask = np.ones(ids.shape, bool)
    video = jnp.asarray(rng.normal(size=(batch, cfg.video_tokens(sizes.frames), cfg.llm.hidden_size)), jnp.bfloat16)
    key, zero, one = jax.random.key(0), jnp.float32(0.0), jnp.float32(1.0)

    def run() -> Any:
        logits, cache = _prefill(graphdef, state, ids, mask, video, None, sizes.decode_tokens)
        first = sample(logits, key, zero, one)
        jax.block_until_ready((first, cache))
        t = time.perf_counter()
        jax.block_until_ready(_decode_all(graphdef, state, first, cache, key, jnp.int32(NEVER), zero, one,
                                          sizes.decode_tokens))
        return time.perf_counter() - t

    run()  # compile
    seconds = statistics.median(run() for _ in range(3))
    return batch * (sizes.decode_tokens - 1) / seconds


# ---- the table ----------------------------------------------------------------------------------------------------

def table(device: str, cfg: ModelConfig, train: dict, attn: dict, decode: dict[int, float]) -> str:
    gib = lambda b: f"{b / 2 ** 30:.1f} GiB" if b is not None else "n/a"  # noqa: E731
    mfu = f"{train['mfu']:.1%}" if train["mfu"] is not None else "n/a (unknown peak)"
    fused, ref = attn[f"{attn['fused']}_s"], attn["xla_s"]
    name = attn["fused"] if attn["fused"] != "xla" else "xla (no fused backend on this device)"
    b, t, n, k, h = attn["shape"]
    lines = [
        f"device check: {device}; LLM {cfg.llm.family} {cfg.llm.num_layers} layers x {cfg.llm.hidden_size}, "
        f"vision {cfg.vision.num_layers} x {cfg.vision.hidden_size}, {cfg.connector.kind} connector",
        "",
        "| check | value |",
        "|---|---|",
        f"| finetune step: micro-batch | {train['rows']} packed rows x {train['seq']} tokens, {train['samples']} "
        f"samples (did not fit: {train['too_big'] or 'none larger tried'}) |",
        f"| finetune step: time | {train['step_s'] * 1e3:.1f} ms (first call incl. compile {train['compile_s']:.1f} s) |",
        f"| finetune step: real tokens/s | {train['tokens_per_s']:,.0f} (padding {train['padding']:.1%}) |",
        f"| finetune step: MFU (vision counted) | {mfu} |",
        f"| finetune step: {train['peak_what']} | {gib(train['peak'])} |",
        f"| attention {name} vs xla: max abs diff (bf16) | {attn['max_abs_diff']:.3g} |",
        f"| attention fwd+bwd ({b}x{t}, {n}/{k} heads x {h}, {attn['segments']} segments) | "
        f"{attn['fused']} {fused * 1e3:.2f} ms, xla {ref * 1e3:.2f} ms, ratio {ref / fused:.2f}x |",
        *[f"| decode tokens/s, batch {bsz} | {tps:,.1f} |" for bsz, tps in decode.items()],
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes on any device (the test suite's CPU run)")
    ap.add_argument("--steps", type=int, default=5, help="timed train steps (median)")
    ap.add_argument("--micro-batch", type=int, default=0, help="rows per step (default: the largest that fits)")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    config = recipe(args.quick)
    cfg = model_config(config)
    micro = (args.micro_batch,) if args.micro_batch else sizes.micro_batches
    train = train_check(config, cfg, sizes, args.steps, micro)
    attn = attention_check(cfg, train["rows"], sizes.max_length, segments=4, repeats=args.steps)
    decode = {b: decode_check(cfg, sizes, b) for b in sizes.decode_batches}
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}"
    out = table(device, cfg, train, attn, decode)
    print(out)
    return out


if __name__ == "__main__":
    main()
