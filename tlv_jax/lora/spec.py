"""What a LoRA run adapts and how: the `lora` block of a run config as one frozen, checked value.

`targets` are regular expressions matched in full against module paths, '/'-joined from the model's root
(`llm/layers/3/attn/q`, `llm/layers/3/mlp/down`, `connector/layers/0/attn/to_q`, `vision/layers/5/mlp/fc1`): every
dense layer whose path one of them matches gets an adapter. `base_dtype` 'int8' / 'int4' is QLoRA: the adapted
layers' base weights are stored quantised (per output channel) and dequantised inside their matmuls.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import ml_collections

BASE_DTYPES = ("bfloat16", "float32", "int8", "int4")

# Every attention and MLP projection of the decoder (q, k, v, o; gate, up, down or fc1, fc2 and Phi's dense).
LLM_PROJECTIONS = r"llm/layers/\d+/(attn|mlp)/\w+"


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = (LLM_PROJECTIONS,)
    base_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank={self.rank}: must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout}: must be in [0, 1)")
        if self.base_dtype not in BASE_DTYPES:
            raise ValueError(f"lora.base_dtype={self.base_dtype!r}; expected one of {BASE_DTYPES}")
        if not self.targets:
            raise ValueError("lora.targets is empty: name the layers to adapt, e.g. " + repr(LLM_PROJECTIONS))
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"lora.targets: {pattern!r} is not a regular expression ({e})") from e

    @property
    def scale(self) -> float:
        """What the low-rank product is multiplied by (PEFT's `lora_alpha / r`)."""
        return self.alpha / self.rank

    @property
    def quantized(self) -> Optional[str]:
        """The qwix weight type of a QLoRA base ('int8', 'int4'), None for a float base."""
        return self.base_dtype if self.base_dtype.startswith("int") else None

    def matches(self, path: str) -> bool:
        return any(re.fullmatch(p, path) for p in self.targets)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}


def from_config(config: ml_collections.ConfigDict) -> Optional[LoraSpec]:
    """The run's LoRA, or None when `lora.rank` is 0 (the default: full or frozen components only)."""
    block = config.get("lora")
    if block is None or not block.get("rank", 0):
        return None
    return LoraSpec(rank=int(block.rank), alpha=float(block.alpha), dropout=float(block.dropout),
                    targets=tuple(block.targets), base_dtype=str(block.base_dtype))
