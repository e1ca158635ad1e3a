"""What a run trains and on what: the model, its tokenizer, the data, the train state on its shardings and the jitted
step. `prepare` puts them together for the loop; the planner and the exporter use the same pieces.

`model.init`:
- 'hf' (pretrain): SigLIP and the LLM from plain Hugging Face directories, the connector freshly initialised.
- 'pretrained' (finetune): a whole TinyLLaVA-Video model, ours (`<pretrain workdir>/model`) or PyTorch (either layout).
- 'scratch' (the demo): everything random, sizes from `model.scratch` (`kernel_init`: 'normal', HF's N(0, 0.02), or
  'fan_in', N(0, 1 / fan_in), for narrow models).

Build once from config: `model_source` computes the one `ModelConfig` of a run, the stored or new architecture with
the run's own settings (compute dtype, attention backend, remat, maximum length) in it, and every model of the run
is `TinyLlavaVideo(cfg)`: a fresh one gets its weights loaded into it, a resumed or planned one stays abstract until
a checkpoint fills it. Nothing is set on a model after it is built.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from tlv_jax.config import LLMConfig, VisionConfig, to_dtype
from tlv_jax.convert import layouts, tables
from tlv_jax.convert.apply import load_into
from tlv_jax.loading import load_weights
from tlv_jax.models import connectors, families
from tlv_jax.models.layers.attention import check_impl
from tlv_jax.models.layers.linear import check_kernel_init, redraw_kernels
from tlv_jax.models.tinyllava import TinyLlavaVideo
from tlv_jax.models.tinyllava_config import ModelConfig, TinyLlavaConfig
from tlv_jax.presets import resolve
from tlv_jax.sharding import distributed
from tlv_jax.sharding.mesh import SMALL_TENSOR_BYTES, make_mesh, place, tree_shardings
from tlv_jax.sharding.rules import model_rules
from tlv_jax.lora.spec import LoraSpec
from tlv_jax.train import lora_state, optim
from tlv_jax.train import step as step_lib
from tlv_jax.train.checkpoint import Checkpointer, abstract_like
from tlv_jax.train.workdir import Workdir

INITS = ("hf", "pretrained", "scratch")
# Every batch holds exactly these arrays (name -> rank): one set of input shardings, one jitted step per run.
BATCH_NDIMS = {"input_ids": 2, "labels": 2, "attention_mask": 2, "pixel_values": 5, "frames_mask": 2}


def batch_ndims(config: ml_collections.ConfigDict) -> dict[str, int]:
    """The arrays every batch of this run holds: `BATCH_NDIMS`, or packed rows' (`data.packing`)."""
    from tlv_jax.data.packing import PACKED_BATCH_NDIMS

    return PACKED_BATCH_NDIMS if config.data.get("packing", False) else BATCH_NDIMS


# ---- the model -----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelSource:
    """The model a run trains: `init`, its config.json (`config.model` is what every model of the run is built
    from) and the tokenizer that goes with it ('' when the config names none)."""

    init: str
    config: TinyLlavaConfig
    tokenizer_dir: str


def with_run_settings(cfg: ModelConfig, config: ml_collections.ConfigDict) -> ModelConfig:
    """The run's compute dtype, attention backend, remat and maximum length on top of a stored or new config."""
    m = config.model
    impl = check_impl(m.attn_impl)  # '' in configs written before 'auto' had a name means 'auto'
    cfg = cfg.with_dtype(m.dtype)
    return dataclasses.replace(
        cfg, vision=dataclasses.replace(cfg.vision, attn_impl=impl, remat=bool(m.get("vision_remat", False))),
        llm=dataclasses.replace(cfg.llm, attn_impl=impl, remat=m.remat or None),
        connector=dataclasses.replace(cfg.connector, attn_impl=impl), tokenizer_model_max_length=m.max_length)


def model_config(config: ml_collections.ConfigDict, vision: VisionConfig, llm: LLMConfig) -> ModelConfig:
    """A new model around these backbones as `config.model` describes it (connector, feature layer), with the run's
    settings. The one place a run config becomes a connector config."""
    m = config.model
    original = {"connector_type": m.connector, "num_queries": m.num_queries, "group": m.group,
                "num_resampler_layers": m.num_resampler_layers}
    extra = dict(m.scratch.connector) if m.init == "scratch" else {}
    connector = connectors.config_from_original(original, vision_hidden_size=vision.hidden_size,
                                                hidden_size=llm.hidden_size, **extra)
    cfg = ModelConfig(vision=vision, llm=llm, connector=connector, vision_feature_layer=m.vision_feature_layer,
                      vision_feature_select_strategy=m.vision_feature_select_strategy)
    return with_run_settings(cfg, config)


def model_source(config: ml_collections.ConfigDict, *, presets: bool = False) -> ModelSource:
    """The model `config` trains, no weights read. `presets` (planning before downloading): a backbone directory
    without config.json is sized from `tlv_jax.presets`, and a 'pretrained' run whose directory is not there yet is
    planned from its backbones."""
    m = config.model
    if m.init not in INITS:
        raise ValueError(f"model.init={m.init!r}; expected one of {INITS}")
    _check_model_names(config)
    stored_there = bool(m.pretrained_path) and (Path(m.pretrained_path) / "config.json").exists()
    if m.init == "pretrained" and (stored_there or not presets):
        stored = _pretrained_config(config)
        tlv = TinyLlavaConfig(with_run_settings(stored.model, config), stored.raw)
    else:
        vision, llm = _backbone_configs(config, presets)
        paths = {"llm_model_name_or_path": m.llm_path, "vision_model_name_or_path": m.vision_path}
        tlv = TinyLlavaConfig.from_model(model_config(config, vision, llm), **(paths if m.init == "hf" else {}))
    if tlv.model.llm.vocab_size < 1:
        raise ValueError(f"the LLM's vocab_size is {tlv.model.llm.vocab_size} (set from the tokenizer at run time): "
                         "give it, e.g. --config.model.scratch.llm.vocab_size=400")
    default_tokenizer = {"hf": m.llm_path, "pretrained": m.pretrained_path}.get(m.init, "")
    return ModelSource(m.init, tlv, config.data.tokenizer_dir or default_tokenizer)


def _check_model_names(config: ml_collections.ConfigDict) -> None:
    """Names the config key of a bad dtype, attention backend or family before anything is read or built."""
    m = config.model
    checks = [("model.dtype", m.dtype, to_dtype), ("model.attn_impl", m.attn_impl, check_impl)]
    if m.init == "scratch":
        checks.append(("model.scratch.llm.family", m.scratch.llm.get("family", "qwen2"), families.get))
        checks.append(("model.scratch.kernel_init", m.scratch.get("kernel_init", "normal"), check_kernel_init))
    for key, value, check in checks:
        try:
            check(value)
        except ValueError as e:
            raise ValueError(f"{key}={value!r}: {e}") from e


def _pretrained_config(config: ml_collections.ConfigDict) -> TinyLlavaConfig:
    m = config.model
    if not m.pretrained_path:
        raise ValueError("model.init='pretrained' needs model.pretrained_path")
    stored = TinyLlavaConfig.load(m.pretrained_path)
    got, want = stored.model.connector, model_config(config, stored.model.vision, stored.model.llm).connector
    if (got.kind, got.num_queries, got.group) != (want.kind, want.num_queries, want.group):
        raise ValueError(f"{m.pretrained_path}: its connector is {got.kind} ({got.num_queries} queries, group "
                         f"{got.group}) but the config asks for {want.kind} ({want.num_queries} queries, group "
                         f"{want.group})")
    return stored


def _backbone_configs(config: ml_collections.ConfigDict, presets: bool) -> tuple[VisionConfig, LLMConfig]:
    m = config.model
    if m.init == "scratch":
        s = m.scratch
        return VisionConfig(**s.vision, posemb_init=s.get("posemb_init", "normal")), LLMConfig(**s.llm)
    if not m.vision_path or not m.llm_path:
        raise ValueError(f"model.init={m.init!r} needs model.vision_path and model.llm_path (Hugging Face "
                         "directories)" + (" to plan from" if m.init == "pretrained" else ""))
    if presets:
        return VisionConfig.from_hf(resolve(m.vision_path)), families.config_from_hf(resolve(m.llm_path))
    return _hf_backbone(m.vision_path, "vision").config, _hf_backbone(m.llm_path, "llm").config


def _hf_backbone(path: str, component: str) -> layouts.HFBackbone:
    backbone = layouts.open_hf_backbone(path)
    if backbone.component != component:
        key = "vision_path" if component == "vision" else "llm_path"
        raise ValueError(f"model.{key}={path!r} holds a {backbone.component} model, not a {component} model")
    return backbone


def abstract_model(cfg: ModelConfig, lora: Optional[LoraSpec] = None) -> TinyLlavaVideo:
    """The model's structure (with `lora`'s adapters), nothing allocated: what a checkpoint fills."""
    return lora_state.abstract_model(cfg, lora)


def build_model(config: ml_collections.ConfigDict, source: ModelSource) -> TinyLlavaVideo:
    """A fresh run's model with its starting weights. 'pretrained': every weight loaded into the abstract model.
    'scratch': the random initialisation (seed `config.seed`). 'hf': the same, then both backbones loaded into it,
    so only the connector keeps its fresh values."""
    cfg = source.config.model
    if source.init == "pretrained":
        model = abstract_model(cfg)
        load_weights(model, config.model.pretrained_path)
        return model
    model = TinyLlavaVideo(cfg, rngs=nnx.Rngs(config.seed))
    if source.init == "scratch":
        redraw_kernels(model, config.model.scratch.get("kernel_init", "normal"), config.seed)
    if source.init == "hf":
        for component, path in (("vision", config.model.vision_path), ("llm", config.model.llm_path)):
            entries = tables.tinyllava_entries(cfg, components=(component,), published=False)
            load_into(model, _hf_backbone(path, component).reader, entries, path)
    return model


# ---- data and loss -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class DataSource:
    """The batches of a run: `make()` gives an iterator with get_state/set_state whose batches hold `BATCH_NDIMS`;
    `size` samples per epoch (None: unknown)."""

    make: Callable[[], Iterator[Mapping[str, np.ndarray]]]
    size: Optional[int]


def data_source(config: ml_collections.ConfigDict, source: ModelSource) -> DataSource:
    """The configured data pipeline (this process's rows of every global batch), after the start-up data checks
    (`DataError`, one line, when the data cannot work)."""
    from tlv_jax.data.pipeline import TrainLoaderConfig, make_train_iterator
    from tlv_jax.data.preflight import check_data

    d = config.data
    if not source.tokenizer_dir:
        raise ValueError("no tokenizer: set data.tokenizer_dir")
    if max(d.length_buckets) > config.model.max_length:
        raise ValueError(f"data.length_buckets {tuple(d.length_buckets)} exceed model.max_length "
                         f"{config.model.max_length}")
    packing = bool(d.get("packing", False))  # rows of model.max_length tokens instead of the buckets
    loader = TrainLoaderConfig(
        annotation_files=tuple(d.annotation_files), video_dirs=tuple(d.video_dirs),
        prepared_dirs=tuple(d.prepared_dirs), weights=tuple(d.weights) or None, tokenizer_dir=source.tokenizer_dir,
        template=d.template, num_frames=d.num_frames, max_frames=d.max_frames or None,
        image_size=source.config.model.vision.image_size,
        length_buckets=(config.model.max_length,) if packing else tuple(d.length_buckets),
        batch_size=config.train.global_batch // jax.process_count(), seed=config.seed, num_workers=d.num_workers,
        worker_buffer_size=d.worker_buffer_size, read_threads=d.read_threads, max_bad_fraction=d.max_bad_fraction,
        min_samples_for_bad_check=d.min_samples_for_bad_check, packing=packing,
        videos_per_row=d.get("videos_per_row", 0))
    if packing:
        tokens = tuple(source.config.model.video_tokens(n) for n in range(1, loader.frames_per_sample + 1))
        loader = dataclasses.replace(loader, video_tokens=tokens)
    queries = source.config.model.video_tokens(loader.frames_per_sample)
    loader.validate(queries)
    size = check_data(loader, d.preflight_samples)
    return DataSource(make=lambda: make_train_iterator(loader, queries), size=size)


def loss_fn(config: ml_collections.ConfigDict) -> step_lib.LossFn:
    """(sum of target-token losses, number of target tokens) of one micro-batch. Uniformly sampled frames are
    all real, so their mask is dropped (the group resampler then takes its reshape path, no gather)."""
    use_mask = config.data.num_frames == -1

    def fn(model: TinyLlavaVideo, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        frames_mask = batch["frames_mask"] if use_mask else None
        if "segment_ids" in batch:  # packed rows (data.packing)
            loss, aux = model.forward_packed(batch["input_ids"], batch["labels"], batch["segment_ids"],
                                             batch["positions"], batch["pixel_values"], frames_mask)
        else:
            loss, aux = model.forward_batch(batch["input_ids"], batch["labels"], batch["attention_mask"],
                                            batch["pixel_values"], frames_mask)
        count = aux["num_tokens"].astype(jnp.float32)
        return loss * count, count

    return fn


# ---- optimisation --------------------------------------------------------------------------------------------------

def total_steps(config: ml_collections.ConfigDict, dataset_size: Optional[int]) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    if not dataset_size:
        raise ValueError("train.num_steps is 0 and the dataset size is unknown: set --config.train.num_steps")
    per_row = config.data.get("samples_per_row", 1) if config.data.get("packing", False) else 1  # an estimate
    return max(1, math.ceil(config.train.epochs * dataset_size / (config.train.global_batch * per_row)))


def accumulation_steps(config: ml_collections.ConfigDict) -> int:
    g, m = config.train.global_batch, config.train.micro_batch
    if m < 1 or g % m:
        raise ValueError(f"train.global_batch={g} must be a multiple of train.micro_batch={m}")
    if g % jax.process_count():
        raise ValueError(f"train.global_batch={g} must split evenly over {jax.process_count()} processes")
    return g // m


def optimizer(config: ml_collections.ConfigDict, schedule: optim.Schedule) -> optax.GradientTransformation:
    o = config.optim
    return optim.make_optimizer(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, clip=o.clip)


def split(model: TinyLlavaVideo, freeze: Mapping[str, str], lora: Optional[LoraSpec] = None
          ) -> tuple[Any, nnx.State, nnx.State, nnx.State]:
    """(graphdef, trainable params, frozen params in the model's compute dtype (a LoRA run's float `base_dtype`),
    the rest) as `freeze` and `lora` say."""
    dtype = lora.base_dtype if lora is not None and not lora.quantized else model.cfg.llm.dtype
    return step_lib.split_model(model, lora_state.trainable(freeze, lora), to_dtype(dtype))


def abstract_train_state(cfg: ModelConfig, freeze: Mapping[str, str], tx: optax.GradientTransformation,
                         lora: Optional[LoraSpec] = None) -> tuple[Any, step_lib.TrainState]:
    """(graph definition, the TrainState as shapes only) of training `cfg` with `freeze`, `lora` and `tx`: what a
    checkpoint holds and what the planner counts."""
    graphdef, params, frozen, rest = split(abstract_model(cfg, lora), freeze, lora)
    return graphdef, jax.eval_shape(lambda: step_lib.init_state(params, frozen, rest, tx))


def start_full(config: ml_collections.ConfigDict, source: ModelSource, lora: None, freeze: Mapping[str, str],
               tx: optax.GradientTransformation, ckpt: Checkpointer, abstract: step_lib.TrainState,
               shardings: Any) -> tuple[Optional[int], step_lib.TrainState, Any]:
    """(resumed step or None, state on its shardings, data position or None): the newest checkpoint that restores,
    else the model built from the config."""
    del lora
    restored = ckpt.restore_latest(abstract_like(abstract, shardings))
    if restored is not None:
        return restored
    _, params, frozen, rest = split(build_model(config, source), freeze)
    return None, place(step_lib.init_state(params, frozen, rest, tx), shardings), None


def start_lora(config: ml_collections.ConfigDict, source: ModelSource, lora: LoraSpec, freeze: Mapping[str, str],
               tx: optax.GradientTransformation, ckpt: Checkpointer, abstract: step_lib.TrainState,
               shardings: Any, step: Optional[int] = None) -> tuple[Optional[int], step_lib.TrainState, Any]:
    """(resumed step or None, state on its shardings, data position or None) of a LoRA run: the base is built from
    the config either way, fingerprinted, given adapters; a checkpoint (adapters only; the newest that restores, or
    `step`, then without the data position) must match its fingerprint."""
    model, base = lora_state.adapt(build_model(config, source), lora, _base_name(config), config.seed)
    ckpt.hold_adapters(base)
    _, params, frozen, rest = split(model, freeze, lora)
    frozen = place(frozen, shardings.frozen)
    saved = lora_state.saved_part
    target = abstract_like(saved(abstract), saved(shardings))
    restored = ckpt.restore_latest(target) if step is None else (step, ckpt.restore(step, target, False)[0], None)
    if restored is None:
        return None, place(step_lib.init_state(params, frozen, rest, tx), shardings), None
    resume, state, position = restored
    return resume, state.replace(frozen=frozen), position


def _base_name(config: ml_collections.ConfigDict) -> str:
    m = config.model
    return {"pretrained": m.pretrained_path, "hf": f"{m.vision_path} + {m.llm_path}"}.get(
        m.init, f"scratch (seed {config.seed})")


def check_batch_split(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Each step's global batch is split over the data x fsdp devices: say so before XLA's shape error does."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.train.global_batch % shards:
        raise ValueError(f"train.global_batch={config.train.global_batch} does not split over the mesh's data x fsdp = "
                         f"{mesh.shape['data']} x {mesh.shape['fsdp']} = {shards} devices; use a multiple of {shards}")


# ---- a run, ready to loop ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """Everything the loop needs. `state` sits on its shardings (the loop replaces it every step); `iterator` is
    positioned after the batch of `step` (the resumed checkpoint's, or 0)."""

    config: ml_collections.ConfigDict
    workdir: Workdir
    source: ModelSource
    mesh: Mesh
    checkpoints: Checkpointer
    resumed_from: Optional[int]
    step: int
    total_steps: int
    iterator: Iterator[Mapping[str, np.ndarray]]
    graphdef: Any
    state: step_lib.TrainState
    train_step: Callable[[step_lib.TrainState, Mapping[str, jax.Array]], tuple[step_lib.TrainState, dict]]


def prepare(config: ml_collections.ConfigDict, workdir: str | Path, *, data: Optional[DataSource] = None) -> Run:
    """Sets up (or resumes, when `workdir/checkpoints` has a step) the run of `config` in `workdir`. `data` replaces
    the configured pipeline (the demo passes its own)."""
    workdir = Workdir.of(workdir)
    workdir.pull()  # a resumed remote run continues its metrics log on a fresh machine
    if jax.process_index() == 0:
        (workdir.local / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    accum = accumulation_steps(config)
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, dcn_data=config.mesh.dcn_data)
    check_batch_split(config, mesh)
    source = model_source(config)
    data = data or data_source(config, source)
    steps = total_steps(config, data.size)
    schedule = optim.make_schedule(config.optim.lr, steps, config.optim.warmup_ratio, config.optim.schedule)
    tx = optimizer(config, schedule)
    lora = lora_state.spec(config)
    freeze = lora_state.check_freeze(config.freeze, lora)
    graphdef, abstract = abstract_train_state(source.config.model, freeze, tx, lora)
    rules = model_rules(source.config.model, mesh.shape)  # head axes split only between whole heads
    shardings = tree_shardings(abstract, mesh, rules, SMALL_TENSOR_BYTES)
    iterator = data.make()
    # Created once the config has proven buildable; closed on a failure after this (its threads would otherwise
    # outlive the interpreter's shutdown and print tracebacks after the error line).
    ckpt = Checkpointer(workdir.checkpoints, every=config.checkpoint.every, keep=config.checkpoint.keep,
                        async_save=config.checkpoint.async_save)
    try:
        # The newest checkpoint that restores (unreadable newer ones are set aside with a warning); none: fresh.
        start = start_lora if lora is not None else start_full
        resume, state, position = start(config, source, lora, freeze, tx, ckpt, abstract, shardings)
        if position is not None:
            iterator.set_state(position)
    except BaseException:
        ckpt.close()
        raise
    step = int(jax.device_get(state.step))
    distributed.assert_same_across_processes(config_hash=distributed.config_fingerprint(config), step=step)
    loss = lora_state.with_dropout_rng(loss_fn(config), lora, config.seed)
    train_step = step_lib.make_train_step(graphdef, tx, loss, accum_steps=accum, schedule=schedule)
    return Run(config=config, workdir=workdir, source=source, mesh=mesh, checkpoints=ckpt, resumed_from=resume,
               step=step, total_steps=steps, iterator=iterator, graphdef=graphdef, state=state,
               train_step=step_lib.jit_train_step(train_step, shardings, mesh, batch_ndims(config)))
