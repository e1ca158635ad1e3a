"""Frozen configs of the three components (vision tower, decoder, connector): what the JAX modules need.

They are hashable and live in the NNX graph definition, so a model is built from them alone. The SigLIP config
reads and writes its Hugging Face dict here; a decoder's HF mapping belongs to its family
(`tlv_jax.models.families`), a connector's to its unit (`tlv_jax.models.connectors`). Fields of the original JSON
that we do not model are kept by the callers that round-trip whole files (`tlv_jax.models.tinyllava_config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_dtype(name: str | Any) -> Any:
    """Maps a dtype name ('float32', 'bfloat16', ...) or a dtype to a jnp dtype, with a clear error."""
    if not isinstance(name, str):
        return jnp.dtype(name)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """SigLIP vision tower (HF `SiglipVisionConfig`)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27
    num_heads: int = 16
    image_size: int = 384
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    use_head: bool = True
    dtype: str = "float32"
    attn_impl: str = "auto"
    remat: bool = False  # recompute each block's activations in the backward pass
    posemb_init: str = "normal"  # a fresh model's position table: 'normal' (HF's init) or 'sincos2d'

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, d: dict[str, Any], **overrides: Any) -> "VisionConfig":
        if "vision_config" in d:  # a full SiglipConfig
            d = d["vision_config"]
        kw = dict(
            hidden_size=d.get("hidden_size", 768),
            intermediate_size=d.get("intermediate_size", 3072),
            num_layers=d.get("num_hidden_layers", 12),
            num_heads=d.get("num_attention_heads", 12),
            image_size=d.get("image_size", 224),
            patch_size=d.get("patch_size", 16),
            num_channels=d.get("num_channels", 3),
            layer_norm_eps=d.get("layer_norm_eps", 1e-6),
            hidden_act=d.get("hidden_act", "gelu_pytorch_tanh"),
            use_head=d.get("vision_use_head", True) is not False,
        )
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        d = {
            "model_type": "siglip_vision_model",
            "architectures": ["SiglipVisionModel"],
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": self.hidden_act,
        }
        if not self.use_head:
            d["vision_use_head"] = False
        return d


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """A causal decoder of one family (`tlv_jax.models.families`: its HF mapping lives there)."""

    family: str = "qwen2"
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_layers: int = 36
    num_heads: int = 16
    num_kv_heads: int = 2
    head_dim: int = 128
    rope_theta: float = 1e6
    partial_rotary_factor: float = 1.0
    norm_eps: float = 1e-6
    hidden_act: str = "silu"
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 32768
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    dtype: str = "float32"
    attn_impl: str = "auto"
    remat: Optional[str] = None  # what each block keeps for the backward pass: a key of decoder.REMAT_POLICIES

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
    """A video connector (`tlv_jax.models.connectors`): the group or naive resampler, or the `mlpNx_gelu` projector.
    Fields a kind does not use keep their defaults."""

    kind: str = "group"
    num_queries: int = 512
    group: int = 16
    num_layers: int = 3
    vision_hidden_size: int = 1152
    hidden_size: int = 2048
    dim_head: int = 64
    heads: int = 8
    ff_mult: int = 4
    mlp_depth: int = 2
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"
    attn_impl: str = "auto"  # the resamplers' attention backend (`tlv_jax.models.layers.attention`)
