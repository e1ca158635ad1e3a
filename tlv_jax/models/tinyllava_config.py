"""The TinyLLaVA-Video model config, read from and written back to the original `config.json` (TinyLlavaConfig).

`ModelConfig` is the frozen, hashable part the modules use. `TinyLlavaConfig` wraps it together with the original
JSON dict, so that fields we do not model (paths, tune types, versions...) survive a conversion round trip.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Optional

from tlv_jax.config import LLMConfig, VisionConfig

CONNECTOR_KINDS = ("group", "naive", "mlp")


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
    """Group / naive video resampler (spec §3) or the Factory `mlpNx_gelu` projector."""

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

    def __post_init__(self) -> None:
        if self.kind not in CONNECTOR_KINDS:
            raise ValueError(f"unknown connector kind {self.kind!r}; expected one of {CONNECTOR_KINDS}")
        if self.kind == "group" and self.num_queries % self.group:
            raise ValueError(f"num_queries={self.num_queries} is not a multiple of group={self.group}")

    @property
    def num_latents(self) -> int:
        return self.num_queries // self.group if self.kind == "group" else self.num_queries

    @property
    def num_output_tokens(self) -> Optional[int]:
        """Video tokens per sample (None for the mlp connector: one per vision token)."""
        return None if self.kind == "mlp" else self.num_queries


def connector_kind(connector_type: str) -> tuple[str, int]:
    """Maps the original `connector_type` string (incl. the legacy 'resamplerwithpe') to (kind, mlp depth)."""
    t = (connector_type or "").lower()
    if "groupresampler" in t:
        return "group", 2
    if "naiveresampler" in t or "resamplerwithpe" in t:
        return "naive", 2
    m = re.match(r"^mlp(\d+)x_gelu$", t)
    if m:
        return "mlp", int(m.group(1))
    raise ValueError(f"unsupported connector_type {connector_type!r} (expected groupresampler, naiveresampler, "
                     "resamplerwithpe or mlpNx_gelu)")


CONNECTOR_TYPE_NAMES = {"group": "groupresampler", "naive": "naiveresampler"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig
    llm: LLMConfig
    connector: ConnectorConfig
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "patch"
    tokenizer_model_max_length: int = 3072
    pad_token_id: Optional[int] = None
    image_token_index: int = -200
    ignore_index: int = -100

    def __post_init__(self) -> None:
        if self.vision_feature_select_strategy not in ("patch", "cls_patch"):
            raise ValueError(f"unknown vision_feature_select_strategy {self.vision_feature_select_strategy!r}")

    @property
    def tokens_per_frame(self) -> int:
        """SigLIP has no CLS token: 'patch' drops the first real patch (spec §2.3), e.g. 728 at 384 px."""
        n = self.vision.num_patches
        return n - 1 if self.vision_feature_select_strategy == "patch" else n

    def with_dtype(self, dtype: str) -> "ModelConfig":
        return dataclasses.replace(
            self, vision=dataclasses.replace(self.vision, dtype=dtype), llm=dataclasses.replace(self.llm, dtype=dtype),
            connector=dataclasses.replace(self.connector, dtype=dtype))


@dataclasses.dataclass
class TinyLlavaConfig:
    """`model` plus the original JSON (`raw`); `to_dict()` writes the original field names back."""

    model: ModelConfig
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, d: dict[str, Any], dtype: str = "float32") -> "TinyLlavaConfig":
        missing = [k for k in ("text_config", "vision_config", "connector_type") if k not in d]
        if missing:
            raise ValueError(f"TinyLLaVA config lacks {missing[0]!r}")
        text, vision = d["text_config"], d["vision_config"]
        kind, depth = connector_kind(d["connector_type"])
        llm = LLMConfig.from_hf(text, dtype=dtype)
        vis = VisionConfig.from_hf(vision, dtype=dtype)
        conn = ConnectorConfig(
            kind=kind,
            num_queries=int(d.get("num_queries") or 0) if kind != "mlp" else 0,
            group=int(d.get("group") or 1) if kind == "group" else 1,
            num_layers=int(d.get("num_resampler_layers") or 0),
            vision_hidden_size=int(d.get("vision_hidden_size") or vis.hidden_size),
            hidden_size=llm.hidden_size,
            mlp_depth=depth,
            dtype=dtype,
        )
        pad = d.get("pad_token_id")
        model = ModelConfig(
            vision=vis, llm=llm, connector=conn,
            vision_feature_layer=int(d.get("vision_feature_layer", -2)),
            vision_feature_select_strategy=d.get("vision_feature_select_strategy", "patch"),
            tokenizer_model_max_length=int(d.get("tokenizer_model_max_length") or 2048),
            pad_token_id=None if pad is None else int(pad),
            image_token_index=int(d.get("image_token_index", -200)),
            ignore_index=int(d.get("ignore_index", -100)),
        )
        return cls(model, copy.deepcopy(d))

    @classmethod
    def from_model(cls, model: ModelConfig, **extra: Any) -> "TinyLlavaConfig":
        """A fresh config.json for a model built here (e.g. trained from scratch)."""
        return cls(model, dict(extra))

    @classmethod
    def load(cls, directory: str | Path, dtype: str = "float32") -> "TinyLlavaConfig":
        from tlv_jax.convert.safetensors_io import read_json

        path = Path(directory) / "config.json"
        d = read_json(path)
        try:
            return cls.from_dict(d, dtype)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        d = copy.deepcopy(self.raw)
        text = {**d.get("text_config", {}), **m.llm.to_hf()}
        vision = {**d.get("vision_config", {}), **m.vision.to_hf()}
        conn_type = d.get("connector_type")
        if conn_type is None or connector_kind(conn_type)[0] != m.connector.kind:
            conn_type = CONNECTOR_TYPE_NAMES.get(m.connector.kind, f"mlp{m.connector.mlp_depth}x_gelu")
        d.update(
            architectures=d.get("architectures", ["TinyLlavaForConditionalGeneration"]),
            model_type="tinyllava",
            connector_type=conn_type,
            text_config=text,
            vision_config=vision,
            hidden_size=m.llm.hidden_size,
            vocab_size=m.llm.vocab_size,
            vision_hidden_size=m.connector.vision_hidden_size,
            vision_feature_layer=m.vision_feature_layer,
            vision_feature_select_strategy=m.vision_feature_select_strategy,
            tokenizer_model_max_length=m.tokenizer_model_max_length,
            image_token_index=m.image_token_index,
            ignore_index=m.ignore_index,
        )
        if m.connector.kind != "mlp":
            d.update(num_queries=m.connector.num_queries, num_resampler_layers=m.connector.num_layers)
        if m.connector.kind == "group":
            d["group"] = m.connector.group
        if m.pad_token_id is not None:
            d["pad_token_id"] = m.pad_token_id
        d.setdefault("tokenizer_padding_side", "right")
        d.setdefault("image_aspect_ratio", "square")
        return d

    def save(self, directory: str | Path) -> None:
        Path(directory, "config.json").write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
