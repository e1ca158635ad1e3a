"""`convert_weights.py apply-peft BASE ADAPTER DST`: a PEFT LoRA adapter folder (what `peft` saves, e.g. the
original's LoRA recipe for a whole TinyLLaVA model, or an adapter of a plain Qwen2 / Phi-2 decoder) applied on top of
its base, written in our layout.

BASE is anything `torch2jax` converts (a TinyLLaVA-Video checkpoint in either PyTorch layout, a plain HF decoder) or
our own directory. Merged (default): each adapted kernel becomes `W + scale * B @ A` (float32). `keep_adapters`: the
base is written unchanged with the adapter folder in `DST/adapter`, once it is proven to fit the base (every module
found, every shape right); `load_adapted` puts it back on the model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from flax import nnx

from tlv_jax.convert import orbax_io, peft_io
from tlv_jax.convert.atomic import atomic_directory
from tlv_jax.convert.backbones import abstract, read_config
from tlv_jax.models import families
from tlv_jax.models.tinyllava import TinyLlavaVideo

ADAPTER_DIR = "adapter"


def load_ours(directory: Path) -> tuple[nnx.Module, dict[str, Any]]:
    """(the model our directory holds, float32: a composed model or a bare decoder; kernel entries by HF module)."""
    kind = orbax_io.read_meta(directory).get("kind")
    if kind == "tinyllava":
        from tlv_jax.loading import load_model

        model = load_model(directory)
        return model, peft_io.kernel_entries(model.cfg)
    if kind == "llm":
        cfg = families.config_from_hf(read_config(directory))
        model = abstract(lambda: families.build_decoder(cfg, rngs=nnx.Rngs(0)))
        orbax_io.load_params_into(model, directory, prefix=(kind,))  # our decoder directories nest under 'llm'
        return model, peft_io.kernel_entries(None, cfg)
    raise peft_io.CheckpointError(f"{directory}: holds a {kind} model; LoRA adapters apply to a TinyLLaVA-Video "
                                  "model or a decoder")


def load_adapted(directory: str | Path) -> nnx.Module:
    """The model of a `keep_adapters` output with its adapters on (trainable, or merged by `adapters.merged`)."""
    directory = Path(directory)
    model, entries = load_ours(directory)
    return peft_io.with_adapters(model, peft_io.read_adapter(directory / ADAPTER_DIR), entries)[0]


def apply(base: str | Path, adapter_dir: str | Path, dst: str | Path, *, keep_adapters: bool = False,
          force: bool = False, progress: bool = True) -> Path:
    from tlv_jax.convert import torch2jax

    adapter = peft_io.read_adapter(adapter_dir)
    base = Path(base)
    with atomic_directory(dst, force) as tmp:
        ours = tmp / "base"
        if orbax_io.is_checkpoint(base):
            shutil.copytree(base, ours)
        else:
            torch2jax.convert(base, ours, progress=progress)
        model, entries = load_ours(ours)
        if keep_adapters:
            peft_io.with_adapters(model, adapter, entries)  # proves it applies; the base stays as it is
            shutil.copytree(adapter.path, ours / ADAPTER_DIR)
        else:
            peft_io.merge_into(model, adapter, entries)
            shutil.rmtree(ours / orbax_io.PARAMS_DIR)
            prefix = () if isinstance(model, TinyLlavaVideo) else ("llm",)
            orbax_io.save_params(ours, ((prefix + path, arr) for path, arr in orbax_io.iter_model_params(model)))
        meta = orbax_io.read_meta(ours)
        meta["source"]["lora_adapter"] = {"path": str(adapter.path.resolve()), "merged": not keep_adapters}
        if not keep_adapters:
            meta["dtype"] = "float32"
        orbax_io.write_meta(ours, meta)
        for item in ours.iterdir():
            item.rename(tmp / item.name)
        ours.rmdir()
    return Path(dst)
