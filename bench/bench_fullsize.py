"""The released size on CPU: TinyLLaVA-Video-Qwen2.5-3B-Group-16-512's architecture with random weights, end to end.

1. write   the published PyTorch layout: config.json (the released field values), bf16 safetensors shards of at most
           5 GB + index, random weights (`bench_convert.random_bf16`), a small BPE tokenizer (the test fixture's: the
           ids it produces are valid in the 151936-token vocabulary);
2. torch2jax  `convert_weights.py torch2jax` -> our directory;
3. jax2torch  `convert_weights.py jax2torch --dtype bfloat16` -> the published layout again, checked bit-equal to 1;
4. generate   a fresh process: `tlv_jax.load(ours, "bfloat16", "bfloat16")`, then 8 greedy tokens about a generated
              16-frame video (`model.generator.generate_tokens`: token ids, the toy tokenizer cannot spell them all);
              its note splits the time into loading (with the peak RSS it reached) and the rest, and lists the tokens.

Each step runs in its own process; wall time, CPU time and the process's own peak RSS (VmHWM) are reported, against
the goal peak RSS <= 1.3 x checkpoint bytes + 2 GB. Needs ~3 x the checkpoint (7.2 GB) on disk and, for step 4,
about 1.2 x it in memory: run it alone.

    python bench/bench_fullsize.py [--dir DIR] [--keep] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import MB, ROOT, check_equal, random_bf16, run  # noqa: E402

sys.path.insert(0, str(ROOT))
from tlv_jax.convert.layouts import tinyllava_spec  # noqa: E402
from tlv_jax.convert.safetensors_io import ShardedWriter  # noqa: E402
from tlv_jax.models.tinyllava_config import TinyLlavaConfig  # noqa: E402

TOKENIZER = ROOT / "tests" / "fixtures" / "upstream" / "qwen2-group-f16" / "finetune"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
NEW_TOKENS = 8


def released_config(quick: bool) -> dict:
    """The released Group-16-512 model's config.json fields (Qwen2.5-3B, SigLIP so400m-patch14-384, group
    resampler with 512 queries in 16 groups, 3 layers); `quick`: 2 LLM and 3 SigLIP layers."""
    text = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 2048,
            "intermediate_size": 11008, "num_hidden_layers": 2 if quick else 36, "num_attention_heads": 16,
            "num_key_value_heads": 2, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "max_position_embeddings": 32768, "max_window_layers": 36, "sliding_window": None,
            "use_sliding_window": False, "tie_word_embeddings": True, "bos_token_id": 151643,
            "eos_token_id": 151643, "torch_dtype": "bfloat16"}
    vision = {"architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model", "hidden_size": 1152,
              "intermediate_size": 4304, "num_hidden_layers": 3 if quick else 27, "num_attention_heads": 16,
              "image_size": 384, "patch_size": 14, "num_channels": 3, "layer_norm_eps": 1e-6,
              "hidden_act": "gelu_pytorch_tanh", "torch_dtype": "bfloat16"}
    return {"architectures": ["TinyLlavaForConditionalGeneration"], "model_type": "tinyllava",
            "llm_model_name_or_path": "Qwen/Qwen2.5-3B", "vision_model_name_or_path": "google/siglip-so400m-patch14-384",
            "connector_type": "groupresampler", "num_queries": 512, "group": 16, "num_resampler_layers": 3,
            "resampler_hidden_size": 768, "hidden_size": 2048, "vocab_size": 151936, "vision_hidden_size": 1152,
            "vision_feature_layer": -2, "vision_feature_select_strategy": "patch", "image_aspect_ratio": "square",
            "tokenizer_model_max_length": 3072, "tokenizer_padding_side": "right", "tokenizer_use_fast": False,
            "pad_token": "<|endoftext|>", "use_cache": True, "torch_dtype": "bfloat16", "text_config": text,
            "vision_config": vision}


def write_published(directory: Path, quick: bool) -> int:
    """Step 1; returns the checkpoint's tensor bytes."""
    directory.mkdir(parents=True)
    config = released_config(quick)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (TOKENIZER / name).exists():
            shutil.copy(TOKENIZER / name, directory / name)
    writer = ShardedWriter(directory, 5 * 10 ** 9 if not quick else 10 ** 8)
    spec = tinyllava_spec(TinyLlavaConfig.from_dict(config))
    rng = np.random.default_rng(0)
    total = 0
    for e in spec.entries:
        arr = random_bf16(rng, spec.hf_shape(e))
        writer.add(e.hf, arr)
        total += arr.nbytes
    writer.close()
    return total


GENERATE = r"""
import json, sys, time
import numpy as np
import tlv_jax
from tlv_jax.data.synthetic import write_video
model_dir, video, report = sys.argv[1], sys.argv[2], sys.argv[3]
def peak_mb():
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) * 1024 / 1e6
t0 = time.perf_counter()
loaded = tlv_jax.load(model_dir, "bfloat16", "bfloat16")
t1 = time.perf_counter()
load_peak = peak_mb()
rng = np.random.default_rng(0)
write_video(video, rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8))
tokens = loaded.generator.generate_tokens(video, ["What happens in the video?"], max_new_tokens=%d)
t2 = time.perf_counter()
json.dump({"load_s": t1 - t0, "load_peak_mb": load_peak, "generate_s": t2 - t1, "tokens": tokens[0].tolist()},
          open(report, "w"))
""" % NEW_TOKENS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 LLM / 3 SigLIP layers instead of 36 / 27")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_fullsize-", dir=args.dir))
    try:
        rows = []
        t0 = time.perf_counter()
        total = write_published(work / "published", args.quick)
        rows.append(("write published layout (this process)", time.perf_counter() - t0, float("nan"),
                     _own_peak_mb(), ""))
        rows.append(step("torch2jax", ["convert_weights.py", "torch2jax", str(work / "published"),
                                        str(work / "ours"), "--no-progress"]))
        rows.append(step("jax2torch --dtype bfloat16", ["convert_weights.py", "jax2torch", str(work / "ours"),
                                                         str(work / "back"), "--no-progress", "--dtype", "bfloat16"]))
        if not rows[-1][4]:
            rows[-1] = (*rows[-1][:4], f"bit-exact round trip: {check_equal(work / 'published', work / 'back')} "
                                       "tensors")
        report = work / "generate.json"
        rows.append(step("tlv_jax.load (bf16) + generate 8 tokens, 16 frames",
                         ["-c", GENERATE, str(work / "ours"), str(work / "clip.mp4"), str(report)]))
        if not rows[-1][4]:
            r = json.loads(report.read_text())
            rows[-1] = (*rows[-1][:4], f"load {r['load_s']:.1f} s (peak {r['load_peak_mb']:.0f} MB), encode + "
                                       f"prefill + {NEW_TOKENS} tokens {r['generate_s']:.1f} s: {r['tokens']}")
        goal = 1.3 * total / MB + 2000
        print(f"checkpoint {total / MB:.0f} MB in {len(list((work / 'published').glob('*.safetensors')))} shards; "
              f"goal peak RSS <= 1.3 x {total / MB:.0f} + 2000 = {goal:.0f} MB.  Load average now "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)")
        print("| step | wall s | cpu s | peak RSS MB | / goal | note |")
        print("|---|---|---|---|---|---|")
        for name, wall, cpu, rss, note in rows:
            print(f"| {name} | {wall:.1f} | {cpu:.1f} | {rss:.0f} | {rss / goal:.2f} | {note} |")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def step(name: str, args: list[str]) -> tuple:
    """One step's row; a step that fails (e.g. killed by the kernel for memory: no output) is a row saying so."""
    try:
        return (name, *run(args), "")
    except RuntimeError as err:
        tail = str(err).strip().splitlines()[-1]
        why = "killed without output (out of memory?)" if tail.endswith("failed:") else tail[-200:]
        return (name, float("nan"), float("nan"), float("nan"), f"FAILED: {why}")


def _own_peak_mb() -> float:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) * 1024 / MB


if __name__ == "__main__":
    main()
