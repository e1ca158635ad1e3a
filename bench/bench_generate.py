"""Generation speed on CPU: our compiled prefill + decode loop vs transformers' `generate` (torch), same weights.

The model is random and built in memory (no hub): Qwen2.5-0.5B width decoder (hidden 896, 14 heads, 2 KV heads,
head_dim 64, MLP 4864, vocab 151936, tied embeddings, `--layers` blocks), SigLIP so400m width (hidden 1152, 16 heads,
MLP 4304, patch 14, `--image` px, `--vision-layers` blocks of which hidden_states[-2] is read) and the group resampler
(16 groups x 32 latents = 512 video tokens, 3 layers), fp32, batch 1, one 16-frame video.

Torch side: `SiglipVisionModel` + `Qwen2ForCausalLM` (sdpa attention) with our weights exported through the
conversion tables (`tinyllava_entries` + `export_tensors`), a small torch group resampler written here after the
original's definition, the original splice (text embeds with the video tokens at the placeholder) and
`generate(inputs_embeds=..., do_sample=False)` as the original's eval does. Both sides run the vision tower only up
to the block that is read (the original also runs the last block, post-LN and head, then drops them).

Our side calls the compiled pieces of `Generator` directly with token ids (no tokenizer: the prompt is random
ids < vocab around one -200 placeholder, `--prompt-len` text tokens, padded to the prompt bucket):
`tlv_jax.inference.encode`, `_prefill`, the first `sample`, then `_decode_all`. No early stop on either side: our EOS
is -1 (an id argmax never gives), torch gets `eos_token_id=None` and `min_new_tokens=max_new_tokens`.

Measures (medians over `--runs`, ours and torch interleaved so both see the same load; warm-up runs excluded and our
compilation reported separately):
- prefill: frames -> video tokens -> splice -> LLM prefill -> first token (ours: encode + prefill + sample;
  torch: vision + resampler + splice + generate up to the first token, timed by a stopping criterion's clock);
- decode tokens/s: the remaining `max_new_tokens - 1` cached steps (ours: `_decode_all`; torch: the time from the
  first to the last token inside the same `generate` call).

Last line: the floor of the decode time per token, the decoder's weight bytes over the machine's measured read
bandwidth, and how close each side gets to it (at batch 1 both are bound by reading the weights).

On a shared, oversubscribed machine torch's OpenMP threads spin-wait at every op's barrier, which can slow its
multi-threaded decode several times; `OMP_WAIT_POLICY=PASSIVE` (set before the run) takes that out of the comparison.

    python bench/bench_generate.py [--quick] [--runs 3] [--new-tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel,  # noqa: E402
                          StoppingCriteria, StoppingCriteriaList)

from tlv_jax.config import ConnectorConfig, LLMConfig, VisionConfig  # noqa: E402
from tlv_jax.convert.apply import export_tensors  # noqa: E402
from tlv_jax.convert.tables import tinyllava_entries  # noqa: E402
from tlv_jax.generate import PROMPT_BUCKETS, _decode_all, _prefill, bucket, sample  # noqa: E402
from tlv_jax.inference import encode  # noqa: E402
from tlv_jax.models.families import config_to_hf  # noqa: E402
from tlv_jax.models.tinyllava import TinyLlavaVideo  # noqa: E402
from tlv_jax.models.tinyllava_config import ModelConfig  # noqa: E402

NEVER = -1  # our EOS for the bench: argmax never returns it, so every run decodes max_new_tokens


# ---- the torch reference --------------------------------------------------------------------------------------------

def pe_table_fp16(length: int, dim: int) -> torch.Tensor:
    """Upstream PositionalEncoding: fp32 sinusoid stored in float16."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, dtype=torch.float16)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe


class TorchPerceiverAttention(nn.Module):
    """Latents attend to [LN(media); LN(latents)], 8 heads x 64, no mask, no bias."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.heads, self.dim_head = heads, dim_head

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm_media(x), self.norm_latents(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, self.dim_head).transpose(1, 2)
        q, k, v = split(self.to_q(latents)) * self.dim_head ** -0.5, split(k), split(v)
        attn = (q @ k.transpose(-1, -2)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        return self.to_out(out)


class TorchGroupResampler(nn.Module):
    """The original group resampler; parameter names = the checkpoint's `_connector.*` keys."""

    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        d = cfg.hidden_size
        self.latents = nn.Parameter(torch.zeros(cfg.num_queries // cfg.group, d))
        self.linear = nn.Linear(cfg.vision_hidden_size, d)
        self.layers = nn.ModuleList([nn.ModuleList([
            TorchPerceiverAttention(d, cfg.dim_head, cfg.heads),
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.ff_mult * d, bias=False), nn.GELU(),
                          nn.Linear(cfg.ff_mult * d, d, bias=False))]) for _ in range(cfg.num_layers)])
        self.norm = nn.LayerNorm(d)
        self.group, self.num_queries = cfg.group, cfg.num_queries

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        a, r = divmod(x.shape[1], self.group)
        outs = []
        for chunk in torch.split(x, [a + 1] * r + [a] * (self.group - r), dim=1):
            lat = self.latents[None].expand(chunk.shape[0], -1, -1)
            for attn, ff in self.layers:
                lat = attn(chunk, lat) + lat
                lat = ff(lat) + lat
            outs.append(self.norm(lat))
        y = torch.cat(outs, dim=1)
        return y + pe_table_fp16(self.num_queries, y.shape[-1]).to(y.dtype)


class TimeEachToken(StoppingCriteria):
    """Records the clock each time `generate` has appended a token (never stops it)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


class TorchTinyLlava:
    """Vision (up to the block read) -> resampler -> original splice -> `Qwen2ForCausalLM.generate`."""

    def __init__(self, model: TinyLlavaVideo):
        cfg = model.cfg
        self.cfg = cfg
        self.vision = SiglipVisionModel(SiglipVisionConfig(**cfg.vision.to_hf())).eval()
        self.connector = TorchGroupResampler(cfg.connector).eval()
        llm_cfg = Qwen2Config(**{**config_to_hf(cfg.llm), "pad_token_id": None}, attn_implementation="sdpa")
        self.llm = Qwen2ForCausalLM(llm_cfg).eval()
        self.llm.generation_config.eos_token_id = None
        v = cfg.vision
        for name, module in (("vision", self.vision), ("connector", self.connector), ("llm", self.llm)):
            entries = tinyllava_entries(cfg, components=(name,), published=False)
            copy_into(module, export_tensors(model, entries))
        self.blocks = (cfg.vision_feature_layer % (v.num_layers + 1))  # hidden_states index read = blocks run

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (F, 3, H, W) -> (1, Q, D)."""
        vm = getattr(self.vision, "vision_model", self.vision)
        h = vm.embeddings(pixels)
        for layer in vm.encoder.layers[:self.blocks]:
            h = layer(h, None)
        h = h[:, 1:] if self.cfg.vision_feature_select_strategy == "patch" else h
        return self.connector(h.reshape(1, -1, h.shape[-1]))

    @torch.inference_mode()
    def generate(self, pixels: torch.Tensor, ids: np.ndarray, new_tokens: int) -> tuple[np.ndarray, float, float]:
        """New tokens (N,), prefill seconds (up to the first token), decode seconds (the other N - 1)."""
        start = time.perf_counter()
        video = self.encode(pixels)
        at = int(np.flatnonzero(ids == self.cfg.image_token_index)[0])
        embed = self.llm.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(ids[None, :at])), video, embed(torch.tensor(ids[None, at + 1:]))], 1)
        clock = TimeEachToken()
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                eos_token_id=None, pad_token_id=0, stopping_criteria=StoppingCriteriaList([clock]))
        stamps = clock.stamps
        return out[0, -new_tokens:].numpy(), stamps[0] - start, stamps[-1] - stamps[0]


def copy_into(module: nn.Module, tensors: Any) -> None:
    """Loads exported (hf_key, array) pairs; tied lm_head is the only key allowed to be missing."""
    own = module.state_dict()
    state = {}
    for key, arr in tensors:
        key = key if key in own else key.removeprefix("vision_model.")
        if key not in own:
            raise KeyError(f"torch {type(module).__name__} has no parameter {key!r}")
        state[key] = torch.from_numpy(np.array(arr))  # a writable copy
    missing, _ = module.load_state_dict(state, strict=False)
    if [k for k in missing if k != "lm_head.weight"]:
        raise KeyError(f"{type(module).__name__}: weights not exported for {missing}")


# ---- ours ---------------------------------------------------------------------------------------------------------

class Ours:
    """The compiled pieces `Generator.generate_tokens` runs, called with ids."""

    def __init__(self, model: TinyLlavaVideo):
        self.graphdef, self.state = nnx.split(model)
        self.key = jax.random.key(0)
        self.zero = jnp.float32(0.0)
        self.one = jnp.float32(1.0)

    def prefill(self, pixels: jax.Array, ids: np.ndarray, mask: np.ndarray, new_tokens: int) -> tuple:
        frames_mask = jnp.ones(pixels.shape[:2], bool)
        tokens = encode(self.graphdef, self.state, pixels, frames_mask)
        logits, cache = _prefill(self.graphdef, self.state, ids, mask, tokens, None, new_tokens)
        first = sample(logits, jax.random.fold_in(self.key, 0), self.zero, self.one)
        return jax.block_until_ready((first, cache))

    def decode(self, first: jax.Array, cache: Any, new_tokens: int) -> np.ndarray:
        out = _decode_all(self.graphdef, self.state, first, cache, self.key, jnp.int32(NEVER), self.zero, self.one,
                          new_tokens)
        return np.asarray(out)


# ---- the run ------------------------------------------------------------------------------------------------------

def build(args: argparse.Namespace) -> TinyLlavaVideo:
    vision = VisionConfig(hidden_size=1152, intermediate_size=4304, num_layers=args.vision_layers, num_heads=16,
                          image_size=args.image, patch_size=14)
    llm = LLMConfig(family="qwen2", vocab_size=args.vocab, hidden_size=896, intermediate_size=4864,
                    num_layers=args.layers, num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1e6,
                    tie_word_embeddings=True)
    connector = ConnectorConfig(kind="group", num_queries=512, group=16, num_layers=3, vision_hidden_size=1152,
                                hidden_size=896)
    return TinyLlavaVideo(ModelConfig(vision=vision, llm=llm, connector=connector), rngs=nnx.Rngs(0))


def compile_clock() -> dict[str, float]:
    """Seconds JAX spends compiling from now on (tracing, lowering, XLA), by stage, as it reports them."""
    spent: dict[str, float] = {}

    def listen(event: str, seconds: float, **_: Any) -> None:
        if event.startswith("/jax/core/compile/"):
            spent[event] = spent.get(event, 0.0) + seconds

    jax.monitoring.register_event_duration_secs_listener(listen)
    return spent


def read_bandwidth_gbs(mib: int = 1024) -> float:
    """The machine's memory read rate in GB/s: the best of a matrix-vector product over `mib` MiB of fp32 in torch
    and a jitted sum over the same bytes in XLA (each the median of 5). Batch-1 decoding reads every weight once per
    token, so weight bytes / this rate is the floor of the time per token for any implementation."""
    n = mib * 2 ** 20 // 4
    w, v, x = torch.ones(n // 1024, 1024), torch.ones(1024), jnp.ones((n,), jnp.float32)
    total = jax.jit(jnp.sum)

    def rate(fn: Callable[[], Any]) -> float:
        fn()
        return 4 * n / statistics.median(timed(fn)[1] for _ in range(5)) / 1e9

    return max(rate(lambda: w @ v), rate(lambda: total(x).block_until_ready()))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="224 px, 2 vision blocks, 2 LLM layers, 16 new tokens, 1 timed run (a smoke run)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4, help="decoder blocks")
    ap.add_argument("--vision-layers", type=int, default=3, help="SigLIP blocks (hidden_states[-2] is read)")
    ap.add_argument("--image", type=int, default=384)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=60, help="text tokens around the video placeholder")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    if args.quick:
        args.image, args.vision_layers, args.layers, args.new_tokens, args.runs = 224, 2, 2, 16, 1

    torch.set_num_threads(args.threads)  # XLA's CPU client uses every usable core; torch gets the same
    model = build(args)
    ref = TorchTinyLlava(model)

    rng = np.random.RandomState(0)
    pixels = rng.uniform(-1, 1, (args.frames, args.image, args.image, 3)).astype(np.float32)
    pixels_j = jnp.asarray(pixels[None])
    pixels_t = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    text = rng.randint(0, args.vocab, args.prompt_len + 1)
    text[min(20, args.prompt_len // 3)] = model.cfg.image_token_index
    width = bucket(len(text), PROMPT_BUCKETS)
    ids = np.zeros((1, width), np.int32)
    mask = np.zeros((1, width), bool)
    ids[0, :len(text)], mask[0, :len(text)] = text, True
    n = args.new_tokens

    ours = Ours(model)
    compile_s = compile_clock()
    (first, cache), t_prefill_first = timed(lambda: ours.prefill(pixels_j, ids, mask, n))
    compile_prefill = sum(compile_s.values())
    _, t_decode_first = timed(lambda: ours.decode(first, cache, n))
    compile_decode = sum(compile_s.values()) - compile_prefill

    def run_ours() -> tuple[np.ndarray, float, float]:
        (first, cache), t_pre = timed(lambda: ours.prefill(pixels_j, ids, mask, n))
        tokens, t_dec = timed(lambda: ours.decode(first, cache, n))
        return tokens[0], t_pre, t_dec

    run_ours(), ref.generate(pixels_t, text, n)  # warm-up, not timed
    times: dict[str, list[float]] = {"ours_pre": [], "ours_dec": [], "torch_pre": [], "torch_dec": []}
    for _ in range(args.runs):
        tok_o, pre, dec = run_ours()
        times["ours_pre"].append(pre)
        times["ours_dec"].append(dec)
        tok_t, pre, dec = ref.generate(pixels_t, text, n)
        times["torch_pre"].append(pre)
        times["torch_dec"].append(dec)
    med = {k: statistics.median(v) for k, v in times.items()}
    agree = int(np.cumprod(tok_o == tok_t).sum())

    spliced = width - 1 + model.cfg.connector.num_queries
    print(f"TinyLLaVA-Video generation, batch 1, fp32: {args.frames} frames of {args.image} px, SigLIP 1152/16h/"
          f"{args.vision_layers} blocks (hidden_states[-2]), group resampler 16x32=512 queries, Qwen2 896/14h/2kv/"
          f"MLP 4864/{args.layers} layers/vocab {args.vocab}; prompt {len(text) - 1} text tokens + 512 video tokens "
          f"(ours padded to {spliced}); {n} new tokens greedy, no EOS")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, {args.threads} threads "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}); median of {args.runs} runs after 1 "
          f"warm-up, ours/torch interleaved")
    print(f"our compilation (trace + lowering + XLA): prefill {compile_prefill:.1f} s, decode loop "
          f"{compile_decode:.1f} s (the first calls took {t_prefill_first:.1f} s and {t_decode_first:.1f} s: compiling "
          f"overlaps running)")
    print(f"greedy tokens: ours == torch for the first {agree}/{n} (the rest follow a different prefix)"
          if agree < n else f"greedy tokens: ours == torch for all {n}")
    dec_o = (n - 1) / med["ours_dec"]
    dec_t = (n - 1) / med["torch_dec"]
    rows = [
        ("prefill: video + prompt -> 1st token (ms)", med["ours_pre"] * 1e3, med["torch_pre"] * 1e3,
         med["torch_pre"] / med["ours_pre"]),
        (f"decode tokens/s ({n - 1} cached steps)", dec_o, dec_t, dec_o / dec_t),
        ("decode ms/token", 1e3 / dec_o, 1e3 / dec_t, dec_o / dec_t),
    ]
    print(f"{'':44s} {'ours (jax)':>11s} {'torch':>11s} {'speed-up':>9s}")
    for name, a, b, ratio in rows:
        print(f"{name:44s} {a:11.1f} {b:11.1f} {ratio:8.2f}x")

    llm_state = nnx.state(model.llm, nnx.Param)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(llm_state))
    gbs = read_bandwidth_gbs()
    floor_ms = weight_bytes / gbs / 1e6
    print(f"decode floor: the decoder's weights ({weight_bytes / 1e6:.0f} MB fp32, read once per token) at the "
          f"machine's {gbs:.1f} GB/s = {floor_ms:.1f} ms/token ({1e3 / floor_ms:.1f} tok/s); ours at "
          f"{floor_ms * dec_o / 1e3:.0%} of it, torch at {floor_ms * dec_t / 1e3:.0%}")


if __name__ == "__main__":
    main()
