"""`tlv_jax.load`: a TinyLLaVA-Video model from our checkpoint directory or a PyTorch one (either layout)."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Optional

import jax
from flax import nnx

from tlv_jax.config import to_dtype
from tlv_jax.convert import layouts, orbax_io, tables
from tlv_jax.convert.apply import load_into
from tlv_jax.convert.safetensors_io import CheckpointError
from tlv_jax.models.hf_backbones import abstract
from tlv_jax.models.tinyllava import TinyLlavaVideo
from tlv_jax.models.tinyllava_config import ModelConfig, TinyLlavaConfig


def load(path: str | Path, dtype: str = "float32", param_dtype: str = "float32") -> TinyLlavaVideo:
    """Loads a model for inference or fine-tuning. `dtype` is the compute dtype, `param_dtype` the one parameters
    are stored in: float32 masters for fine-tuning (the default); for inference pass the compute dtype, which halves
    the memory and the bytes every decode step reads (each tensor is cast as it is read).

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
        model = _abstract_model(cfg, param_dtype)
        orbax_io.load_params_into(model, path)
    else:
        config, reader = layouts.open_tinyllava(path)
        cfg = config.model.with_dtype(dtype)
        model = _abstract_model(cfg, param_dtype)
        entries = tables.tinyllava_entries(cfg.vision, cfg.llm, cfg.connector.kind, cfg.connector.num_layers)
        load_into(model, reader, entries, str(path))
    _SOURCES[model] = path
    return model


def source_of(model: TinyLlavaVideo) -> Optional[Path]:
    """The directory a model was loaded from (its tokenizer and defaults live there), None if built in memory."""
    return _SOURCES.get(model)


_SOURCES: "weakref.WeakKeyDictionary[TinyLlavaVideo, Path]" = weakref.WeakKeyDictionary()


def _abstract_model(cfg: ModelConfig, param_dtype: str) -> TinyLlavaVideo:
    """The model's structure with every parameter typed `param_dtype` (the loaders cast into it)."""
    model = abstract(lambda: TinyLlavaVideo(cfg, rngs=nnx.Rngs(0)))
    stored = to_dtype(param_dtype)
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, stored), params))
    return model
