"""Published architectures as Hugging Face config dicts, for planning runs before any weights are on disk.

Only architecture fields (from each model's public config.json); weights always come from a local directory.
`resolve(path)` reads `path/config.json` when it exists, else matches a preset name inside the path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tlv_jax.models import families

SIGLIP_PRESETS: dict[str, dict[str, Any]] = {
    "siglip-so400m-patch14-384": dict(
        model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
        num_attention_heads=16, image_size=384, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),
}

#: Every known architecture: SigLIP's and each decoder family's own presets.
PRESETS: dict[str, dict[str, Any]] = {**SIGLIP_PRESETS,
                                      **{k: v for f in families.FAMILIES.values() for k, v in f.presets.items()}}


def resolve(path: str) -> dict[str, Any]:
    """The HF config dict for a model directory, or for a known architecture named in the path."""
    cfg = Path(path) / "config.json"
    if path and cfg.exists():
        return json.loads(cfg.read_text())
    for name in sorted(PRESETS, key=len, reverse=True):
        if name.lower() in str(path).lower():
            return dict(PRESETS[name])
    raise ValueError(f"{path!r}: no config.json there and no known architecture in the name "
                     f"(known: {', '.join(PRESETS)})")
