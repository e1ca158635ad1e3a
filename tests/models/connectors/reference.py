"""Shared by the connector tests: the fixtures of the original code, tiny random configs, and float64 numpy
references of the resamplers written from their definitions (no masks, one video at a time)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tlv_jax.config import ConnectorConfig
from tlv_jax.convert.apply import load_into
from tlv_jax.convert.rules import expand
from tlv_jax.convert.safetensors_io import open_checkpoint
from tlv_jax.convert.tables import COMPONENT_PREFIXES, connector_rules
from tlv_jax.models.connectors import build_connector
from tlv_jax.models.connectors.perceiver import sinusoid_table_fp16
from tlv_jax.models.tinyllava_config import TinyLlavaConfig

call = jax.jit(lambda m, x, n=None: m(x, n))  # model(features, lengths), compiled (much faster than eager here)
FRAME_COUNTS = (1, 3, 5, 16, 30)
TOKENS_PER_FRAME = 7  # 7, 21, 35, 112, 210 tokens: remainders 3, 1, 3, 0, 2 over 4 groups


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def load_fixture_connector(fixture: Path) -> tuple[nnx.Module, dict]:
    """(the connector of a fixture's published checkpoint, the fixture's reference arrays)."""
    cfg = TinyLlavaConfig.load(fixture / "finetune").model.connector
    model = build_connector(cfg, rngs=nnx.Rngs(0))
    entries = expand(connector_rules(cfg), cfg.num_layers, COMPONENT_PREFIXES["connector"])
    load_into(model, open_checkpoint(fixture / "finetune"), entries, str(fixture),
              ignore_unexpected=(COMPONENT_PREFIXES["vision"], COMPONENT_PREFIXES["llm"]))
    return model, dict(np.load(fixture / "reference.npz"))


def tiny_cfg(kind: str, group: int = 4, **kw) -> ConnectorConfig:
    return ConnectorConfig(kind=kind, num_queries=16, group=group if kind == "group" else 1, num_layers=2,
                           vision_hidden_size=12, hidden_size=24, dim_head=4, heads=3, **kw)


def randomize(model: nnx.Module, seed: int = 1) -> None:
    """Random norm scales/biases too, so a wrong mapping or masking cannot hide behind 1/0 defaults."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            var.set_value(jnp.asarray(np.asarray(var[...]) + 0.3 * rng.normal(size=var.shape), jnp.float32))


def split_sizes(t: int, groups: int) -> list[int]:
    a, r = divmod(t, groups)
    return [a + 1] * r + [a] * (groups - r)


def np_params(model: nnx.Module) -> dict:
    return {".".join(map(str, path)): np.asarray(var[...], np.float64)
            for path, var in nnx.iter_graph(model) if isinstance(var, nnx.Param)}


def np_layernorm(x, p, name, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * p[name + ".scale"] + p[name + ".bias"]


def np_perceive(p, media, heads, dim_head, num_layers):
    """The Perceiver in float64 numpy: latents attend to [LN(media); LN(latents)], no mask."""
    from scipy.special import erf

    lat = p["latents"]
    inner = heads * dim_head
    for i in range(num_layers):
        a = f"layers.{i}.attn."
        ln = np_layernorm(lat, p, a + "norm_latents")
        kv = np.concatenate([np_layernorm(media, p, a + "norm_media"), ln]) @ p[a + "to_kv.kernel"]
        q = (ln @ p[a + "to_q.kernel"]).reshape(len(ln), heads, dim_head) * dim_head ** -0.5
        k, v = kv[:, :inner].reshape(-1, heads, dim_head), kv[:, inner:].reshape(-1, heads, dim_head)
        sim = np.einsum("ihd,jhd->hij", q, k)
        w = np.exp(sim - sim.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        lat = lat + np.einsum("hij,jhd->ihd", w, v).reshape(len(ln), inner) @ p[a + "to_out.kernel"]
        f = f"layers.{i}.ff."
        h = np_layernorm(lat, p, f + "norm") @ p[f + "fc1.kernel"]
        lat = lat + (0.5 * h * (1 + erf(h / np.sqrt(2)))) @ p[f + "fc2.kernel"]
    return np_layernorm(lat, p, "norm")


def exact_group(model: nnx.Module, x: np.ndarray) -> np.ndarray:
    """The group resampler literally (float64 numpy): python split sizes, one chunk at a time, no mask."""
    p, cfg = np_params(model), model.cfg
    proj = x @ p["linear.kernel"] + p["linear.bias"]
    outs, start = [], 0
    for size in split_sizes(len(x), cfg.group):
        outs.append(np_perceive(p, proj[start:start + size], cfg.heads, cfg.dim_head, cfg.num_layers))
        start += size
    y = np.concatenate(outs)
    return y + sinusoid_table_fp16(*y.shape)


def exact_naive(model: nnx.Module, x: np.ndarray) -> np.ndarray:
    """The naive resampler literally (float64 numpy)."""
    p, cfg = np_params(model), model.cfg
    proj = x @ p["linear.kernel"] + p["linear.bias"]
    proj = proj + sinusoid_table_fp16(*proj.shape)
    return np_perceive(p, proj, cfg.heads, cfg.dim_head, cfg.num_layers)


def padded_videos(seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, jax.Array]:
    """Videos of FRAME_COUNTS frames (12 features per token), their padded batch (padding = 7.0) and lengths."""
    rng = np.random.default_rng(seed)
    videos = [rng.normal(size=(f * TOKENS_PER_FRAME, 12)).astype(np.float32) for f in FRAME_COUNTS]
    batch = np.full((len(videos), max(len(v) for v in videos), 12), 7.0, np.float32)
    for i, v in enumerate(videos):
        batch[i, : len(v)] = v
    return videos, batch, jnp.array([len(v) for v in videos])


def fixture_padded_batch(ref: dict) -> tuple[np.ndarray, jax.Array]:
    """The fixture's two videos (16 and 3 frames) in one padded batch; padding content must not matter."""
    a, b = ref["vision_features"][0], ref["batch_vision_features_1"][0]
    x = np.zeros((2, *a.shape), np.float32)
    x[0], x[1, : len(b)] = a, b
    x[1, len(b):] = 123.0
    return x, jnp.array([len(a), len(b)])
