"""Published architectures as Hugging Face config dicts, for planning runs before any weights are on disk.

Only architecture fields (from each model's public config.json); weights always come from a local directory.
`resolve(path)` reads `path/config.json` when it exists, else matches a preset name inside the path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "Qwen2.5-3B": dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=2048,
        intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
        rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=32768,
        bos_token_id=151643, eos_token_id=151643, hidden_act="silu"),
    "Qwen2.5-1.5B": dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=1536,
        intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=131072,
        bos_token_id=151643, eos_token_id=151643, hidden_act="silu"),
    "Qwen2.5-0.5B": dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=896,
        intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=32768,
        bos_token_id=151643, eos_token_id=151643, hidden_act="silu"),
    "phi-2": dict(
        model_type="phi", architectures=["PhiForCausalLM"], vocab_size=51200, hidden_size=2560,
        intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        partial_rotary_factor=0.4, rope_theta=10000.0, layer_norm_eps=1e-5, tie_word_embeddings=False,
        max_position_embeddings=2048, bos_token_id=50256, eos_token_id=50256, hidden_act="gelu_new"),
    "siglip-so400m-patch14-384": dict(
        model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
        num_attention_heads=16, image_size=384, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),
}


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
