"""tlv_jax: TinyLLaVA-Video in JAX/Flax.

    model = tlv_jax.load("TinyLLaVA-Video-Qwen2.5-3B-Group-16-512")   # ours, or a PyTorch checkpoint (either layout)
    model.generate(video="clip.mp4", prompt="What happens?")          # tokenizer and defaults from the directory
    out = model.forward(input_ids, [frames], attention_mask, labels)  # .logits, .loss like the original forward
    tokens = model.encode_video(frames)                               # (num_queries, hidden) connector output

`load` returns a `LoadedModel`; its `.model` is the `TinyLlavaVideo` (traced methods only). Training builds its own
model from its config and fills it with `load_weights(model, path)`.

The public names are imported on first use, so importing a submodule (e.g. for `convert_weights.py --help`) does
not pay for the whole model stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "load": "tlv_jax.api",
    "LoadedModel": "tlv_jax.api",
    "load_model": "tlv_jax.loading",
    "load_weights": "tlv_jax.loading",
    "TinyLlavaVideo": "tlv_jax.models.tinyllava",
    "CausalLMOutput": "tlv_jax.inference",
    "TinyLlavaConfig": "tlv_jax.models.tinyllava_config",
    "ModelConfig": "tlv_jax.models.tinyllava_config",
    "ConnectorConfig": "tlv_jax.models.tinyllava_config",
    "VisionConfig": "tlv_jax.config",
    "LLMConfig": "tlv_jax.config",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'tlv_jax' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
