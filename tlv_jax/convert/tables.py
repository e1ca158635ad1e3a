"""The one home of every HF key <-> parameter path mapping, read in both directions.

A table is a list of `Rule(hf_key, path, transform)`; `{i}` in both strings is a layer index. Paths are dotted
attribute paths into our NNX modules (`layers.3.attn.q.kernel`). `Transform` says how a PyTorch tensor becomes
our array (`to_ours`) and back (`to_hf`); every transform is a pure permutation, so a round trip is bit-exact.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Iterator

import numpy as np

from tlv_jax.config import LLMConfig, VisionConfig


def transpose2d(x: np.ndarray, tile: int = 256) -> np.ndarray:
    """`x.T` as a contiguous array, copied tile by tile through an unsigned view: 2-3x faster than numpy's strided
    copy of a large matrix (bf16 especially), which matters when converting billions of weights."""
    if x.ndim != 2 or x.size < tile * tile or x.dtype.itemsize not in (1, 2, 4, 8):
        return np.ascontiguousarray(x.T)
    src = x.view(f"u{x.dtype.itemsize}")
    out = np.empty(x.shape[::-1], src.dtype)
    for i in range(0, x.shape[0], tile):
        for j in range(0, x.shape[1], tile):
            out[j:j + tile, i:i + tile] = src[i:i + tile, j:j + tile].T
    return out.view(x.dtype)


class Transform(enum.Enum):
    IDENTITY = "identity"
    LINEAR = "linear"  # torch Linear weight (out, in) <-> kernel (in, out)
    CONV = "conv"  # torch Conv2d weight (O, I, kh, kw) <-> kernel (kh, kw, I, O)

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        if self is Transform.LINEAR:
            return transpose2d(x)
        if self is Transform.CONV:
            return np.ascontiguousarray(x.transpose(2, 3, 1, 0))
        return x

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if self is Transform.LINEAR:
            return transpose2d(x)
        if self is Transform.CONV:
            return np.ascontiguousarray(x.transpose(3, 2, 0, 1))
        return x

    def hf_shape(self, our_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self is Transform.LINEAR:
            return tuple(reversed(our_shape))
        if self is Transform.CONV:
            kh, kw, i, o = our_shape
            return (o, i, kh, kw)
        return tuple(our_shape)


I, L, C = Transform.IDENTITY, Transform.LINEAR, Transform.CONV


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str
    path: str
    transform: Transform = Transform.IDENTITY


@dataclasses.dataclass(frozen=True)
class Entry:
    """One concrete tensor: HF key, our path (tuple of str/int), transform."""

    hf: str
    path: tuple[str | int, ...]
    transform: Transform

    @property
    def path_str(self) -> str:
        return ".".join(str(p) for p in self.path)


def _split_path(path: str) -> tuple[str | int, ...]:
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def expand(rules: list[Rule], num_layers: int, hf_prefix: str = "", path_prefix: str = "") -> list[Entry]:
    """Instantiates `{i}` for every layer and prepends the prefixes (e.g. 'language_model.' / 'llm.')."""
    out = []
    for r in rules:
        indices = range(num_layers) if "{i}" in r.hf else [None]
        for i in indices:
            hf = r.hf if i is None else r.hf.replace("{i}", str(i))
            path = r.path if i is None else r.path.replace("{i}", str(i))
            out.append(Entry(hf_prefix + hf, _split_path(path_prefix + path), r.transform))
    return out


def _dense(hf: str, ours: str, bias: bool = True) -> list[Rule]:
    rules = [Rule(f"{hf}.weight", f"{ours}.kernel", L)]
    if bias:
        rules.append(Rule(f"{hf}.bias", f"{ours}.bias"))
    return rules


def _layernorm(hf: str, ours: str) -> list[Rule]:
    return [Rule(f"{hf}.weight", f"{ours}.scale"), Rule(f"{hf}.bias", f"{ours}.bias")]


# ---- SigLIP vision tower (keys of `SiglipVisionModel`) -------------------------------------------------------

def siglip_rules(cfg: VisionConfig) -> list[Rule]:
    p, lp = "vision_model.", "vision_model.encoder.layers.{i}."
    rules = [
        Rule(p + "embeddings.patch_embedding.weight", "patch_embed.kernel", C),
        Rule(p + "embeddings.patch_embedding.bias", "patch_embed.bias"),
        Rule(p + "embeddings.position_embedding.weight", "pos_embed.embedding"),
        *_layernorm(lp + "layer_norm1", "layers.{i}.ln1"),
        *_dense(lp + "self_attn.q_proj", "layers.{i}.attn.q"),
        *_dense(lp + "self_attn.k_proj", "layers.{i}.attn.k"),
        *_dense(lp + "self_attn.v_proj", "layers.{i}.attn.v"),
        *_dense(lp + "self_attn.out_proj", "layers.{i}.attn.o"),
        *_layernorm(lp + "layer_norm2", "layers.{i}.ln2"),
        *_dense(lp + "mlp.fc1", "layers.{i}.mlp.fc1"),
        *_dense(lp + "mlp.fc2", "layers.{i}.mlp.fc2"),
        *_layernorm(p + "post_layernorm", "post_ln"),
    ]
    if cfg.use_head:
        h = p + "head."
        rules += [
            Rule(h + "probe", "head.probe"),
            Rule(h + "attention.in_proj_weight", "head.attn_in.kernel", L),
            Rule(h + "attention.in_proj_bias", "head.attn_in.bias"),
            *_dense(h + "attention.out_proj", "head.attn_out"),
            *_layernorm(h + "layernorm", "head.ln"),
            *_dense(h + "mlp.fc1", "head.mlp.fc1"),
            *_dense(h + "mlp.fc2", "head.mlp.fc2"),
        ]
    return rules


# ---- Decoders (keys of `Qwen2ForCausalLM` / `PhiForCausalLM`) -------------------------------------------------

def qwen2_rules(cfg: LLMConfig) -> list[Rule]:
    lp = "model.layers.{i}."
    rules = [
        Rule("model.embed_tokens.weight", "embed.embedding"),
        Rule(lp + "input_layernorm.weight", "layers.{i}.input_norm.scale"),
        *_dense(lp + "self_attn.q_proj", "layers.{i}.attn.q"),
        *_dense(lp + "self_attn.k_proj", "layers.{i}.attn.k"),
        *_dense(lp + "self_attn.v_proj", "layers.{i}.attn.v"),
        *_dense(lp + "self_attn.o_proj", "layers.{i}.attn.o", bias=False),
        Rule(lp + "post_attention_layernorm.weight", "layers.{i}.post_attn_norm.scale"),
        *_dense(lp + "mlp.gate_proj", "layers.{i}.mlp.gate", bias=False),
        *_dense(lp + "mlp.up_proj", "layers.{i}.mlp.up", bias=False),
        *_dense(lp + "mlp.down_proj", "layers.{i}.mlp.down", bias=False),
        Rule("model.norm.weight", "final_norm.scale"),
    ]
    if not cfg.tie_word_embeddings:
        rules.append(Rule("lm_head.weight", "lm_head.kernel", L))
    return rules


def phi_rules(cfg: LLMConfig) -> list[Rule]:
    lp = "model.layers.{i}."
    rules = [
        Rule("model.embed_tokens.weight", "embed.embedding"),
        *_layernorm(lp + "input_layernorm", "layers.{i}.input_norm"),
        *_dense(lp + "self_attn.q_proj", "layers.{i}.attn.q"),
        *_dense(lp + "self_attn.k_proj", "layers.{i}.attn.k"),
        *_dense(lp + "self_attn.v_proj", "layers.{i}.attn.v"),
        *_dense(lp + "self_attn.dense", "layers.{i}.attn.o"),
        *_dense(lp + "mlp.fc1", "layers.{i}.mlp.fc1"),
        *_dense(lp + "mlp.fc2", "layers.{i}.mlp.fc2"),
        *_layernorm("model.final_layernorm", "final_norm"),
    ]
    if not cfg.tie_word_embeddings:
        rules += _dense("lm_head", "lm_head")
    return rules


def llm_rules(cfg: LLMConfig) -> list[Rule]:
    return qwen2_rules(cfg) if cfg.family == "qwen2" else phi_rules(cfg)


# ---- Connectors (keys of the upstream `_connector` module) ----------------------------------------------------

def resampler_rules() -> list[Rule]:
    """Group and naive resamplers share one layout (spec §3.3); `to_kv` stays fused (K = first half)."""
    lp = "layers.{i}."
    return [
        Rule("latents", "latents"),
        *_dense("linear", "linear"),
        *_layernorm(lp + "0.norm_media", "layers.{i}.attn.norm_media"),
        *_layernorm(lp + "0.norm_latents", "layers.{i}.attn.norm_latents"),
        *_dense(lp + "0.to_q", "layers.{i}.attn.to_q", bias=False),
        *_dense(lp + "0.to_kv", "layers.{i}.attn.to_kv", bias=False),
        *_dense(lp + "0.to_out", "layers.{i}.attn.to_out", bias=False),
        *_layernorm(lp + "1.0", "layers.{i}.ff.norm"),
        *_dense(lp + "1.1", "layers.{i}.ff.fc1", bias=False),
        *_dense(lp + "1.3", "layers.{i}.ff.fc2", bias=False),
        *_layernorm("norm", "norm"),
    ]


def mlp_connector_rules() -> list[Rule]:
    """TinyLLaVA_Factory `mlp2x_gelu`: Sequential(Linear, GELU, Linear) -> indices 0 and 2."""
    return [*_dense("0", "fc1"), *_dense("2", "fc2")]


def iter_keys(entries: list[Entry]) -> Iterator[str]:
    return (e.hf for e in entries)


# ---- The composed TinyLLaVA-Video model -----------------------------------------------------------------------

#: (our attribute, HF state-dict prefix) of the three components of `TinyLlavaVideo`.
COMPONENT_PREFIXES = {
    "vision": "vision_tower._vision_tower.",
    "connector": "connector._connector.",
    "llm": "language_model.",
}


def connector_rules(kind: str) -> list[Rule]:
    return mlp_connector_rules() if kind == "mlp" else resampler_rules()


def tinyllava_entries(vision: VisionConfig, llm: LLMConfig, connector_kind: str, connector_layers: int,
                      components: tuple[str, ...] = ("vision", "connector", "llm"),
                      published: bool = True) -> list[Entry]:
    """Every tensor of a TinyLLaVA-Video checkpoint. `published=True` gives the flat published layout's keys
    (with component prefixes); False gives each component's own keys (pretrain-stage subfolders), while our
    paths always carry the component attribute ('llm.layers.0...')."""
    parts = {
        "vision": (siglip_rules(vision), vision.num_layers),
        "connector": (connector_rules(connector_kind), connector_layers),
        "llm": (llm_rules(llm), llm.num_layers),
    }
    out: list[Entry] = []
    for name in components:
        rules, n = parts[name]
        hf_prefix = COMPONENT_PREFIXES[name] if published else ""
        out += expand(rules, n, hf_prefix, name + ".")
    return out
