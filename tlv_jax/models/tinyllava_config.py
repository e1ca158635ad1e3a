"""The TinyLLaVA-Video model config, read from and written back to the original `config.json` (TinyLlavaConfig).

`ModelConfig` is the frozen, hashable part the modules use. `TinyLlavaConfig` wraps it together with the original
JSON dict, so that fields we do not model (paths, tune types, versions...) survive a conversion round trip.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from tlv_jax.config import ConnectorConfig, LLMConfig, VisionConfig
from tlv_jax.convert.safetensors_io import read_json
from tlv_jax.models import connectors, families


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
        """SigLIP has no CLS token: 'patch' drops the first real patch, e.g. 728 at 384 px."""
        n = self.vision.num_patches
        return n - 1 if self.vision_feature_select_strategy == "patch" else n

    def video_tokens(self, frames: int) -> int:
        """Decoder tokens one video of `frames` frames becomes."""
        return connectors.get(self.connector.kind).video_tokens(self.connector, frames * self.tokens_per_frame)

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
        llm = families.config_from_hf(d["text_config"], dtype=dtype)
        vis = VisionConfig.from_hf(d["vision_config"], dtype=dtype)
        conn = connectors.config_from_original(
            d, vision_hidden_size=int(d.get("vision_hidden_size") or vis.hidden_size), hidden_size=llm.hidden_size,
            dtype=dtype)
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
        path = Path(directory) / "config.json"
        d = read_json(path)
        try:
            return cls.from_dict(d, dtype)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        d = copy.deepcopy(self.raw)
        text = {**d.get("text_config", {}), **families.config_to_hf(m.llm)}
        vision = {**d.get("vision_config", {}), **m.vision.to_hf()}
        conn = connectors.config_to_original(m.connector)
        if d.get("connector_type") and connectors.parse_type(d["connector_type"])[0].kind == m.connector.kind:
            conn["connector_type"] = d["connector_type"]  # keep the original's spelling (e.g. 'resamplerwithpe')
        d.update(
            architectures=d.get("architectures", ["TinyLlavaForConditionalGeneration"]),
            model_type="tinyllava",
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
        d.update(conn)
        if m.pad_token_id is not None:
            d["pad_token_id"] = m.pad_token_id
        d.setdefault("tokenizer_padding_side", "right")
        d.setdefault("image_aspect_ratio", "square")
        return d

    def save(self, directory: str | Path) -> None:
        Path(directory, "config.json").write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
