"""Memory planner: `python -m tlv_jax.plan --config configs/NAME.py --mesh data,fsdp,tensor [--accelerator h100]
[--devices N] [--compile]`.

Per device, before anyone pays for a pod: parameters (trained fp32 masters, frozen ones in the compute dtype),
gradients, optimizer state, activations, their total, and whether that fits a named accelerator's HBM. Parameters,
gradients and optimizer state are exact: they come from the abstract train state (shapes only, nothing allocated)
laid out by the same rules and shardings training uses. Activations are an analytic estimate (stated as such), or,
with `--compile`, XLA's own numbers: the train step compiled for fake CPU devices on the real mesh shape
(`memory_analysis()`; the CPU backend's buffer assignment, close to but not the same as a TPU's or GPU's). Compiling
is practical for small configs on a laptop; the 3B recipes' step did not compile within 15 minutes on 2 CPU cores.

A LoRA run (`lora.rank` > 0) is counted as it trains: adapters (and any 'full' component) as trained fp32
parameters with their AdamW moments and gradients, the base frozen in `lora.base_dtype` (int8 / int4 for QLoRA,
their per-channel scales included), and the one layer's dequantised weights a QLoRA matmul materialises. With an
accelerator named, the report also gives the largest micro-batch per device that fits (by the estimate).

Model sizes come from the config's model directories, or from `tlv_jax.presets` when a path has no config.json
yet (`checkpoints/Qwen2.5-3B` -> the Qwen2.5-3B architecture).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from typing import Any, Mapping, Optional, Sequence

from tlv_jax.train.config_file import load_config  # noqa: F401 (the planner's Python API reads config files too)

# Device memory per accelerator; gpu24 / gpu16: any 24 / 16 GB card (RTX 4090 / 3090, A10G, L4; T4, V100-16G).
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32, "h100": 80, "h200": 141, "gpu24": 24, "gpu16": 16}
GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Plan:
    mesh: tuple[int, int, int]
    counts: dict[str, int]  # parameters per component (vision, connector, llm)
    trained: dict[str, bool]
    rows: list[tuple[str, int]]  # (what, bytes per device)
    activations_source: str  # 'estimate' | 'compiled'
    accelerator: Optional[str]
    lora: Optional[str] = None  # e.g. 'LoRA r=128 (int8 base)'
    max_micro_batch: Optional[int] = None  # per device, with an accelerator and the estimate

    @property
    def total(self) -> int:
        return sum(b for _, b in self.rows)

    def row(self, prefix: str) -> int:
        return sum(b for name, b in self.rows if name.startswith(prefix))

    @property
    def fits(self) -> Optional[bool]:
        return None if self.accelerator is None else self.total <= HBM_GIB[self.accelerator] * GIB


# ---- the model a config trains ---------------------------------------------------------------------------------

def model_config(config: Any) -> Any:
    """The `ModelConfig` a training config builds, without weights: sizes from the model directories' config.json
    or, failing that, from the presets named in the paths (the trainer's own `model_source`)."""
    from tlv_jax.train import setup

    return setup.model_source(config, presets=True).config.model


def abstract_train_state(cfg: Any, freeze: Mapping[str, str], lora: Any = None) -> tuple[Any, Any]:
    """(graph definition, abstract TrainState) of training `cfg` with `freeze` (and `lora`, a `LoraSpec`): the
    trainer's split (trained fp32 / frozen in the compute or base dtype / rest) and AdamW state, as shapes only
    (cached: tracing a 3B model's construction takes seconds)."""
    return _abstract_train_state(cfg, tuple(sorted(freeze.items())), lora)


@functools.lru_cache(maxsize=8)
def _abstract_train_state(cfg: Any, freeze: tuple[tuple[str, str], ...], lora: Any) -> tuple[Any, Any]:
    import optax

    from tlv_jax.train import optim, setup

    tx = optim.make_optimizer(optax.constant_schedule(0.0))  # the recipes' clip + AdamW (clipping holds no state)
    return setup.abstract_train_state(cfg, dict(freeze), tx, lora)


def parameter_counts(state: Any) -> dict[str, int]:
    """Parameters per component (trained and frozen together; a QLoRA base counts its weights, not its scales),
    and 'adapters' (all LoRA adapters together)."""
    from flax import nnx

    counts: dict[str, int] = {}
    for part in (state.params, state.frozen):
        for path, var in nnx.to_flat_state(part):
            if path[-1] == "scale" and "array" in path:  # a quantised kernel's per-channel scales
                continue
            key = "adapters" if isinstance(var, nnx.LoRAParam) else path[0]
            counts[key] = counts.get(key, 0) + math.prod(var.shape)
    out = {c: counts.get(c, 0) for c in ("vision", "connector", "llm")}
    return {**out, "adapters": counts["adapters"]} if "adapters" in counts else out


# ---- activations -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Shapes:
    """One micro-batch as one device sees it."""

    rows: int  # rows (samples, or packed rows of several) per device per micro-batch
    seq: int  # decoder tokens after the video tokens are spliced in
    frames: int  # per video
    videos: int = 1  # per row: a packed row's video slots (data.packing)


def activation_estimate(cfg: Any, freeze: Mapping[str, str], shapes: Shapes, tensor: int, ce_chunk: int = 1024,
                        lora: Any = None) -> int:
    """Bytes of activations kept for (and live during) the backward pass of one micro-batch on one device.

    Decoder: with remat each block keeps only its input (B S D); without, every block keeps its intermediates
    (norms, q/k/v, attention output, gate/up/act; fp32 attention scores and probabilities B N/T S S). Plus one
    block's intermediates live during its recomputation, and one chunk of fp32 logits and their gradient. Vision:
    one layer live at a time when frozen (nothing before it trains), every layer kept when trained. Connector: its
    projected input and each layer's keys/values over the video tokens. Attention here is the XLA path (scores
    materialised); a fused kernel (cuDNN, splash) needs less. LoRA adds each adapted layer's rank-r intermediate
    (x A) of the block being differentiated, and QLoRA one MLP's dequantised weights."""
    c = 2 if cfg.llm.dtype == "bfloat16" else 4
    b, s = shapes.rows, shapes.seq
    llm, vis, con = cfg.llm, cfg.vision, cfg.connector
    heads = max(llm.num_heads // tensor, 1)
    kv = llm.num_kv_heads // tensor if llm.num_kv_heads % tensor == 0 else llm.num_kv_heads
    block = b * s * (3 * llm.hidden_size + (heads * 2 + kv * 2) * llm.head_dim + 3 * llm.intermediate_size
                     // tensor) * c + 2 * b * heads * s * s * 4
    decoder = (llm.num_layers * b * s * llm.hidden_size * c + block) if llm.remat else llm.num_layers * block
    logits = 2 * b * min(ce_chunk, s) * llm.vocab_size * 4 // (tensor if llm.vocab_size % tensor == 0 else 1)

    frames = shapes.frames * shapes.videos
    tokens = frames * vis.num_patches
    vheads = vis.num_heads // tensor if vis.num_heads % tensor == 0 else vis.num_heads
    vlayer = b * tokens * (6 * vis.hidden_size + vis.intermediate_size // tensor) * c + \
        2 * b * frames * vheads * vis.num_patches ** 2 * 4
    vision = vis.num_layers * vlayer if freeze.get("vision") == "full" else vlayer

    inner = con.heads * con.dim_head
    connector = b * tokens * (con.vision_hidden_size + con.hidden_size + 2 * max(con.num_layers, 1) * inner) * c
    adapters = 0
    if lora is not None:
        per_block = 4 + llm_mlp_matrices(cfg)  # q, k, v, o and the MLP's matrices
        adapters = b * s * lora.rank * per_block * c
        if lora.quantized:
            adapters += llm_mlp_matrices(cfg) * llm.hidden_size * llm.intermediate_size // tensor * c
    return int(decoder + logits + vision + connector + adapters)


def llm_mlp_matrices(cfg: Any) -> int:
    from tlv_jax.models import families

    return families.get(cfg.llm.family).mlp_matrices


def compiled_memory(graphdef: Any, state: Any, shardings: Any, mesh: Any, shapes: Shapes, cfg: Any,
                    config: Any, accum: int) -> dict[str, int]:
    """XLA's memory analysis of the trainer's jitted step compiled on `mesh` (real, fake-CPU devices), from shapes
    only."""
    import jax
    import numpy as np

    from tlv_jax.sharding.mesh import batch_sharding
    from tlv_jax.train import optim, setup
    from tlv_jax.train import step as st

    rows = shapes.rows * accum * mesh.shape["data"] * mesh.shape["fsdp"]
    size, f, v = cfg.vision.image_size, shapes.frames, shapes.videos
    if config.data.get("packing", False):  # the arrays of tlv_jax.data.packing
        seq = ((rows, shapes.seq), np.int32)
        batch = {"input_ids": seq, "labels": seq, "segment_ids": seq, "positions": seq,
                 "pixel_values": ((rows, v, f, size, size, 3), np.float32), "frames_mask": ((rows, v, f), np.bool_)}
    else:
        text = max(shapes.seq - cfg.video_tokens(f) + 1, 2)
        batch = {"input_ids": ((rows, text), np.int32), "labels": ((rows, text), np.int32),
                 "attention_mask": ((rows, text), np.bool_),
                 "pixel_values": ((rows, f, size, size, 3), np.float32), "frames_mask": ((rows, f), np.bool_)}
    ndims = setup.batch_ndims(config)
    abstract_batch = {k: jax.ShapeDtypeStruct(batch[k][0], batch[k][1], sharding=batch_sharding(mesh, nd))
                      for k, nd in ndims.items()}
    tx = optim.make_optimizer(optim.make_schedule(1e-5, 10, 0.0))  # as `abstract_train_state`
    step = st.make_train_step(graphdef, tx, setup.loss_fn(config), accum_steps=accum)
    jitted = st.jit_train_step(step, shardings, mesh, ndims)
    placed = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                          jax.tree.broadcast(shardings, state))
    stats = jitted.lower(placed, abstract_batch).compile().memory_analysis()
    return {"arguments": int(stats.argument_size_in_bytes), "outputs": int(stats.output_size_in_bytes),
            "aliased": int(stats.alias_size_in_bytes), "temp": int(stats.temp_size_in_bytes)}


# ---- the plan ----------------------------------------------------------------------------------------------------

def micro_shapes(config: Any, cfg: Any, mesh_shape: tuple[int, int, int]) -> tuple[Shapes, int]:
    """(one device's micro-batch, accumulation steps) of a config on a mesh."""
    g, m = config.train.global_batch, config.train.micro_batch
    if m < 1 or g % m:
        raise ValueError(f"train.global_batch={g} must be a multiple of train.micro_batch={m}")
    split = mesh_shape[0] * mesh_shape[1]
    if m % split:
        raise ValueError(f"train.micro_batch={m} does not split over data x fsdp = {split} devices")
    frames = config.data.num_frames if config.data.num_frames > 0 else config.data.max_frames
    if config.data.get("packing", False):  # rows of model.max_length tokens, a video slot per sample
        from tlv_jax.data.packing import videos_per_row

        seq = min(config.model.max_length, cfg.tokenizer_model_max_length)
        tokens = [cfg.video_tokens(n) for n in range(1, frames + 1)]  # as the loader's ExpandVideo sees them
        videos = videos_per_row(seq, tokens, config.data.videos_per_row)
        return Shapes(rows=m // split, seq=seq, frames=frames, videos=videos), g // m
    seq = max(config.data.length_buckets) if len(config.data.length_buckets) else config.model.max_length
    return Shapes(rows=m // split, seq=min(seq, cfg.tokenizer_model_max_length), frames=frames), g // m


def plan(config: Any, mesh_shape: Sequence[int], *, devices: Optional[int] = None,
         accelerator: Optional[str] = None, compile_step: bool = False) -> Plan:
    """Per-device memory of training `config` on a (data, fsdp, tensor) mesh of `devices` devices."""
    import jax

    from tlv_jax.sharding.mesh import SMALL_TENSOR_BYTES, abstract_mesh, make_mesh, per_device_bytes, tree_shardings
    from tlv_jax.sharding.rules import model_rules
    from tlv_jax.train import optim

    if accelerator is not None and accelerator not in HBM_GIB:
        raise ValueError(f"unknown accelerator {accelerator!r}; known: {', '.join(HBM_GIB)}")
    data, fsdp, tensor = mesh_shape
    n = devices or (math.prod(mesh_shape) if -1 not in mesh_shape else None)
    if n is None:
        raise ValueError(f"mesh {tuple(mesh_shape)} has a -1 axis: say how many devices with --devices")
    mesh = make_mesh(data, fsdp, tensor, jax.devices()[:n]) if compile_step else abstract_mesh(data, fsdp, tensor, n)
    sizes = (mesh.shape["data"], mesh.shape["fsdp"], mesh.shape["tensor"])
    from tlv_jax.train import lora_state

    cfg = model_config(config)
    lora = lora_state.spec(config)
    freeze = lora_state.check_freeze(config.freeze, lora)
    graphdef, state = abstract_train_state(cfg, freeze, lora)
    shardings = tree_shardings(state, mesh, model_rules(cfg, mesh.shape), SMALL_TENSOR_BYTES)
    shapes, accum = micro_shapes(config, cfg, sizes)

    trained = per_device_bytes(state.params, shardings.params)
    frozen_dtype = cfg.llm.dtype if lora is None else lora.base_dtype
    if lora is not None and lora.quantized:
        frozen_dtype = f"{lora.base_dtype} adapted layers, {cfg.llm.dtype} the rest"
    rows = [("parameters, trained (float32)" + (", adapters included" if lora else ""), trained),
            (f"parameters, frozen ({frozen_dtype})", per_device_bytes(state.frozen, shardings.frozen)),
            ("other model variables", per_device_bytes(state.rest, shardings.rest)),
            ("optimizer state (AdamW m, v)", per_device_bytes(state.opt_state, shardings.opt_state))]
    rows = [r for r in rows if r[1] or r[0].startswith("parameters")]
    if compile_step:
        mem = compiled_memory(graphdef, state, shardings, mesh, shapes, cfg, config, accum)
        state_bytes = sum(b for _, b in rows)
        rows.append(("batch (compiled arguments - state)", max(mem["arguments"] - state_bytes, 0)))
        rows.append(("gradients + activations + temporaries (compiled temp)", mem["temp"]))
        source = "compiled"
    else:
        # With accumulation a running sum lives next to each micro-batch's gradients.
        rows.append(("gradients (float32, sharded like the parameters)", trained * (2 if accum > 1 else 1)))
        rows.append(("activations (analytic estimate, one micro-batch)",
                     activation_estimate(cfg, freeze, shapes, sizes[2], lora=lora)))
        source = "estimate"
    best = None
    if accelerator is not None and source == "estimate":
        fixed = sum(b for _, b in rows[:-1])
        budget = HBM_GIB[accelerator] * GIB
        fits = [k for k in range(1, 65)
                if fixed + activation_estimate(cfg, freeze, dataclasses.replace(shapes, rows=k), sizes[2],
                                               lora=lora) <= budget]
        best = max(fits) if fits else 0
    described = None if lora is None else f"LoRA r={lora.rank} ({lora.base_dtype} base)"
    return Plan(mesh=sizes, counts=parameter_counts(state), trained={c: t == "full" for c, t in freeze.items()},
                rows=rows, activations_source=source, accelerator=accelerator, lora=described,
                max_micro_batch=best)


def _size(b: int) -> str:
    return f"{b / GIB:10.2f} GiB" if b >= GIB // 10 else f"{b / (1 << 20):10.2f} MiB"


def report(p: Plan, title: str) -> str:
    lines = [title, f"mesh data={p.mesh[0]} fsdp={p.mesh[1]} tensor={p.mesh[2]} ({math.prod(p.mesh)} devices)",
             "", "parameters"]
    for c, n in p.counts.items():
        if c == "adapters":
            if n:
                lines.append(f"  {c:<10}{n:>16,}  trained: {p.lora}")
            continue
        lines.append(f"  {c:<10}{n:>16,}  {'trained' if p.trained[c] else 'frozen'}")
    total = sum(p.counts.values())
    trained = sum(n for c, n in p.counts.items() if c == "adapters" or p.trained.get(c))
    lines.append(f"  {'total':<10}{total:>16,}  {100 * trained / max(total, 1):.1f}% trained")
    lines += ["", "per device"]
    width = max(len(name) for name, _ in p.rows) + 2
    lines += [f"  {name:<{width}}{_size(b)}" for name, b in p.rows]
    lines.append(f"  {'total':<{width}}{_size(p.total)}")
    if p.activations_source == "estimate":
        lines.append("  (activations: analytic estimate; --compile for XLA's memory analysis)")
    if p.accelerator is not None:
        hbm = HBM_GIB[p.accelerator]
        verdict = "fits" if p.fits else "does NOT fit"
        lines += ["", f"{verdict} {p.accelerator} ({hbm} GiB HBM): {100 * p.total / (hbm * GIB):.0f}% used"]
        if p.max_micro_batch is not None:
            lines.append(f"largest micro-batch per device that fits: {p.max_micro_batch}" if p.max_micro_batch else
                         "no micro-batch fits (even 1 sample per device)")
    return "\n".join(lines)


def _mesh_arg(text: str) -> tuple[int, int, int]:
    try:
        data, fsdp, tensor = (int(x) for x in text.split(","))
    except ValueError:  # not three integers
        raise ValueError(f"--mesh {text!r}: expected data,fsdp,tensor (e.g. 1,8,1)") from None
    return data, fsdp, tensor


def main(argv: Optional[Sequence[str]] = None) -> None:
    from absl import flags
    from ml_collections import config_flags

    from tlv_jax import cli_errors
    from tlv_jax.train import cli

    config = config_flags.DEFINE_config_file("config", None, "training config file, e.g. configs/NAME.py")
    mesh = flags.DEFINE_string("mesh", None, "data,fsdp,tensor sizes, e.g. 1,8,1 (one may be -1 with --devices)")
    accelerator = flags.DEFINE_enum("accelerator", None, list(HBM_GIB), "say whether the plan fits this device")
    devices = flags.DEFINE_integer("devices", None, "total devices (default: the product of the mesh sizes)")
    compile_ = flags.DEFINE_bool("compile", False, "compile the step on fake CPU devices for XLA's memory numbers")
    verbose = flags.DEFINE_bool("verbose", False, cli_errors.VERBOSE_HELP)
    flags.mark_flags_as_required(["config", "mesh"])

    def run() -> None:
        shape = _mesh_arg(mesh.value)
        if compile_.value:
            n = devices.value or math.prod(shape)
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                       f" --xla_force_host_platform_device_count={n}").strip()
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        p = plan(config.value, shape, devices=devices.value, accelerator=accelerator.value,
                 compile_step=compile_.value)
        print(report(p, f"plan for {config_flags.get_config_filename(flags.FLAGS['config'])}"))

    cli.run(lambda args: sys.exit(cli_errors.run(run, verbose=verbose.value)), argv)


if __name__ == "__main__":
    main()
