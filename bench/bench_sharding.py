"""Sharding: what fsdp saves per device, and how a step scales over devices.

(a) Per-device bytes of the Qwen2.5-3B group-16 finetune (configs/finetune_qwen25_3b_group16.py: LLM + connector
    trained in fp32 masters with AdamW, SigLIP frozen in bf16) on 8 devices, pure data parallel (8,1,1) vs fsdp=8
    (1,8,1) and a mixed (2,4,1), from the memory planner (exact for parameters / optimizer / gradients, activations
    an analytic estimate). Reference: the original's DeepSpeed set-up by the ZeRO paper's formulas (analytic, not
    measured: bf16 weights 2 + bf16 grads 2 + fp32 master, m, v 12 bytes per trained parameter; ZeRO-3 divides all of
    it, frozen bf16 weights included, by the device count; plain DDP divides nothing).
(b) Throughput of one train step of the demo recipe (configs/demo.py: the tiny model the CPU demo trains) with a fixed
    global batch, from 1 to 8 fake CPU devices. This machine has 2 physical cores: fake devices share them, so no
    speed-up is expected beyond 2 (the table shows the partitioning overhead, not a GPU's scaling). No PyTorch
    reference: the original's DeepSpeed runs need GPUs.

    python bench/bench_sharding.py [--quick] [--steps 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from tlv_jax import plan  # noqa: E402
from tlv_jax.models.tinyllava import TinyLlavaVideo  # noqa: E402
from tlv_jax.sharding.mesh import SMALL_TENSOR_BYTES, batch_sharding, make_mesh, place  # noqa: E402
from tlv_jax.sharding.mesh import tree_shardings  # noqa: E402
from tlv_jax.sharding.rules import model_rules  # noqa: E402
from tlv_jax.train import setup  # noqa: E402
from tlv_jax.train import optim  # noqa: E402
from tlv_jax.train import step as st  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def memory_table() -> None:
    config = plan.load_config(ROOT / "configs" / "finetune_qwen25_3b_group16.py")
    meshes = [(8, 1, 1), (2, 4, 1), (1, 8, 1)]
    plans = {m: plan.plan(config, m, accelerator="h100") for m in meshes}
    counts = plans[meshes[0]].counts
    trained = counts["connector"] + counts["llm"]
    frozen = counts["vision"]
    print("(a) Qwen2.5-3B group-16 finetune, 8 devices, GiB per device (planner; activations: analytic estimate)")
    print(f"    {trained:,} trained + {frozen:,} frozen parameters, micro-batch 32 (4 per device), 3072 tokens")
    head = f"{'mesh (data,fsdp,tensor)':<26}{'params':>9}{'optimizer':>11}{'params+opt':>12}{'+grads':>9}" \
           f"{'activ.':>9}{'total':>9}  h100 80 GiB"
    print(head)
    print("-" * len(head))
    for m, p in plans.items():
        params, opt = p.row("parameters"), p.row("optimizer")
        grads, act = p.row("gradients"), p.row("activations")
        print(f"{str(m):<26}{params / GIB:9.2f}{opt / GIB:11.2f}{(params + opt) / GIB:12.2f}"
              f"{(params + opt + grads) / GIB:9.2f}{act / GIB:9.2f}{p.total / GIB:9.2f}  "
              f"{'fits' if p.fits else 'does NOT fit'}")
    dp, fsdp = plans[(8, 1, 1)], plans[(1, 8, 1)]
    held = lambda p: p.row("parameters") + p.row("optimizer")  # noqa: E731
    print(f"params + optimizer: fsdp=8 holds 1/{held(dp) / held(fsdp):.2f} of pure data parallel per device "
          "(tensors under 1 MiB stay replicated: norms, biases, connector latents)")
    print()
    zero0 = 16 * trained + 2 * frozen
    states = lambda p: held(p) + p.row("gradients")  # noqa: E731
    print("reference (analytic, the ZeRO paper's bytes per parameter; the original trains with DeepSpeed ZeRO-3):")
    for name, ref, ours, mesh in (("DeepSpeed DDP (ZeRO-0)", zero0, states(dp), "(8,1,1)"),
                                  ("DeepSpeed ZeRO-3 on 8", zero0 / 8, states(fsdp), "(1,8,1)")):
        print(f"  {name:<24} weights+grads+optimizer {ref / GIB:7.2f} GiB   ours {mesh} params+opt+grads "
              f"{ours / GIB:7.2f} GiB   ratio {ours / ref:.2f}")
    print("  (ours: 20 bytes per trained parameter = fp32 master 4 + m, v 8 + two fp32 gradient buffers 8, as the\n"
          "   recipe accumulates 2 micro-batches; DeepSpeed: 16 = bf16 weights 2 + bf16 grads 2 + fp32 master, m, v 12)")


def demo_setup():
    config = plan.load_config(ROOT / "configs" / "demo.py")
    config.model.scratch.llm.vocab_size = config.demo.vocab_size
    cfg = plan.model_config(config)
    freeze = optim.check_freeze(config.freeze)
    trainable = optim.trainable_filter(freeze)
    tx = optim.make_optimizer(optim.make_schedule(config.optim.lr, 100, 0.0))
    model = TinyLlavaVideo(cfg, rngs=nnx.Rngs(0))
    graphdef, params, frozen, rest = st.split_model(model, trainable, np.dtype(cfg.llm.dtype))
    host = jax.device_get(st.init_state(params, frozen, rest, tx))
    step = st.make_train_step(graphdef, tx, setup.loss_fn(config))
    return config, cfg, host, step


def demo_batch(cfg, rows: int, frames: int, text: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, cfg.llm.vocab_size, (rows, text)).astype(np.int32)
    ids[:, 3] = cfg.image_token_index
    size = cfg.vision.image_size
    return {"input_ids": ids, "labels": np.where(np.arange(text) > 3, ids, -100).astype(np.int32),
            "attention_mask": np.ones((rows, text), bool),
            "pixel_values": rng.normal(size=(rows, frames, size, size, 3)).astype(np.float32),
            "frames_mask": np.ones((rows, frames), bool)}


def scaling_table(meshes: list[tuple[int, int, int]], steps: int, rows: int) -> None:
    config, cfg, host, step = demo_setup()
    text = config.model.max_length - cfg.connector.num_queries + 1
    batch = demo_batch(cfg, rows, config.data.num_frames, text)
    abstract = jax.eval_shape(lambda: host)
    trained = sum(x.size for x in jax.tree.leaves(host.params))
    print(f"(b) demo recipe train step ({trained:,} trained parameters), global batch {rows} x {config.data.num_frames} frames, {config.model.max_length} "
          f"tokens; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start; median of {steps} "
          "steps after one warm-up")
    head = f"{'devices':>8}  {'mesh':<12}{'compile s':>10}{'step ms':>10}{'samples/s':>11}{'vs 1 device':>13}"
    print(head)
    print("-" * len(head))
    base = None
    for shape in meshes:
        n = int(np.prod(shape))
        mesh = make_mesh(*shape, devices=jax.devices()[:n])
        shardings = tree_shardings(abstract, mesh, model_rules(cfg, mesh.shape), SMALL_TENSOR_BYTES)
        batch_sh = {k: batch_sharding(mesh, v.ndim) for k, v in batch.items()}
        jitted = st.jit_train_step(step, shardings, mesh, {k: v.ndim for k, v in batch.items()})
        state = place(host, shardings)
        arrays = {k: jax.device_put(v, batch_sh[k]) for k, v in batch.items()}
        t = time.perf_counter()
        compiled = jitted.lower(state, arrays).compile()
        compile_s = time.perf_counter() - t
        state, metrics = compiled(state, arrays)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            state, metrics = compiled(state, arrays)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
        sec = statistics.median(times)
        base = base or sec
        print(f"{n:>8}  {str(shape):<12}{compile_s:10.1f}{sec * 1e3:10.1f}{rows / sec:11.1f}{base / sec:12.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer meshes and steps")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    memory_table()
    print()
    meshes = [(1, 1, 1), (2, 1, 1), (8, 1, 1)] if args.quick else \
        [(1, 1, 1), (2, 1, 1), (4, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2)]
    scaling_table(meshes, 2 if args.quick else args.steps, rows=16)


if __name__ == "__main__":
    main()
