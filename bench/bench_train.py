"""Train-step time of our jitted step vs a PyTorch step (transformers SigLIP + Qwen2, a torch group resampler,
AdamW) on CPU, for the same mid-size TinyLLaVA-Video and the finetune recipe (vision frozen; connector and LLM
trained, clip 1.0, AdamW). Both sides start from the same weights, and the first step's losses are printed side by
side as a check that they compute the same thing. float32 on both sides, no remat, same thread count.

Default (mid-size): SigLIP 384 wide x 4 layers on 4 frames of 224 px, group resampler (64 queries, 4 groups,
2 layers), Qwen2 512 wide x 4 layers (8 heads, 2 KV heads, MLP 1408, vocab 8192), batch 4 x 192 text tokens.

    python bench/bench_train.py [--quick] [--repeats 5] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_siglip import interleaved_times  # noqa: E402

from tlv_jax.convert import tables  # noqa: E402
from tlv_jax.convert.apply import export_tensors  # noqa: E402
from tlv_jax.models.connectors.perceiver import sinusoid_table_fp16  # noqa: E402
from tlv_jax.sharding.mesh import make_mesh, tree_shardings  # noqa: E402
from tlv_jax.train import optim, setup  # noqa: E402
from tlv_jax.train import step as step_lib  # noqa: E402
from tlv_jax.train.config_file import load_config  # noqa: E402

BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "base.py"


# ---- the PyTorch side: the original group resampler and the TinyLLaVA forward ------------------------------------

class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        inner = dim_head * heads
        self.heads, self.scale = heads, dim_head ** -0.5
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm_media(x), self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        q, k, v = split(q) * self.scale, split(k), split(v)
        sim = q @ k.transpose(-1, -2)
        attn = (sim - sim.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)
        return self.to_out((attn @ v).transpose(1, 2).flatten(2))


class GroupResampler(nn.Module):
    def __init__(self, vision_dim: int, dim: int, num_queries: int, group: int, depth: int):
        super().__init__()
        self.group, self.num_queries = group, num_queries
        self.latents = nn.Parameter(torch.randn(num_queries // group, dim))
        self.linear = nn.Linear(vision_dim, dim)
        self.layers = nn.ModuleList([nn.ModuleList([
            PerceiverAttention(dim),
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim, bias=False), nn.GELU(),
                          nn.Linear(4 * dim, dim, bias=False))]) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("pe", torch.from_numpy(sinusoid_table_fp16(num_queries, dim).astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        chunks = torch.tensor_split(x, self.group, dim=1)
        outs = []
        for chunk in chunks:
            latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
            for attn, ff in self.layers:
                latents = attn(chunk, latents) + latents
                latents = ff(latents) + latents
            outs.append(self.norm(latents))
        return torch.cat(outs, dim=1) + self.pe


def torch_step_fn(vision: nn.Module, connector: nn.Module, llm: nn.Module, batch: dict, at: int, feature_layer: int,
                  bf16: bool = False):
    params = [p for m in (connector, llm) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    ids = torch.from_numpy(batch["input_ids"]).long()
    labels = torch.from_numpy(batch["labels"]).long()
    pixels = torch.from_numpy(batch["pixel_values"]).permute(0, 1, 4, 2, 3).flatten(0, 1)  # NCHW for torch
    b = ids.shape[0]
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731

    def step() -> float:
        with torch.no_grad(), autocast():  # the frozen tower (the original freezes it; no gradient flows into it)
            feats = vision(pixels, output_hidden_states=True).hidden_states[feature_layer][:, 1:]
        with autocast():
            video = connector(feats.reshape(b, -1, feats.shape[-1]))
            embed = llm.get_input_embeddings()
            embeds = torch.cat([embed(ids[:, :at]), video.to(embed.weight.dtype), embed(ids[:, at + 1:])], dim=1)
            full = torch.cat([labels[:, :at], torch.full((b, video.shape[1]), -100), labels[:, at + 1:]], dim=1)
            loss = llm(inputs_embeds=embeds, labels=full).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


# ---- the comparison --------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller model and 2 repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype (bfloat16: torch runs under CPU autocast)")
    args = ap.parse_args()
    s = dict(vis=384, vis_mlp=1536, vis_layers=4, vis_heads=6, image=224, frames=4, d=512, mlp=1408, layers=4,
             heads=8, vocab=8192, queries=64, group=4, res_layers=2, batch=4, text=192)
    if args.quick:
        s.update(vis=128, vis_mlp=256, vis_layers=2, vis_heads=2, image=112, frames=2, d=128, mlp=256, layers=2,
                 heads=4, vocab=1024, queries=16, group=2, res_layers=1, batch=2, text=64)
        args.repeats = 2
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    vision = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=s["vis"], intermediate_size=s["vis_mlp"], num_hidden_layers=s["vis_layers"],
        num_attention_heads=s["vis_heads"], image_size=s["image"], patch_size=16)).eval()
    llm = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["mlp"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6,
        attn_implementation="sdpa")).train()
    vision.save_pretrained(tmp / "siglip")
    llm.save_pretrained(tmp / "qwen2")
    vision.requires_grad_(False)

    config = load_config(BASE_CONFIG)  # the finetune recipe's optimizer and freezing, mid-size model from above
    config.model.update(dict(init="hf", llm_path=str(tmp / "qwen2"), vision_path=str(tmp / "siglip"),
                             num_queries=s["queries"], group=s["group"], num_resampler_layers=s["res_layers"],
                             dtype=args.dtype, remat="", max_length=4096))
    config.data.update(dict(tokenizer_dir=str(tmp), num_frames=s["frames"]))
    source = setup.model_source(config)
    model_cfg = source.config.model
    model = setup.build_model(config, source)

    connector = GroupResampler(s["vis"], s["d"], s["queries"], s["group"], s["res_layers"])
    entries = tables.tinyllava_entries(model_cfg, components=("connector",), published=False)
    state_dict = {k.removeprefix("_connector."): torch.from_numpy(np.ascontiguousarray(v))
                  for k, v in export_tensors(model, entries)}
    missing, unexpected = connector.load_state_dict(state_dict, strict=False)
    assert not unexpected and missing == ["pe"], (missing, unexpected)
    connector.train()

    rng = np.random.default_rng(0)
    at = 16
    ids = rng.integers(0, s["vocab"], (s["batch"], s["text"])).astype(np.int32)
    ids[:, at] = model_cfg.image_token_index
    labels = ids.copy()
    labels[:, :at + 1] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": np.ones(ids.shape, bool),
             "pixel_values": rng.normal(size=(s["batch"], s["frames"], s["image"], s["image"], 3)).astype(np.float32),
             "frames_mask": np.ones((s["batch"], s["frames"]), bool)}

    schedule = optim.make_schedule(2e-5, 1000, 0.0, "constant")
    tx = setup.optimizer(config, schedule)  # clip 1.0, AdamW
    freeze = optim.check_freeze(config.freeze)
    graphdef, params, frozen, rest = setup.split(model, freeze)  # frozen: in the compute dtype
    state = step_lib.init_state(params, frozen, rest, tx)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    shardings = tree_shardings(state, mesh)
    jitted = step_lib.jit_train_step(step_lib.make_train_step(graphdef, tx, setup.loss_fn(config)), shardings,
                                     mesh, setup.BATCH_NDIMS)
    holder = {"state": jax.device_put(state, shardings)}
    device_batch = jax.device_put(batch)

    def ours() -> float:
        holder["state"], metrics = jitted(holder["state"], device_batch)
        return float(metrics["loss"])

    theirs = torch_step_fn(vision, connector, llm, batch, at, config.model.vision_feature_layer,
                           bf16=args.dtype == "bfloat16")
    first_ours, first_torch = ours(), theirs()
    times = interleaved_times({"ours (jax)": ours, "pytorch": theirs}, args.warmup, args.repeats)

    seq = s["text"] - 1 + s["queries"]
    print(f"\ntrain step, finetune recipe (vision frozen), {args.dtype}, {threads} threads, batch {s['batch']} x "
          f"{s['frames']} frames of {s['image']} px, decoder sequence {seq}")
    print(f"first-step loss: ours {first_ours:.6f}  pytorch {first_torch:.6f}  (same weights and batch)")
    print(f"{'':12s} {'wall s (median)':>16s} {'cpu s (median)':>15s}")
    med = {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()}
    for name, (wall, cpu) in med.items():
        print(f"{name:12s} {wall:16.3f} {cpu:15.3f}")
    ratio_wall = med["pytorch"][0] / med["ours (jax)"][0]
    ratio_cpu = med["pytorch"][1] / med["ours (jax)"][1]
    print(f"speed-up of ours over pytorch: {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x cpu time (target >= 1.0)")


if __name__ == "__main__":
    main()
