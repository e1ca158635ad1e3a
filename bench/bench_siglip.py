"""Forward time of our jitted SigLIP vs transformers' `SiglipVisionModel` (torch, same thread count) on CPU.

Default: so400m width (hidden 1152, 16 heads, MLP 4304), 4 layers, 4 frames of 384 px, float32; both sides compute
last_hidden_state and the pooled head output from the same weights. The two are timed in alternation (the machine
may be shared); the table gives median and best wall time and the median process CPU time. `--quick` shrinks it.

    python bench/bench_siglip.py [--quick] [--layers 4] [--frames 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402
from transformers import SiglipVisionConfig, SiglipVisionModel  # noqa: E402

from tlv_jax.convert.backbones import load_siglip  # noqa: E402


def interleaved_times(fns: dict[str, Callable[[], object]], warmup: int, repeats: int
                      ) -> dict[str, list[tuple[float, float]]]:
    """(wall, process CPU) seconds per call of each fn, alternating the fns every repeat so that both see the same
    machine load. CPU time (all threads of this process) is less sensitive than wall time to other users' jobs."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--image", type=int, default=384)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 layers, 2 frames of 224 px, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.layers, args.frames, args.image, args.repeats = 2, 2, 224, 3

    threads = len(os.sched_getaffinity(0))  # XLA's CPU client sizes its thread pool to the usable cores
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf_cfg = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=args.layers,
                                num_attention_heads=16, image_size=args.image, patch_size=14)
    torch_model = SiglipVisionModel(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        torch_model.save_pretrained(d)
        model = load_siglip(d)

    pixels = torch.randn(args.frames, 3, args.image, args.image, generator=torch.Generator().manual_seed(1))
    pixels_nhwc = jax.device_put(np.ascontiguousarray(pixels.permute(0, 2, 3, 1).numpy()))

    @nnx.jit
    def forward(m, x):
        last = m(x)
        return last, m.head(last)

    def run_ours():
        return jax.block_until_ready(forward(model, pixels_nhwc))

    def run_torch():
        with torch.inference_mode():
            out = torch_model(pixels)
        return out.last_hidden_state, out.pooler_output

    ours_last, _ = run_ours()
    ref_last, _ = run_torch()
    ref = ref_last.numpy()
    rel = float(np.abs(np.asarray(ours_last) - ref).max() / np.abs(ref).max())

    times = interleaved_times({"torch": run_torch, "ours": run_ours}, args.warmup, args.repeats)
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    best = {k: min(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    tokens = args.frames * (args.image // 14) ** 2
    print(f"SigLIP forward, CPU fp32, hidden 1152 / 16 heads / MLP 4304, {args.layers} layers, {args.frames} frames x "
          f"{args.image} px ({tokens} tokens), {threads} threads, torch attention "
          f"{torch_model.config._attn_implementation}, {args.repeats} interleaved runs, load avg "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'impl':<34}{'wall median (ms)':>18}{'wall min (ms)':>15}{'CPU median (ms)':>17}")
    labels = {"torch": f"transformers (torch {torch.__version__})", "ours": f"tlv_jax (jax {jax.__version__})"}
    for key, label in labels.items():
        print(f"{label:<34}{wall[key] * 1e3:>18.1f}{best[key] * 1e3:>15.1f}{cpu[key] * 1e3:>17.1f}")
    ratio = lambda d: f"{d['torch'] / d['ours']:.2f}x"
    print(f"{'ratio torch / ours':<34}{ratio(wall):>18}{ratio(best):>15}{ratio(cpu):>17}")
    print(f"max |ours - torch| / max |torch| on last_hidden_state: {rel:.1e}")


if __name__ == "__main__":
    main()
