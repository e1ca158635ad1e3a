"""Model FLOPs of one training step and MFU, MaxText-style: matmul FLOPs only, causal attention halved, no remat.

A step costs, per component, one forward, plus one backward for the gradient with respect to its inputs when
anything before it trains, plus one for its weights when it trains itself. So a frozen SigLIP costs its forward only
(it is included: 16 frames of SigLIP-so400m weigh as much as a 1.5B decoder step), a frozen decoder in front of a
trained connector (pretrain) costs two passes, a trained one three.
"""

from __future__ import annotations

from typing import Mapping, Optional

import jax
import numpy as np

from tlv_jax.config import ConnectorConfig, LLMConfig, VisionConfig
from tlv_jax.models import connectors, families
from tlv_jax.models.tinyllava_config import ModelConfig

# Dense bf16 peak TFLOP/s per device, matched as substrings of `jax.devices()[0].device_kind` (first match wins).
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("TPU v6", 918.0),
    ("TPU v5p", 459.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5", 459.0),
    ("TPU v4", 275.0),
)


def peak_tflops(device_kind: Optional[str] = None, override: float = 0.0) -> Optional[float]:
    """The per-device peak: `override` when > 0, else the table's entry for the device, else None (unknown)."""
    if override > 0:
        return float(override)
    kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
    for name, tflops in PEAK_TFLOPS:
        if name.lower() in kind.lower():
            return tflops
    return None


def vision_flops_per_frame(cfg: VisionConfig, blocks: int) -> float:
    """Patch embedding + `blocks` encoder blocks (full, non-causal attention) on one frame."""
    p, d, m = cfg.num_patches, cfg.hidden_size, cfg.intermediate_size
    patch = 2 * p * cfg.patch_size ** 2 * cfg.num_channels * d
    block = 2 * p * 4 * d * d + 2 * p * 2 * d * m + 2 * 2 * p * p * d
    return float(patch + blocks * block)


def connector_flops_per_video(cfg: ConnectorConfig, tokens: int) -> float:
    """The connector's forward over one video of `tokens` vision tokens (its unit's formula)."""
    return connectors.get(cfg.kind).flops(cfg, tokens)


def llm_matmul_params(cfg: LLMConfig) -> int:
    """Weights every token multiplies with (embedding lookup excluded, lm_head included)."""
    d, h = cfg.hidden_size, cfg.head_dim
    attn = d * cfg.num_heads * h * 2 + d * cfg.num_kv_heads * h * 2
    mlp = families.get(cfg.family).mlp_matrices * d * cfg.intermediate_size
    return cfg.num_layers * (attn + mlp) + d * cfg.vocab_size


def llm_flops_per_sequence(cfg: LLMConfig, length: float) -> float:
    """2 * params * tokens + causal attention 2 * s^2 * heads * head_dim per layer (half of the full square)."""
    attn = cfg.num_layers * 2 * length * length * cfg.num_heads * cfg.head_dim
    return float(2 * llm_matmul_params(cfg) * length + attn)


def _passes(trains: bool, upstream_trains: bool) -> int:
    return 1 + int(trains or upstream_trains) + int(trains)


def train_flops(cfg: ModelConfig, freeze: Mapping[str, str], frames: np.ndarray, lengths: np.ndarray) -> float:
    """Model FLOPs of one step: `frames[b]` real frames and `lengths[b]` decoder tokens (video tokens included)."""
    trains = {c: freeze.get(c) == "full" for c in ("vision", "connector", "llm")}
    blocks = cfg.vision_feature_layer % (cfg.vision.num_layers + 1)
    frames = np.asarray(frames, np.float64)
    vision = vision_flops_per_frame(cfg.vision, blocks) * frames.sum()
    connector = sum(connector_flops_per_video(cfg.connector, int(f) * cfg.tokens_per_frame) for f in frames if f > 0)
    llm = sum(llm_flops_per_sequence(cfg.llm, float(n)) for n in np.asarray(lengths))
    return (vision * _passes(trains["vision"], False)
            + connector * _passes(trains["connector"], trains["vision"])
            + llm * _passes(trains["llm"], trains["vision"] or trains["connector"]))


def mfu(flops: float, seconds: float, num_devices: int, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown."""
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (num_devices * peak * 1e12)
