"""Full finetune vs LoRA vs QLoRA (int8 base) of the mid-size model of bench/bench_train.py: train-step time, work
and memory, each variant in its own process (peak RSS is per process), the full finetune measured in the same run as
the reference. Goal: LoRA peak memory <= 0.6x and step >= 1.2x faster than the full finetune.

Rows (vision frozen in all, as in the finetune stage; the compute dtype `--dtype`, bfloat16 by default: the recipes'
compute dtype, and LoRA's base dtype, `lora.base_dtype`):
- full: LLM and connector trained (float32 masters and Adam moments, cast to the compute dtype in the step).
- LoRA: adapters (r 16, alpha 32) on every LLM projection, everything else frozen in the compute dtype: only the
  adapters train (1.9% of the parameters), only they have gradients and Adam moments. QLoRA int8: the same on an
  int8 base.
- LoRA + connector: the same adapters, the connector trained in full (the Factory's LoRA recipe).
- LLM frozen, connector trained, no adapters: the step that LoRA + connector cannot beat (it computes everything
  that row does except the adapters), so full / this row bounds that row's speed-up.
(With `--dtype float32` LoRA's base is float32 too: a bf16 base under float32 compute would add a float32 copy of
each cast kernel to the step, more memory, not less.)

Per row: the step's time (median of `--repeats` steps after `--warmup`): wall seconds and CPU seconds (all threads
of the process; the machine may be shared, and CPU time is the less load-sensitive of the two, the speed-up is taken
from it); the compiled step's floating-point work (XLA's cost analysis); the compiled step's memory (XLA's buffer
assignment: arguments + temporaries + outputs not aliased to a donated argument, i.e. what a device holds while the
step runs, and what `python -m tlv_jax.plan` counts); on CPU the process's peak RSS (compilation included), the
same above the process's RSS once the JAX runtime is up (before any model exists), and its largest RSS while
stepping. Batch 4 x 192 text tokens, 4 frames of 224 px, no remat (as bench/bench_train.py; `--remat full`, the
recipes' setting, recomputes each decoder block in the backward pass).

    python bench/bench_lora.py [--repeats 5] [--quick] [--remat full] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name -> (connector, LoRA base dtype or None for no adapters ("compute": the compute dtype), LLM trained in full).
VARIANTS = {"full": ("full", None, True), "LoRA": ("frozen", "compute", False), "QLoRA int8": ("frozen", "int8", False),
            "LoRA + connector": ("full", "compute", False), "LLM frozen, no adapters": ("full", None, False)}
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
MIB = 1 << 20


def rss_mib() -> float:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """This process's resident set now (/proc/self/statm: pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def measure(variant: str, sizes: dict, repeats: int, warmup: int, remat: str, dtype: str) -> dict:
    """One variant, in this process: step times, work, compiled memory, RSS."""
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
                             num_resampler_layers=sizes["res_layers"], dtype=dtype, remat=remat, max_length=4096))
    config.model.scratch = ml_collections.ConfigDict(dict(vision=sizes["vision"], llm=sizes["llm"], connector={},
                                                          posemb_init="normal"))
    config.data.num_frames = sizes["frames"]
    connector, base_dtype, llm_full = VARIANTS[variant]
    config.freeze.update(dict(connector=connector, llm="full" if llm_full else "frozen"))
    if base_dtype is not None:
        config.lora.update(dict(rank=16, alpha=32.0, base_dtype=dtype if base_dtype == "compute" else base_dtype))
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
    compiled = jitted.lower(holder["state"], batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax: one dict per device
    memory = compiled.memory_analysis()
    trained = sum(x.size for x in jax.tree.leaves(holder["state"].params))
    total = trained + sum(x.size for x in jax.tree.leaves(holder["state"].frozen))
    walls, cpus, losses, steady = [], [], [], 0.0
    for i in range(warmup + repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        holder["state"], metrics = compiled(holder["state"], batch)
        losses.append(float(metrics["loss"]))
        if i >= warmup:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        steady = max(steady, current_rss_mib())
    device = jax.devices()[0]
    peak_device = (device.memory_stats() or {}).get("peak_bytes_in_use") if device.platform != "cpu" else None
    return {"variant": variant, "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
            "gflop": cost.get("flops", 0.0) / 1e9,
            "state_mib": memory.argument_size_in_bytes / MIB, "temp_mib": memory.temp_size_in_bytes / MIB,
            "device_mib": (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
                           - memory.alias_size_in_bytes) / MIB,
            "device_peak_mib": peak_device / MIB if peak_device else None,
            "peak_mib": rss_mib(), "baseline_mib": baseline, "steady_mib": steady,
            "trained": int(trained), "total": int(total), "first_loss": losses[0], "last_loss": losses[-1]}


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    """`measure` in a fresh process (its own peak RSS), without the caller's XLA flags."""
    cmd = [sys.executable, __file__, "--variant", variant, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--remat", args.remat, "--dtype", args.dtype] + (["--quick"] if args.quick else [])
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), **env})
    if done.returncode:
        sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: dict[str, dict], sizes: dict, repeats: int, remat: str, dtype: str) -> None:
    full = rows["full"]
    print(f"\ntrain step, {dtype}, batch {sizes['batch']} x {sizes['frames']} frames, remat {remat or 'off'}, median "
          f"of {repeats} steps; speed-up = full's CPU s / the row's; device MiB = the compiled step's arguments + "
          f"temporaries; above runtime = peak RSS - the RSS of the bare JAX runtime ({full['baseline_mib']:.0f} MiB)")
    print(f"{'':24s} {'trained params':>20s} {'wall s':>7s} {'CPU s':>6s} {'speed-up':>8s} {'GFLOP':>6s} "
          f"{'ratio':>5s} {'device MiB':>10s} {'ratio':>5s} {'state':>6s} {'temp':>6s} {'peak RSS':>8s} "
          f"{'ratio':>5s} {'above runtime':>13s} {'ratio':>5s} {'stepping':>8s} {'ratio':>5s} "
          f"{'loss 1st -> last':>17s}")
    for name, r in rows.items():
        share = f"{r['trained']:,} ({100 * r['trained'] / r['total']:.1f}%)"
        print(f"{name:24s} {share:>20s} {r['wall_s']:7.2f} {r['cpu_s']:6.2f} {full['cpu_s'] / r['cpu_s']:7.2f}x "
              f"{r['gflop']:6.1f} {r['gflop'] / full['gflop']:5.2f} {r['device_mib']:10.0f} "
              f"{r['device_mib'] / full['device_mib']:5.2f} {r['state_mib']:6.0f} {r['temp_mib']:6.0f} "
              f"{r['peak_mib']:8.0f} {r['peak_mib'] / full['peak_mib']:5.2f} {above(r):13.0f} "
              f"{above(r) / above(full):5.2f} {r['steady_mib']:8.0f} {r['steady_mib'] / full['steady_mib']:5.2f} "
              f"{r['first_loss']:7.4f} -> {r['last_loss']:.4f}")
        if r["device_peak_mib"]:
            print(f"{'':24s} accelerator peak memory {r['device_peak_mib']:.0f} MiB "
                  f"({r['device_peak_mib'] / full['device_peak_mib']:.2f}x full)")
    for name in ("LoRA", "QLoRA int8"):
        r = rows[name]
        print(f"goal: {name} memory <= 0.6x full (device {r['device_mib'] / full['device_mib']:.2f}x, peak RSS "
              f"{r['peak_mib'] / full['peak_mib']:.2f}x, above runtime {above(r) / above(full):.2f}x), step >= 1.2x "
              f"faster (CPU {full['cpu_s'] / r['cpu_s']:.2f}x, wall {full['wall_s'] / r['wall_s']:.2f}x, work "
              f"{full['gflop'] / r['gflop']:.2f}x)")
    floor = rows["LLM frozen, no adapters"]
    print(f"LoRA + connector's bound (the LLM frozen, no adapters): CPU {full['cpu_s'] / floor['cpu_s']:.2f}x, work "
          f"{full['gflop'] / floor['gflop']:.2f}x, device memory {floor['device_mib'] / full['device_mib']:.2f}x")


def above(row: dict) -> float:
    """Peak RSS above the bare JAX runtime: what the model, its step and their compilation took."""
    return row["peak_mib"] - row["baseline_mib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a tiny model, 2 repeats (smoke run)")
    ap.add_argument("--remat", default="", help="the decoder's remat policy ('' off, full, dots, dots_no_batch)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="the compute dtype")
    ap.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args()
    sizes = QUICK if args.quick else MID
    if args.quick:
        args.repeats = 2
    if args.variant:
        print(json.dumps(measure(args.variant, sizes, args.repeats, args.warmup, args.remat, args.dtype)))
        return
    report({variant: run_variant(variant, args) for variant in VARIANTS}, sizes, args.repeats, args.remat, args.dtype)


if __name__ == "__main__":
    main()
