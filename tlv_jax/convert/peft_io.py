"""LoRA adapters in PEFT's format, out and in: `adapter_config.json` + `adapter_model.safetensors`, keys
`base_model.model.<module>.lora_A.weight` (r, in) and `.lora_B.weight` (out, r), the update `lora_alpha / r * B @ A`
(`lora_alpha / sqrt(r)` with `use_rslora`).

`<module>` is an HF module name, which the key tables translate: a decoder's own names (`model.layers.3.self_attn.
q_proj`: what `peft` writes for `Qwen2ForCausalLM` / `PhiForCausalLM`, and what we write) or the composed model's
(`language_model.model.layers.3...`, `connector._connector...`, `vision_tower._vision_tower...`: what the original's
LoRA recipe writes for a whole TinyLLaVA model). The kernel of module M is the table entry of `M.weight`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from tlv_jax.convert import tables
from tlv_jax.convert.rules import Entry
from tlv_jax.convert.safetensors_io import CheckpointError
from tlv_jax.lora import adapters
from tlv_jax.lora.spec import LoraSpec
from tlv_jax.models.decoder import Decoder
from tlv_jax.models.tinyllava_config import ModelConfig

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"(.+)\.lora_([AB])(?:\.[A-Za-z_]\w*)?\.weight")  # an adapter name may sit before `.weight`


@dataclasses.dataclass
class PeftAdapter:
    """An adapter folder read into memory: per HF module, (A (r, in), B (out, r), scale)."""

    path: Path
    config: dict[str, Any]
    modules: dict[str, tuple[np.ndarray, np.ndarray, float]]


def _scale(config: dict[str, Any], module: str, rank: int) -> float:
    alpha = float(config.get("lora_alpha", rank))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            alpha = float(value)
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def read_adapter(directory: str | Path) -> PeftAdapter:
    """Reads a PEFT LoRA folder; anything we would apply wrongly (DoRA, fan-in-fan-out, biases) is refused."""
    directory = Path(directory)
    cfg_path = directory / CONFIG
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG} (not a PEFT adapter folder)")
    config = json.loads(cfg_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{cfg_path}: peft_type {config.get('peft_type')!r}; only LORA adapters apply")
    for key in ("use_dora", "fan_in_fan_out"):
        if config.get(key):
            raise CheckpointError(f"{cfg_path}: {key}=true is not supported")
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{cfg_path}: bias={config['bias']!r}; only 'none' is supported")
    tensors = _read_tensors(directory)
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = _KEY.fullmatch(key.removeprefix(PREFIX))
        if m is None:
            raise CheckpointError(f"{directory}: {key} is not a LoRA A/B weight (modules_to_save and other extras "
                                  "are not supported)")
        parts.setdefault(m.group(1), {})[m.group(2)] = np.asarray(value, np.float32)
    modules = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{directory}: {module} has lora_{'A' if 'A' in ab else 'B'} but not the other")
        a, b = ab["A"], ab["B"]
        if a.shape[0] != b.shape[1]:
            raise CheckpointError(f"{directory}: {module}: lora_A {a.shape} and lora_B {b.shape} disagree on the rank")
        modules[module] = (a, b, _scale(config, module, a.shape[0]))
    if not modules:
        raise CheckpointError(f"{directory}: the adapter holds no LoRA weights")
    return PeftAdapter(directory, config, modules)


def _read_tensors(directory: Path) -> dict[str, np.ndarray]:
    if (directory / WEIGHTS).is_file():
        from safetensors.numpy import load_file

        return load_file(str(directory / WEIGHTS))
    if (directory / "adapter_model.bin").is_file():
        import torch  # the PyTorch pickle of older PEFT versions

        state = torch.load(directory / "adapter_model.bin", map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise CheckpointError(f"{directory}: no {WEIGHTS} (or adapter_model.bin)")


def kernel_entries(cfg: ModelConfig | None, llm_cfg: Any = None) -> dict[str, Entry]:
    """HF module name -> the table entry of its kernel, under every name an adapter may use for it: a composed
    model's published names and its LLM's own (`cfg`), or a bare decoder's (`llm_cfg`, paths without 'llm')."""
    if cfg is None:
        from tlv_jax.convert.backbones import llm_entries

        entries = llm_entries(llm_cfg)
    else:
        entries = tables.tinyllava_entries(cfg) + tables.tinyllava_entries(cfg, ("llm",), published=False)
    return {e.hf.removesuffix(".weight"): e for e in entries if e.path[-1] == "kernel"}


def _layer_paths(adapter: PeftAdapter, by_module: dict[str, Entry]) -> dict[str, str]:
    """HF module -> our '/'-joined layer path, every module of the adapter found."""
    out = {}
    for module in adapter.modules:
        entry = by_module.get(module)
        if entry is None:
            example = next(iter(by_module))
            raise CheckpointError(f"{adapter.path}: module {module} is not a dense layer of this base (its names "
                                  f"look like {example!r})")
        out[module] = adapters.module_path(entry.path[:-1])
    return out


def merge_into(model: nnx.Module, adapter: PeftAdapter, by_module: dict[str, Entry]) -> None:
    """Adds every module's `scale * B @ A` to its kernel (ours is (in, out): the transpose)."""
    layers = dict(adapters.dense_layers(model))
    for module, path in _layer_paths(adapter, by_module).items():
        a, b, scale = adapter.modules[module]
        layer = layers[path]
        kernel = layer.kernel[...]
        if kernel.shape != (a.shape[1], b.shape[0]):
            raise CheckpointError(f"{adapter.path}: {module}: adapter is {a.shape[1]} -> {b.shape[0]}, the base's "
                                  f"layer {kernel.shape[0]} -> {kernel.shape[1]}")
        layer.kernel[...] = (jnp.asarray(kernel, jnp.float32) + scale * (b @ a).T).astype(kernel.dtype)


def with_adapters(model: nnx.Module, adapter: PeftAdapter, by_module: dict[str, Entry]) -> tuple[nnx.Module,
                                                                                                   LoraSpec]:
    """`model` with the adapter kept as adapters (trainable further, or merged later): (model, its spec)."""
    paths = _layer_paths(adapter, by_module)
    ranks = {a.shape[0] for a, _, _ in adapter.modules.values()}
    scales = {s for _, _, s in adapter.modules.values()}
    if len(ranks) != 1 or len(scales) != 1:
        raise CheckpointError(f"{adapter.path}: ranks {sorted(ranks)} / scales {sorted(scales)} differ between "
                              "modules; apply it merged instead")
    rank, scale = ranks.pop(), scales.pop()
    spec = LoraSpec(rank=rank, alpha=scale * rank, targets=tuple(re.escape(p) for p in paths.values()),
                    base_dtype="float32")
    model = adapters.add_adapters(model, spec)
    layers = dict(adapters.adapted_layers(model))
    for module, path in paths.items():
        a, b, _ = adapter.modules[module]
        layer = layers[path]
        getattr(layer, adapters.A)[...] = jnp.asarray(a.T, getattr(layer, adapters.A).dtype)
        getattr(layer, adapters.B)[...] = jnp.asarray(b.T, getattr(layer, adapters.B).dtype)
    return model, spec


def write_llm_adapter(model: nnx.Module, spec: LoraSpec, directory: str | Path, base_name: str = "") -> Path:
    """The LLM's adapters of `model` (a composed model or a bare decoder, after `add_adapters`) as a PEFT folder for
    the decoder's own HF class (`peft.PeftModel.from_pretrained(Qwen2ForCausalLM(...), directory)`).
    `target_modules` lists the exact module names adapted."""
    from safetensors.numpy import save_file

    from tlv_jax.models import families

    bare = isinstance(model, Decoder)
    llm_cfg = model.cfg if bare else model.cfg.llm
    by_path = {adapters.module_path(e.path[:-1]): name for name, e in kernel_entries(None, llm_cfg).items()}
    prefix = "" if bare else "llm/"
    tensors, names = {}, []
    for path, layer in adapters.adapted_layers(model):
        if path.startswith(prefix):
            name = by_path[path.removeprefix(prefix)]
            names.append(name)
            for ours, theirs in ((adapters.A, "lora_A"), (adapters.B, "lora_B")):
                value = np.asarray(getattr(layer, ours)[...], np.float32)
                tensors[f"{PREFIX}{name}.{theirs}.weight"] = np.ascontiguousarray(value.T)
    if not tensors:
        raise ValueError("the model's LLM has no adapters to write")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank, "lora_alpha": spec.alpha,
              "lora_dropout": spec.dropout, "target_modules": sorted(names), "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "modules_to_save": None,
              "init_lora_weights": True, "inference_mode": True, "base_model_name_or_path": base_name,
              "auto_mapping": {"base_model_class": families.get(llm_cfg.family).architecture}}
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt"})
    return directory
