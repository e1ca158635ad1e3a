"""TinyLLaVA-Video weights from a directory: ours (config.json + tlv_jax.json + params/, written by the converter or by
training) or a PyTorch one in the published (flat safetensors / bin) or pretrain-stage (subfolders) layout, converted
in memory.

`load_model` builds the model its directory describes; `load_weights` fills a model the caller built from its own
config (training's remat and attention choices), so fresh, resumed and loaded models share one constructor. Both check
every tensor first: a missing, extra or mis-shaped one raises `CheckpointError` naming the file or tensor.
"""

from __future__ import annotations

from pathlib import Path

import jax
from flax import nnx

from tlv_jax.config import to_dtype
from tlv_jax.convert import layouts, orbax_io, tables
from tlv_jax.convert.apply import load_into
from tlv_jax.convert.safetensors_io import CheckpointError
from tlv_jax.models.tinyllava import TinyLlavaVideo
from tlv_jax.models.tinyllava_config import ModelConfig, TinyLlavaConfig


def load_model(path: str | Path, dtype: str = "float32", param_dtype: str = "float32") -> TinyLlavaVideo:
    """The model stored in `path`. `dtype` is the compute dtype, `param_dtype` the one parameters are stored in:
    float32 masters for fine-tuning (the default); for inference pass the compute dtype, which halves the memory and
    the bytes every decode step reads (each tensor is cast as it is read)."""
    cfg = model_config(path, dtype)
    model = nnx.eval_shape(lambda: TinyLlavaVideo(cfg, rngs=nnx.Rngs(0)))
    stored = to_dtype(param_dtype)
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, stored), params))
    load_weights(model, path)
    return model


def load_weights(model: TinyLlavaVideo, path: str | Path) -> None:
    """Fills every parameter of `model` (built, or abstract from `nnx.eval_shape`) from `path`, each cast to the
    parameter's dtype. The tensors expected follow `model.cfg`, not the directory's config."""
    path = Path(path)
    if orbax_io.is_checkpoint(path):
        _check_kind(path)
        orbax_io.load_params_into(model, path)
        return
    _, reader = layouts.open_tinyllava(path)
    load_into(model, reader, tables.tinyllava_entries(model.cfg), str(path))


def model_config(path: str | Path, dtype: str = "float32") -> ModelConfig:
    """The architecture `path` holds (its config.json, ours or the original's), computing in `dtype`."""
    path = Path(path)
    if orbax_io.is_checkpoint(path):
        _check_kind(path)
    try:
        return TinyLlavaConfig.load(path, dtype).model
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from e


def _check_kind(path: Path) -> None:
    kind = orbax_io.read_meta(path).get("kind")
    if kind != "tinyllava":
        raise CheckpointError(f"{path}: holds a {kind!r} checkpoint, not a TinyLLaVA-Video model")
