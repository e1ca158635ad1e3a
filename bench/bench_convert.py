"""Weight converter: wall time, throughput and peak memory of `convert_weights.py` both ways.

Generates a random bf16 TinyLLaVA-Video checkpoint in the published layout (Qwen2.5-0.5B-sized LLM + SigLIP so400m +
group resampler, about 1.9 GB, written with our ShardedWriter: no torch needed), then runs, each in its own process:

  torch2jax   published checkpoint -> our directory (Orbax params)
  jax2torch   our directory -> published checkpoint (safetensors shards + index), checked bit-equal to the input
  reference   the naive PyTorch-side copy: safetensors.torch.load_file of every shard + save_file (whole model in RAM)

Peak RSS is the kernel's high-water mark of each process (wait4 rusage). Targets (issue 3): peak RSS <= 1.5 x the
largest tensor + 1 GB, throughput >= 200 MB/s. `startup` is a process that only imports the converter (Python,
JAX, Orbax): it is part of every conversion's wall time and memory.

    python bench/bench_convert.py [--quick] [--keep] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlv_jax.convert.layouts import tinyllava_spec  # noqa: E402
from tlv_jax.convert.safetensors_io import ShardedWriter, open_checkpoint  # noqa: E402
from tlv_jax.models.tinyllava_config import TinyLlavaConfig  # noqa: E402

MB = 1e6


def model_config(quick: bool) -> dict:
    """Qwen2.5-0.5B + SigLIP so400m-patch14-384 + group resampler (512 queries, 16 groups, 3 layers)."""
    text = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 2 if quick else 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "max_position_embeddings": 32768, "tie_word_embeddings": True, "bos_token_id": 151643,
            "eos_token_id": 151643, "torch_dtype": "bfloat16"}
    vision = {"architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model", "hidden_size": 1152,
              "intermediate_size": 4304, "num_hidden_layers": 3 if quick else 27, "num_attention_heads": 16,
              "image_size": 384, "patch_size": 14, "num_channels": 3, "layer_norm_eps": 1e-6,
              "hidden_act": "gelu_pytorch_tanh", "torch_dtype": "bfloat16"}
    return {"architectures": ["TinyLlavaForConditionalGeneration"], "model_type": "tinyllava",
            "connector_type": "groupresampler", "num_queries": 512, "group": 16, "num_resampler_layers": 3,
            "hidden_size": 896, "vocab_size": 151936, "vision_hidden_size": 1152, "tokenizer_model_max_length": 3072,
            "pad_token_id": 151643, "torch_dtype": "bfloat16", "text_config": text, "vision_config": vision}


def random_bf16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Finite random bf16 values in +-[2^-7, 2^-6) (random bits with a fixed exponent: fast to make)."""
    bits = (rng.integers(0, 1 << 16, size=int(np.prod(shape)), dtype=np.uint16) & 0x807F) | 0x3C00
    return bits.view(ml_dtypes.bfloat16).reshape(shape)


def generate(directory: Path, quick: bool) -> tuple[int, int, str]:
    """Writes the checkpoint; returns (total bytes, largest tensor bytes, its key)."""
    directory.mkdir(parents=True)
    config = model_config(quick)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    spec = tinyllava_spec(TinyLlavaConfig.from_dict(config))
    writer = ShardedWriter(directory, 2 * 10 ** 9 if not quick else 10 ** 8)
    rng = np.random.default_rng(0)
    total, largest, largest_key = 0, 0, ""
    for e in spec.entries:
        arr = random_bf16(rng, spec.hf_shape(e))
        writer.add(e.hf, arr)
        total += arr.nbytes
        if arr.nbytes > largest:
            largest, largest_key = arr.nbytes, e.hf
    writer.close()
    return total, largest, largest_key


REFERENCE = """
import sys, json, pathlib
from safetensors.torch import load_file, save_file
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
dst.mkdir()
shards = sorted(src.glob('*.safetensors'))
tensors = [load_file(p) for p in shards]
for p, t in zip(shards, tensors):
    save_file(t, dst / p.name, metadata={'format': 'pt'})
"""

STARTUP = "import convert_weights; from tlv_jax.convert import torch2jax, jax2torch; import orbax.checkpoint.experimental.v1"

#: Runs a script (or `-c CODE`) and reports the process's own peak RSS (VmHWM) at exit. wait4's ru_maxrss would
#: not do: it includes the parent's resident size at fork, which this benchmark's generator inflates.
WRAP = r"""
import atexit, runpy, sys
def _report():
    with open("/proc/self/status") as f:
        sys.stderr.write("\nVmHWM_KB " + next(l.split()[1] for l in f if l.startswith("VmHWM:")) + "\n")
atexit.register(_report)
if sys.argv[1] == "-c":
    code, sys.argv = sys.argv[2], ["-c"] + sys.argv[3:]
    exec(compile(code, "<bench>", "exec"), {"__name__": "__main__"})
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(args: list[str]) -> tuple[float, float, float]:
    """Runs `python WRAP args`; returns (wall seconds, CPU seconds, peak RSS in MB of that process)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", WRAP, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out}")
    hwm_kb = int(out.rsplit("VmHWM_KB", 1)[1].split()[0])
    return wall, usage.ru_utime + usage.ru_stime, hwm_kb * 1024 / MB


def check_equal(a: Path, b: Path) -> int:
    ra, rb = open_checkpoint(a), open_checkpoint(b)
    if set(ra.keys()) != set(rb.keys()):
        raise AssertionError("key sets differ after the round trip")
    for k in ra.keys():
        x, y = ra.get(k), rb.get(k)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            raise AssertionError(f"{k} differs after the round trip")
    return len(ra.keys())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 LLM / 3 SigLIP layers (~0.4 GB) instead of the full sizes")
    ap.add_argument("--dir", default=None, help="where to generate (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_convert-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        total, largest, largest_key = generate(work / "torch", args.quick)
        print(f"generated {total / MB:.0f} MB ({len(list((work / 'torch').glob('*.safetensors')))} shards) in "
              f"{time.perf_counter() - t0:.1f} s; largest tensor {largest_key} {largest / MB:.0f} MB")
        rows = [("startup (imports only)", *run(["-c", STARTUP]), None)]
        rows.append(("torch2jax", *run(["convert_weights.py", "torch2jax", str(work / "torch"), str(work / "ours"),
                                        "--no-progress"]), total))
        rows.append(("jax2torch", *run(["convert_weights.py", "jax2torch", str(work / "ours"), str(work / "back"),
                                        "--no-progress", "--max-shard-size", "2GB"]), total))
        n = check_equal(work / "torch", work / "back")
        rows.append(("reference: safetensors.torch load+save",
                     *run(["-c", REFERENCE, str(work / "torch"), str(work / "ref")]), total))

        target = 1.5 * largest / MB + 1000
        startup = rows[0][1]
        ref = rows[-1]
        print(f"\nround trip bit-exact: {n} tensors.  Targets: peak RSS <= 1.5 x {largest / MB:.0f} MB + 1000 MB = "
              f"{target:.0f} MB; throughput >= 200 MB/s.  Machine load average now: {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")
        print(f"{'run':<40} {'wall s':>7} {'cpu s':>6} {'MB/s':>6} {'MB/s w/o startup':>17} {'peak RSS MB':>12} "
              f"{'/ target':>9} {'time / ref':>11} {'RSS / ref':>10}")
        for name, wall, cpu, rss, nbytes in rows:
            line = f"{name:<40} {wall:7.1f} {cpu:6.1f} "
            if nbytes is None:
                print(line + f"{'':>6} {'':>17} {rss:12.0f}")
                continue
            net = f"{nbytes / MB / (wall - startup):17.0f}" if name != ref[0] else f"{'':>17}"
            ratios = f"{wall / ref[1]:11.2f} {rss / ref[3]:10.2f}" if name != ref[0] else ""
            print(line + f"{nbytes / MB / wall:6.0f} {net} {rss:12.0f} {rss / target:9.2f} {ratios}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
