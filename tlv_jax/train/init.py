"""What a recipe trains and on what: the model (from Hugging Face backbones, from a pretrain output or from
scratch), its tokenizer, the data source, the loss the step differentiates, and the export at the end.

`model.init`:
- 'hf' (pretrain): SigLIP and the LLM from plain Hugging Face directories, the connector freshly initialised.
- 'pretrained' (finetune): a whole TinyLLaVA-Video model, ours (`<pretrain workdir>/model`) or PyTorch (either layout).
- 'scratch' (the demo): everything random, sizes from `model.scratch`.
With `abstract=True` (resuming) only the structure is built: the checkpoint supplies every value.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from tlv_jax.config import LLMConfig, VisionConfig
from tlv_jax.convert import layouts, orbax_io, tables
from tlv_jax.convert.apply import load_into
from tlv_jax.data.templates import inference_template
from tlv_jax.models.hf_backbones import abstract as abstract_model
from tlv_jax.models.resampler import build_connector
from tlv_jax.models.siglip import sincos_2d
from tlv_jax.models.tinyllava import TinyLlavaVideo
from tlv_jax.models.tinyllava_config import ConnectorConfig, ModelConfig, TinyLlavaConfig, connector_kind


INITS = ("hf", "pretrained", "scratch")
POSEMB_INITS = ("normal", "sincos2d")


@dataclasses.dataclass
class Built:
    model: Any  # TinyLlavaVideo (abstract when resuming)
    config: TinyLlavaConfig  # what the run's config.json says (written with the model at the end)
    tokenizer_dir: str


def remat_policy(config: ml_collections.ConfigDict) -> Optional[str]:
    return config.model.remat or None


def _connector(config: ml_collections.ConfigDict, vision: VisionConfig, llm: LLMConfig,
               extra: Optional[Mapping[str, Any]] = None) -> ConnectorConfig:
    kind, depth = connector_kind(config.model.connector)
    return ConnectorConfig(
        kind=kind, num_queries=config.model.num_queries if kind != "mlp" else 0,
        group=config.model.group if kind == "group" else 1, num_layers=config.model.num_resampler_layers,
        vision_hidden_size=vision.hidden_size, hidden_size=llm.hidden_size, mlp_depth=depth,
        dtype=config.model.dtype, **dict(extra or {}))


def _model_config(config: ml_collections.ConfigDict, vision: VisionConfig, llm: LLMConfig,
                  connector: ConnectorConfig) -> ModelConfig:
    return ModelConfig(vision=vision, llm=llm, connector=connector,
                       vision_feature_layer=config.model.vision_feature_layer,
                       vision_feature_select_strategy=config.model.vision_feature_select_strategy,
                       tokenizer_model_max_length=config.model.max_length)


def _with_runtime(cfg: ModelConfig, config: ml_collections.ConfigDict) -> ModelConfig:
    """The run's compute dtype, attention implementation and maximum length on top of a stored config."""
    impl = config.model.attn_impl or None
    cfg = cfg.with_dtype(config.model.dtype)
    return dataclasses.replace(
        cfg, vision=dataclasses.replace(cfg.vision, attn_impl=impl), llm=dataclasses.replace(cfg.llm, attn_impl=impl),
        tokenizer_model_max_length=config.model.max_length)


def build(config: ml_collections.ConfigDict, *, abstract: bool = False) -> Built:
    init = config.model.init
    if init not in INITS:
        raise ValueError(f"model.init={init!r}; expected one of {INITS}")
    return {"hf": _from_hf, "pretrained": _from_pretrained, "scratch": _from_scratch}[init](config, abstract)


def _tokenizer_dir(config: ml_collections.ConfigDict, default: str) -> str:
    path = config.data.tokenizer_dir or default
    if not path:
        raise ValueError("no tokenizer: set data.tokenizer_dir")
    return path


def _from_scratch(config: ml_collections.ConfigDict, abstract: bool) -> Built:
    s = config.model.scratch
    dtype, impl = config.model.dtype, config.model.attn_impl or None
    vision = VisionConfig(**s.vision, dtype=dtype, attn_impl=impl)
    llm = LLMConfig(**s.llm, dtype=dtype, attn_impl=impl)
    cfg = _model_config(config, vision, llm, _connector(config, vision, llm, s.connector))
    posemb_init = s.get("posemb_init", "normal")
    if posemb_init not in POSEMB_INITS:
        raise ValueError(f"model.scratch.posemb_init={posemb_init!r}; expected one of {POSEMB_INITS}")

    def make() -> TinyLlavaVideo:
        model = TinyLlavaVideo(cfg, rngs=nnx.Rngs(config.seed), remat=remat_policy(config))
        if posemb_init == "sincos2d":  # a fixed 2D sine-cosine start (still trained)
            grid = vision.image_size // vision.patch_size
            model.vision.pos_embed.embedding[...] = jnp.asarray(sincos_2d(grid, vision.hidden_size))
        return model

    model = abstract_model(make) if abstract else make()
    return Built(model, TinyLlavaConfig.from_model(cfg), _tokenizer_dir(config, ""))


def _from_hf(config: ml_collections.ConfigDict, abstract: bool) -> Built:
    m = config.model
    if not m.llm_path or not m.vision_path:
        raise ValueError("model.init='hf' needs model.llm_path and model.vision_path (Hugging Face directories)")
    vis_bb, llm_bb = layouts.open_hf_backbone(m.vision_path), layouts.open_hf_backbone(m.llm_path)
    for bb, want, key in ((vis_bb, "vision", "vision_path"), (llm_bb, "llm", "llm_path")):
        if bb.component != want:
            raise ValueError(f"model.{key}={getattr(m, key)!r} holds a {bb.component} model, not a {want} model")
    vision = dataclasses.replace(vis_bb.config, dtype=m.dtype, attn_impl=m.attn_impl or None)
    llm = dataclasses.replace(llm_bb.config, dtype=m.dtype, attn_impl=m.attn_impl or None)
    cfg = _model_config(config, vision, llm, _connector(config, vision, llm))
    model = abstract_model(lambda: TinyLlavaVideo(cfg, rngs=nnx.Rngs(config.seed), remat=remat_policy(config)))
    if not abstract:
        model.connector = build_connector(cfg.connector, rngs=nnx.Rngs(config.seed))
        for bb, name, path in ((vis_bb, "vision", m.vision_path), (llm_bb, "llm", m.llm_path)):
            entries = tables.tinyllava_entries(vision, llm, cfg.connector.kind, cfg.connector.num_layers,
                                               components=(name,), published=False)
            load_into(model, bb.reader, entries, path)
    extra = {"llm_model_name_or_path": m.llm_path, "vision_model_name_or_path": m.vision_path}
    return Built(model, TinyLlavaConfig.from_model(cfg, **extra), _tokenizer_dir(config, m.llm_path))


def _from_pretrained(config: ml_collections.ConfigDict, abstract: bool) -> Built:
    from tlv_jax.api import load

    path = config.model.pretrained_path
    if not path:
        raise ValueError("model.init='pretrained' needs model.pretrained_path")
    stored = TinyLlavaConfig.load(path) if orbax_io.is_checkpoint(path) else layouts.open_tinyllava(path)[0]
    want = _connector(config, stored.model.vision, stored.model.llm)
    got = stored.model.connector
    if (got.kind, got.num_queries, got.group) != (want.kind, want.num_queries, want.group):
        raise ValueError(f"{path}: its connector is {got.kind} ({got.num_queries} queries, group {got.group}) but "
                         f"the config asks for {want.kind} ({want.num_queries} queries, group {want.group})")
    cfg = _with_runtime(stored.model, config)
    if abstract:
        model = abstract_model(lambda: TinyLlavaVideo(cfg, rngs=nnx.Rngs(0), remat=remat_policy(config)))
    else:
        model = load(path, dtype=config.model.dtype)
        model.llm.remat = remat_policy(config)  # `load` builds the decoder without remat
        model.cfg = cfg
    return Built(model, TinyLlavaConfig(cfg, stored.raw), _tokenizer_dir(config, path))


# ---- data and loss -------------------------------------------------------------------------------------------------

def video_tokens(cfg: ModelConfig, frames: int) -> int:
    """Tokens the model inserts for one video of `frames` frames."""
    return cfg.connector.num_queries if cfg.connector.kind != "mlp" else frames * cfg.tokens_per_frame


def data_source(config: ml_collections.ConfigDict, built: Built) -> Any:
    from tlv_jax.data.pipeline import TrainLoaderConfig, load_annotations, make_train_iterator
    from tlv_jax.train.loop import DataSource

    d = config.data
    if max(d.length_buckets) > config.model.max_length:
        raise ValueError(f"data.length_buckets {tuple(d.length_buckets)} exceed model.max_length "
                         f"{config.model.max_length}")
    loader = TrainLoaderConfig(
        annotation_files=tuple(d.annotation_files), video_dirs=tuple(d.video_dirs),
        prepared_dirs=tuple(d.prepared_dirs), weights=tuple(d.weights) or None, tokenizer_dir=built.tokenizer_dir,
        template=d.template, num_frames=d.num_frames, max_frames=d.max_frames or None,
        image_size=built.config.model.vision.image_size, length_buckets=tuple(d.length_buckets),
        batch_size=config.train.global_batch // jax.process_count(), seed=config.seed, num_workers=d.num_workers,
        worker_buffer_size=d.worker_buffer_size, read_threads=d.read_threads, max_bad_fraction=d.max_bad_fraction)
    queries = video_tokens(built.config.model, loader.frames_per_sample)
    size = sum(len(load_annotations(f)) for f in loader.annotation_files) if loader.annotation_files else None
    return DataSource(make=lambda: make_train_iterator(loader, queries), size=size)


def loss_fn(config: ml_collections.ConfigDict):
    """(sum of target-token losses, number of target tokens) of one micro-batch. Uniformly sampled frames are
    all real, so their mask is dropped (the group resampler then takes its reshape path, no gather)."""
    use_mask = config.data.num_frames == -1

    def fn(model: TinyLlavaVideo, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        loss, aux = model.forward_batch(batch["input_ids"], batch["labels"], batch["attention_mask"],
                                        batch["pixel_values"], batch["frames_mask"] if use_mask else None)
        count = aux["num_tokens"].astype(jnp.float32)
        return loss * count, count

    return fn


# ---- export --------------------------------------------------------------------------------------------------------

def save_model_dir(model: Any, cfg: TinyLlavaConfig, tokenizer_dir: str, dst: Path, source: str,
                   defaults: dict[str, Any]) -> Path:
    """Our checkpoint layout (config.json, tlv_jax.json with the inference `defaults`, params/, tokenizer files),
    written atomically."""
    from tlv_jax.convert.atomic import atomic_directory

    dtypes: list[str] = []

    def params():
        for path, arr in orbax_io.iter_model_params(model):
            dtypes.append(np.dtype(arr.dtype).name)
            yield path, arr

    with atomic_directory(dst, force=True) as tmp:
        cfg.save(tmp)
        if tokenizer_dir:
            layouts.copy_side_files(tokenizer_dir, tmp, skip=("generation_config.json",))
        n = orbax_io.save_params(tmp, params())
        kinds = set(dtypes)
        orbax_io.write_meta(tmp, {"kind": "tinyllava", "dtype": kinds.pop() if len(kinds) == 1 else "mixed",
                                  "num_params": len(dtypes), "num_bytes": n,
                                  "source": {"path": source, "layout": "trained"}, "defaults": defaults})
    return dst


def export(config: ml_collections.ConfigDict, built: Built, graphdef: Any, state: Any,
           workdir: Path) -> tuple[Path, Optional[Path]]:
    """`workdir/model` in our layout and, with `export.torch`, `workdir/export` in the PyTorch (published) layout
    through the converter. One process only (see tlv_jax.train.export for multi-process runs)."""
    model = nnx.merge(graphdef, state.params, state.frozen, state.rest)
    # Generation reads videos the way this run's data did (a model trained on 8 frames is not asked about 16).
    template = inference_template(config.data.template, built.config.model.llm.family)
    defaults = orbax_io.inference_defaults(template, config.data.num_frames, config.data.max_frames)
    model_dir = save_model_dir(model, built.config, built.tokenizer_dir, workdir / "model", str(workdir), defaults)
    export_dir = None
    if config.export.torch:
        from tlv_jax.convert.jax2torch import convert

        export_dir = convert(model_dir, workdir / "export", dtype=config.export.dtype or None, force=True,
                             progress=config.log.progress)
    return model_dir, export_dir

