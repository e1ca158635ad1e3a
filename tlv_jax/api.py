"""`tlv_jax.load`: a TinyLLaVA-Video model from our checkpoint directory or a PyTorch one (either layout)."""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from tlv_jax.convert import layouts, orbax_io, tables
from tlv_jax.convert.apply import load_into
from tlv_jax.convert.safetensors_io import CheckpointError
from tlv_jax.models.hf_backbones import abstract
from tlv_jax.models.tinyllava import TinyLlavaVideo
from tlv_jax.models.tinyllava_config import ModelConfig, TinyLlavaConfig


def load(path: str | Path, dtype: str = "float32") -> TinyLlavaVideo:
    """Loads a model for inference or fine-tuning; `dtype` is the compute dtype (parameters stay float32).

    `path` is a directory written by `convert_weights.py torch2jax` (config.json + tlv_jax.json + params/), or a
    PyTorch TinyLLaVA-Video directory in the published (flat safetensors / bin) or pretrain-stage (subfolders)
    layout, converted in memory. Any mismatch raises `CheckpointError` naming the file or tensor.
    """
    path = Path(path)
    if orbax_io.is_checkpoint(path):
        kind = orbax_io.read_meta(path).get("kind")
        if kind != "tinyllava":
            raise CheckpointError(f"{path}: holds a {kind!r} checkpoint, not a TinyLLaVA-Video model")
        try:
            cfg = TinyLlavaConfig.load(path, dtype).model
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(str(e)) from e
        model = _abstract_model(cfg)
        orbax_io.load_params_into(model, path)
        return model
    config, reader = layouts.open_tinyllava(path)
    cfg = config.model.with_dtype(dtype)
    model = _abstract_model(cfg)
    entries = tables.tinyllava_entries(cfg.vision, cfg.llm, cfg.connector.kind, cfg.connector.num_layers)
    load_into(model, reader, entries, str(path))
    return model


def _abstract_model(cfg: ModelConfig) -> TinyLlavaVideo:
    return abstract(lambda: TinyLlavaVideo(cfg, rngs=nnx.Rngs(0)))
