"""LoRA and QLoRA on a TinyLLaVA-Video model through qwix (`qwix.LoraProvider`).

qwix adapts a model by intercepting the matmuls of the modules a rule names while one method of an NNX module runs:
the first call creates `kernel_lora_a` (in, r) and `kernel_lora_b` (r, out) as `nnx.LoRAParam`s next to the
module's kernel (B zero, so the adapted model starts equal to its base), and with a `weight_qtype` (QLoRA) replaces
the kernel by its quantised form. Each component (`vision`, `connector`, `llm`) is adapted on its own `__call__`, so
every method of the composed model that runs a component (the training loss, full logits, prefill, decode) runs its
adapters. Everything else stays as built: a run trains the `nnx.LoRAParam`s (`is_adapter`) and freezes the rest.

Adapters shard like their base: A keeps the kernel's input axis, B its output axis (the rank axis is replicated).
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from tlv_jax.lora.spec import LoraSpec
from tlv_jax.models.decoder import Decoder
from tlv_jax.models.layers.linear import Dense, matmul_2d
from tlv_jax.models.tinyllava import TinyLlavaVideo

A, B = "kernel_lora_a", "kernel_lora_b"


class QuantizedBaseDense(Dense):
    """A QLoRA-adapted dense layer: its kernel, once qwix has quantised it, goes to the matmul as it is (qwix's
    quantised einsum reads it); `Dense` would first cast it to the compute dtype, which a quantised kernel has no
    meaning for."""

    def __call__(self, x: jax.Array) -> jax.Array:
        y = matmul_2d(x.astype(self.dtype), self.kernel.value)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def module_path(path: tuple[Any, ...]) -> str:
    return "/".join(str(p) for p in path)


def target_layers(model: nnx.Module, spec: LoraSpec) -> list[tuple[str, Dense]]:
    """(path, layer) of every dense layer of `model` that `spec.targets` names; a pattern naming none is an error
    (a typo would otherwise train nothing where it meant to)."""
    layers = list(dense_layers(model))
    found = [(p, m) for p, m in layers if spec.matches(p)]
    for pattern in spec.targets:
        if not any(re.fullmatch(pattern, p) for p, _ in layers):
            example = layers[0][0] if layers else "none"
            raise ValueError(f"lora.targets: {pattern!r} matches no dense layer of the model (paths look like "
                             f"{example!r})")
    return found


def dense_layers(model: nnx.Module) -> Iterator[tuple[str, Dense]]:
    """(path, layer) of every dense layer, adapted or not."""
    for path, module in nnx.iter_modules(model):
        if isinstance(module, Dense):
            yield module_path(path), module


def _components(model: nnx.Module) -> dict[str, tuple[nnx.Module, tuple[Any, ...], dict[str, Any]]]:
    """Path prefix -> (module adapted on its `__call__`, the smallest inputs that run each of its layers once: what
    qwix needs to create the adapters). A composed model has three; a bare decoder is one, at the root."""
    if isinstance(model, Decoder):
        cfg = model.cfg
        x = jnp.zeros((1, 1, cfg.hidden_size), jnp.dtype(model.dtype))
        return {"": (model, (x,), {"positions": jnp.zeros((1, 1), jnp.int32)})}
    cfg = model.cfg
    v, c = cfg.vision, cfg.connector
    return {
        "vision/": (model.vision, (jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32),), {}),
        "connector/": (model.connector, (jnp.zeros((1, max(c.group, 1), c.vision_hidden_size), jnp.float32),), {}),
        "llm/": _components(model.llm)[""],
    }


def add_adapters(model: TinyLlavaVideo | Decoder, spec: LoraSpec, *, seed: int = 0) -> TinyLlavaVideo | Decoder:
    """`model` (a composed model, or a bare decoder) with adapters on the layers `spec` targets (A from qwix's
    default He-uniform init, B zero) and, for QLoRA, those layers' kernels quantised. Works on a concrete model and
    inside `nnx.eval_shape`."""
    import qwix

    targets = target_layers(model, spec)
    if spec.quantized:
        for _, layer in targets:
            layer.__class__ = QuantizedBaseDense
    rngs = nnx.Rngs(params=seed, dropout=seed)
    for prefix, (component, args, kwargs) in _components(model).items():
        paths = [p[len(prefix):] for p, _ in targets if p.startswith(prefix)]
        if not paths:
            continue
        provider = qwix.LoraProvider(module_path="|".join(re.escape(p) for p in paths), rank=spec.rank,
                                     alpha=spec.alpha, dropout=spec.dropout, weight_qtype=spec.quantized)
        adapted = qwix.apply_lora_to_model(component, provider, *args, rngs=rngs, **kwargs)
        if not prefix:
            return _finish(adapted)
        setattr(model, prefix.rstrip("/"), adapted)
    return _finish(model)


def _finish(model: nnx.Module) -> nnx.Module:
    """Checks that every targeted layer got its adapters and gives them their base's sharding axes."""
    for path, layer in adapted_layers(model):
        if not hasattr(layer, B):
            raise ValueError(f"lora.targets: {path} is not run by the forward pass, so it cannot be adapted")
        _shard_like_base(layer)
    return model


def _shard_like_base(layer: Dense) -> None:
    """A (in, r) takes the kernel's input axis, B (r, out) its output axis. qwix copies the kernel's metadata
    unchanged (it transposes only Flax's own sharding keys), which names the wrong axes for the rank dimension."""
    axes = _kernel_axes(layer)
    getattr(layer, A).set_metadata(axes=(axes[0], None))
    getattr(layer, B).set_metadata(axes=(None, axes[1]))


def _kernel_axes(layer: Dense) -> tuple[Any, Any]:
    kernel = layer.kernel
    if isinstance(kernel, nnx.Variable):
        return tuple(kernel.get_metadata()["axes"])
    qvalue = kernel.array.qvalue  # QLoRA: qwix's quantised kernel keeps the kernel's metadata on its parts
    return tuple(qvalue.get_metadata()["axes"])


def adapted_layers(model: nnx.Module) -> Iterator[tuple[str, Dense]]:
    """(path, layer) of every adapted dense layer (after `add_adapters`; on a model restored from a train state)."""
    for path, module in nnx.iter_modules(model):
        if isinstance(module, Dense) and (hasattr(module, A) or isinstance(module, QuantizedBaseDense)):
            yield module_path(path), module


def is_adapter(path: tuple[Any, ...], value: Any) -> bool:
    """NNX filter of the adapter weights (what a LoRA run trains)."""
    del path
    return isinstance(value, nnx.LoRAParam)


def base_kernel(layer: Dense) -> jax.Array:
    """The layer's base kernel in float32 (dequantised for QLoRA)."""
    kernel = layer.kernel
    if isinstance(kernel, nnx.Variable):
        return jnp.asarray(kernel[...], jnp.float32)
    import qwix

    return jnp.asarray(qwix.dequantize(kernel.value.array), jnp.float32)


def delta(layer: Dense, spec_scale: float) -> jax.Array:
    """What the adapter adds to the kernel: scale * A @ B (in, out), float32."""
    a = jnp.asarray(getattr(layer, A)[...], jnp.float32)
    b = jnp.asarray(getattr(layer, B)[...], jnp.float32)
    return spec_scale * (a @ b)


def merged(model: TinyLlavaVideo, spec: LoraSpec) -> TinyLlavaVideo:
    """A plain model (no adapters, float kernels) whose adapted kernels are base + scale * A @ B: what the run
    exports, and what `tlv_jax.load` and the PyTorch layout get."""
    out = nnx.eval_shape(lambda: TinyLlavaVideo(model.cfg, rngs=nnx.Rngs(0)))
    values = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
              if not isinstance(v, nnx.LoRAParam)}
    for path, layer in adapted_layers(model):
        key = tuple(int(p) if p.isdigit() else p for p in path.split("/")) + ("kernel",)
        values[key] = base_kernel(layer) + delta(layer, spec.scale)
    target = nnx.state(out, nnx.Param)
    flat = []
    for path, var in nnx.to_flat_state(target):
        value = values[tuple(path)]
        value = value[...] if isinstance(value, nnx.Variable) else value
        flat.append((path, var.replace(jnp.asarray(value, var.dtype))))
    nnx.update(out, nnx.from_flat_state(flat))
    return out
