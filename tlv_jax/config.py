"""Frozen model configs, each readable from and writable to its Hugging Face `config.json` dict.

The dataclasses hold only what the JAX modules need (they are hashable and live in the NNX graph definition).
Fields of the original JSON that we do not model are kept by the callers that round-trip whole files
(see `tlv_jax.models.tinyllava_config`).
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
    attn_impl: Optional[str] = None

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


LLM_FAMILIES = ("qwen2", "phi")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """A causal decoder: Qwen2/Qwen2.5 (`family='qwen2'`) or Phi-2 (`family='phi'`)."""

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
    attn_impl: Optional[str] = None

    def __post_init__(self) -> None:
        if self.family not in LLM_FAMILIES:
            raise ValueError(f"unknown LLM family {self.family!r}; expected one of {LLM_FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @classmethod
    def from_hf(cls, d: dict[str, Any], **overrides: Any) -> "LLMConfig":
        model_type = d.get("model_type", "")
        archs = " ".join(d.get("architectures") or [])
        if model_type == "qwen2" or "Qwen2" in archs:
            family = "qwen2"
        elif model_type == "phi" or "Phi" in archs:
            family = "phi"
        else:
            raise ValueError(f"unsupported LLM config: model_type={model_type!r} architectures={archs!r}")
        heads = d["num_attention_heads"]
        hidden = d["hidden_size"]
        rope_theta = d.get("rope_theta")
        if rope_theta is None:  # transformers >= 5 nests it in rope_parameters
            rope_theta = (d.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        kw: dict[str, Any] = dict(
            family=family,
            vocab_size=d["vocab_size"],
            hidden_size=hidden,
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or hidden // heads,
            rope_theta=float(rope_theta),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            bos_token_id=_first_id(d.get("bos_token_id")),
            eos_token_id=_first_id(d.get("eos_token_id")),
        )
        if family == "qwen2":
            kw.update(norm_eps=d.get("rms_norm_eps", 1e-6), hidden_act=d.get("hidden_act", "silu"),
                      tie_word_embeddings=d.get("tie_word_embeddings", False), partial_rotary_factor=1.0)
        else:
            if d.get("qk_layernorm"):
                raise ValueError("phi config with qk_layernorm=True is not supported")
            prf = d.get("partial_rotary_factor")
            if prf is None:
                prf = (d.get("rope_parameters") or {}).get("partial_rotary_factor", 0.5)
            kw.update(norm_eps=d.get("layer_norm_eps", 1e-5), hidden_act=d.get("hidden_act", "gelu_new"),
                      tie_word_embeddings=d.get("tie_word_embeddings", False), partial_rotary_factor=float(prf))
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": self.hidden_act,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        if self.family == "qwen2":
            d.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"], rms_norm_eps=self.norm_eps,
                     use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers)
        else:
            d.update(model_type="phi", architectures=["PhiForCausalLM"], layer_norm_eps=self.norm_eps,
                     partial_rotary_factor=self.partial_rotary_factor)
        return d


def _first_id(v: Any) -> Optional[int]:
    if isinstance(v, (list, tuple)):
        return int(v[0]) if v else None
    return None if v is None else int(v)
