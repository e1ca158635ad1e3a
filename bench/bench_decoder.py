"""Decoder speed on CPU: our jitted Qwen2 vs transformers' Qwen2ForCausalLM (torch), same weights, same threads.

Default: Qwen2.5-0.5B width (hidden 896, 14 heads, 2 KV heads, head_dim 64, MLP 4864, vocab 151936, tied), 4 layers,
fp32, batch 1. Rows: a full forward at 1024 tokens (all logits, as HF returns them), greedy generation of 32 tokens
from a 128-token prompt (our cached `greedy_generate` vs HF `generate(do_sample=False)`), and the decode rate alone
((time for N tokens - time for 1 token) / (N - 1), i.e. prefill excluded). Warm-up, then the median of several runs,
ours and torch interleaved so that both see the same load on a shared machine.

    python bench/bench_decoder.py [--quick] [--runs 5] [--threads N]
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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from tlv_jax.models.decoder import greedy_generate  # noqa: E402
from tlv_jax.convert.backbones import load_llm  # noqa: E402


def paired_medians(ours: Callable[[], object], ref: Callable[[], object], runs: int,
                   warmup: int = 2) -> tuple[float, float]:
    """Median seconds of each, runs interleaved (ours, ref, ours, ...) so both see the same machine load."""
    for _ in range(warmup):
        ours()
        ref()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for fn, out in ((ours, times[0]), (ref, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


@nnx.jit
def jax_forward(model, ids):
    return model.forward(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256-token forward, 64-token prompt, 8 new tokens, 2 runs")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=151936)
    args = ap.parse_args()
    seq, prompt_len, new_tokens, runs = (256, 64, 8, 2) if args.quick else (1024, 128, 32, args.runs)

    torch.set_num_threads(args.threads)  # XLA's CPU client uses every core it is given; torch gets the same
    cfg = Qwen2Config(vocab_size=args.vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=args.layers,
                      num_attention_heads=14, num_key_value_heads=2, head_dim=64, rope_theta=1e6,
                      max_position_embeddings=32768, tie_word_embeddings=True, bos_token_id=None,
                      eos_token_id=None, pad_token_id=None, attn_implementation="sdpa")
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = load_llm(tmp)

    rng = np.random.RandomState(0)
    ids = rng.randint(0, args.vocab, (1, seq))
    prompt = rng.randint(0, args.vocab, (1, prompt_len))
    ids_t, ids_j = torch.tensor(ids), jnp.asarray(ids)
    prompt_t, prompt_j = torch.tensor(prompt), jnp.asarray(prompt)

    def torch_forward():
        with torch.inference_mode():
            return hf(ids_t).logits

    def torch_generate(n: int):
        with torch.inference_mode():
            return hf.generate(prompt_t, attention_mask=torch.ones_like(prompt_t), do_sample=False,
                               max_new_tokens=n, min_new_tokens=n, pad_token_id=0)

    def ours_generate(n: int):
        return greedy_generate(ours, prompt_j, None, n).tokens.block_until_ready()

    # sanity: same model
    ref = torch_forward().numpy()
    got = np.asarray(jax_forward(ours, ids_j))
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    same_tokens = bool((np.asarray(ours_generate(new_tokens))[0] == torch_generate(new_tokens)[0, prompt_len:].numpy()).all())

    t_fwd_ours, t_fwd_torch = paired_medians(lambda: jax_forward(ours, ids_j).block_until_ready(), torch_forward, runs)
    t_gen_ours, t_gen_torch = paired_medians(lambda: ours_generate(new_tokens), lambda: torch_generate(new_tokens), runs)
    t_one_ours, t_one_torch = paired_medians(lambda: ours_generate(1), lambda: torch_generate(1), runs)
    dec_ours = (new_tokens - 1) / max(t_gen_ours - t_one_ours, 1e-9)
    dec_torch = (new_tokens - 1) / max(t_gen_torch - t_one_torch, 1e-9)

    print(f"Qwen2 decoder, hidden 896, 14/2 heads, MLP 4864, vocab {args.vocab}, {args.layers} layers, fp32, batch 1; "
          f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, {args.threads} threads")
    print(f"parity: max |logits diff| / max |logits| = {rel:.2e}; greedy tokens identical: {same_tokens}")
    rows = [
        (f"forward {seq} tokens (ms)", t_fwd_ours * 1e3, t_fwd_torch * 1e3, t_fwd_torch / t_fwd_ours),
        (f"generate {new_tokens} from {prompt_len} (ms)", t_gen_ours * 1e3, t_gen_torch * 1e3,
         t_gen_torch / t_gen_ours),
        ("generate tokens/s (incl. prefill)", new_tokens / t_gen_ours, new_tokens / t_gen_torch,
         t_gen_torch / t_gen_ours),
        ("decode tokens/s (prefill excluded)", dec_ours, dec_torch, dec_ours / dec_torch),
    ]
    print(f"{'':38s} {'ours (jax)':>12s} {'torch':>12s} {'speed-up':>9s}")
    for name, a, b, ratio in rows:
        print(f"{name:38s} {a:12.1f} {b:12.1f} {ratio:8.2f}x")


if __name__ == "__main__":
    main()
