"""Full finetune vs LoRA vs QLoRA (int8 base) of the mid-size model of bench/bench_train.py on CPU: train-step time
and peak memory, each variant in its own process (peak RSS is per process), the full finetune measured in the same
run as the reference. Goal: LoRA peak memory <= 0.6x and step >= 1.2x faster than the full finetune.

The recipe of each: full = LLM and connector trained, vision frozen (the finetune stage); LoRA = adapters (r 16,
alpha 32) on every LLM projection, the base frozen in the compute dtype, connector trained (the Factory's LoRA
recipe); QLoRA = the same with an int8 base. (A bf16 base under float32 compute would keep float32 copies of the
cast kernels for the backward pass: more memory, not less.) float32 compute, batch 4 x 192 text tokens, 4 frames of 224 px.

    python bench/bench_lora.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"full": None, "lora": "float32", "qlora int8": "int8"}  # LoRA's base in the compute dtype
# bench/bench_train.py's mid-size model: SigLIP 384 x 4 layers at 224 px, group resampler (64 queries, 4 groups,
# 2 layers), Qwen2 512 x 4 layers (8 heads, 2 KV heads, MLP 1408, vocab 8192).
MID = dict(vision=dict(hidden_size=384, intermediate_size=1536, num_layers=4, num_heads=6, image_size=224,
                       patch_size=16, use_head=False),
           llm=dict(family="qwen2", vocab_size=8192, hidden_size=512, intermediate_size=1408, num_layers=4,
                    num_heads=8, num_kv_heads=2, head_dim=64, rope_theta=1e6, tie_word_embeddings=True),
           queries=64, group=4, res_layers=2, frames=4, batch=4, text=192)
QUICK = dict(vision=dict(MID["vision"], hidden_size=128, intermediate_size=256, num_layers=2, num_heads=2,
                         image_size=112),
             llm=dict(MID["llm"], vocab_size=1024, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                      head_dim=32),
             queries=16, group=2, res_layers=1, frames=2, batch=2, text=64)


def rss_mib() -> float:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """This process's resident set now (/proc/self/statm: pages)."""
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def measure(variant: str, sizes: dict, repeats: int, warmup: int) -> dict:
    """One variant, in this process: (step seconds, peak RSS before building anything and at the end)."""
    import jax
    import ml_collections
    import numpy as np

    from tlv_jax.sharding.mesh import make_mesh, tree_shardings
    from tlv_jax.train import lora_state, optim, setup
    from tlv_jax.train import step as step_lib
    from tlv_jax.train.config_file import load_config

    jax.numpy.zeros(1).block_until_ready()  # the runtime is part of the baseline
    baseline = rss_mib()
    config = load_config(ROOT / "configs" / "base.py")
    config.model.update(dict(init="scratch", num_queries=sizes["queries"], group=sizes["group"],
                             num_resampler_layers=sizes["res_layers"], dtype="float32", remat="", max_length=4096))
    config.model.scratch = ml_collections.ConfigDict(dict(vision=sizes["vision"], llm=sizes["llm"], connector={},
                                                          posemb_init="normal"))
    config.data.num_frames = sizes["frames"]
    base_dtype = VARIANTS[variant]
    if base_dtype is not None:
        config.freeze.llm = "frozen"
        config.lora.update(dict(rank=16, alpha=32.0, base_dtype=base_dtype))
    source = setup.model_source(config)
    cfg = source.config.model
    lora = lora_state.spec(config)
    freeze = lora_state.check_freeze(config.freeze, lora)
    model = setup.build_model(config, source)
    if lora is not None:
        model, _ = lora_state.adapt(model, lora, "bench", config.seed)
    graphdef, params, frozen, rest = setup.split(model, freeze, lora)
    del model
    tx = setup.optimizer(config, optim.make_schedule(2e-5, 1000, 0.0, "constant"))
    state = step_lib.init_state(params, frozen, rest, tx)
    del params, frozen, rest
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    shardings = tree_shardings(state, mesh)
    step = step_lib.make_train_step(graphdef, tx, setup.loss_fn(config))
    jitted = step_lib.jit_train_step(step, shardings, mesh, setup.BATCH_NDIMS)

    rng = np.random.default_rng(0)
    ids = rng.integers(0, sizes["llm"]["vocab_size"], (sizes["batch"], sizes["text"])).astype(np.int32)
    ids[:, 16] = cfg.image_token_index
    labels = ids.copy()
    labels[:, :17] = -100
    size = sizes["vision"]["image_size"]
    batch = jax.device_put({
        "input_ids": ids, "labels": labels, "attention_mask": np.ones(ids.shape, bool),
        "pixel_values": rng.normal(size=(sizes["batch"], sizes["frames"], size, size, 3)).astype(np.float32),
        "frames_mask": np.ones((sizes["batch"], sizes["frames"]), bool)})
    holder = {"state": jax.device_put(state, shardings)}
    del state
    trained = sum(x.size for x in jax.tree.leaves(holder["state"].params))
    total = trained + sum(x.size for x in jax.tree.leaves(holder["state"].frozen))
    times, losses, steady = [], [], 0.0
    for i in range(warmup + repeats):
        start = time.perf_counter()
        holder["state"], metrics = jitted(holder["state"], batch)
        losses.append(float(metrics["loss"]))
        if i >= warmup:
            times.append(time.perf_counter() - start)
        steady = max(steady, current_rss_mib())
    return {"variant": variant, "step_s": statistics.median(times), "peak_mib": rss_mib(), "baseline_mib": baseline,
            "steady_mib": steady,
            "trained": int(trained), "total": int(total), "first_loss": losses[0], "last_loss": losses[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a tiny model, 2 repeats (smoke run)")
    ap.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args()
    sizes = QUICK if args.quick else MID
    if args.quick:
        args.repeats = 2
    if args.variant:
        print(json.dumps(measure(args.variant, sizes, args.repeats, args.warmup)))
        return
    rows = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--repeats", str(args.repeats),
               "--warmup", str(args.warmup)] + (["--quick"] if args.quick else [])
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT),
                                                                                  **_env()})
        if done.returncode:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        rows[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    full = rows["full"]
    print(f"\ntrain step on CPU, float32, batch {sizes['batch']} x {sizes['frames']} frames, median of "
          f"{args.repeats} steps. Memory per process: peak RSS (compilation included), and the largest RSS while "
          f"stepping; both also less the process's RSS at start-up (JAX runtime loaded)")
    print(f"{'':11s} {'trained params':>20s} {'step s':>7s} {'speed-up':>8s} {'peak MiB':>9s} {'ratio':>5s} "
          f"{'stepping MiB':>12s} {'ratio':>5s} {'above start':>11s} {'ratio':>5s} {'loss 1st -> last':>17s}")
    for name, r in rows.items():
        added, full_added = r["steady_mib"] - r["baseline_mib"], full["steady_mib"] - full["baseline_mib"]
        share = f"{r['trained']:,} ({100 * r['trained'] / r['total']:.1f}%)"
        print(f"{name:11s} {share:>20s} {r['step_s']:7.3f} {full['step_s'] / r['step_s']:7.2f}x "
              f"{r['peak_mib']:9.0f} {r['peak_mib'] / full['peak_mib']:5.2f} {r['steady_mib']:12.0f} "
              f"{r['steady_mib'] / full['steady_mib']:5.2f} {added:11.0f} {added / full_added:5.2f} "
              f"{r['first_loss']:7.4f} -> {r['last_loss']:.4f}")
    lora = rows["lora"]
    print(f"goal: LoRA memory <= 0.6x full (peak {lora['peak_mib'] / full['peak_mib']:.2f}x, stepping "
          f"{lora['steady_mib'] / full['steady_mib']:.2f}x), step >= 1.2x faster "
          f"({full['step_s'] / lora['step_s']:.2f}x)")


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}


if __name__ == "__main__":
    main()
