"""Load and save each backbone (SigLIP, a decoder of any family) from/to a Hugging Face model directory.

A directory holds `config.json` plus weights (`model.safetensors`, sharded safetensors + index, or
`pytorch_model.bin`). The conversion table of `tlv_jax.convert.tables` is the only key mapping used.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from flax import nnx

from tlv_jax.config import LLMConfig, VisionConfig, to_dtype
from tlv_jax.convert import tables
from tlv_jax.convert.apply import export_tensors, load_into
from tlv_jax.convert.rules import Entry, expand
from tlv_jax.convert.safetensors_io import ShardedWriter, open_checkpoint, read_json
from tlv_jax.models import families
from tlv_jax.models.siglip import SiglipVisionTower


def read_config(directory: str | Path) -> dict[str, Any]:
    return read_json(Path(directory) / "config.json")


def abstract(factory: Any) -> nnx.Module:
    """Builds a model's structure without allocating or initialising weights (they are loaded next)."""
    return nnx.eval_shape(factory)


SIGLIP_NESTED = "vision_model."


def vision_entries(cfg: VisionConfig, hf_prefix: str = "", path_prefix: str = "",
                   nested: bool = True) -> list[Entry]:
    """`nested=True`: keys under `vision_model.` as transformers < 5 (and so TinyLLaVA's checkpoints) write them;
    False: the flat keys transformers >= 5 writes for `SiglipVisionModel` (it reads both)."""
    entries = expand(tables.siglip_rules(cfg), cfg.num_layers, "", path_prefix)
    return [dataclasses.replace(e, hf=hf_prefix + (e.hf if nested else e.hf.removeprefix(SIGLIP_NESTED)))
            for e in entries]


def llm_entries(cfg: LLMConfig, hf_prefix: str = "", path_prefix: str = "") -> list[Entry]:
    return expand(tables.llm_rules(cfg), cfg.num_layers, hf_prefix, path_prefix)


def load_siglip(directory: str | Path, dtype: str = "float32", **overrides: Any) -> nnx.Module:
    cfg = VisionConfig.from_hf(read_config(directory), dtype=dtype, **overrides)
    model = abstract(lambda: SiglipVisionTower(cfg, rngs=nnx.Rngs(0)))
    reader = open_checkpoint(directory)
    nested = any(k.startswith(SIGLIP_NESTED) for k in reader.keys())
    load_into(model, reader, vision_entries(cfg, nested=nested), str(directory))
    return model


def load_llm(directory: str | Path, dtype: str = "float32", **overrides: Any) -> nnx.Module:
    cfg = families.config_from_hf(read_config(directory), dtype=dtype, **overrides)
    model = abstract(lambda: families.build_decoder(cfg, rngs=nnx.Rngs(0)))
    reader = open_checkpoint(directory)
    entries = llm_entries(cfg)
    # A tied model saved with its (duplicate) lm_head: accept it, it is the same tensor.
    ignore = ("lm_head.weight",) if cfg.tie_word_embeddings else ()
    load_into(model, reader, entries, str(directory), ignore_unexpected=ignore)
    return model


def save_backbone(model: nnx.Module, entries: list[Entry], config: dict[str, Any], directory: str | Path,
                  dtype: Optional[str] = None, max_shard_bytes: int = 5 * 1024 ** 3) -> None:
    """Writes config.json and safetensors shards; `dtype` (e.g. 'bfloat16') casts on the way out."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    writer = ShardedWriter(out, max_shard_bytes)
    np_dtype = None if dtype is None else to_dtype(dtype)
    for key, arr in export_tensors(model, entries, np_dtype):
        writer.add(key, arr)
    writer.close()
