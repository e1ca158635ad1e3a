"""PyTorch-side checkpoint layouts, read as one key space, and the shape every tensor must have.

- TinyLLaVA-Video, published (flat) layout: `config.json` + `model.safetensors` / sharded safetensors + index /
  `pytorch_model.bin`, keys `language_model.…`, `vision_tower._vision_tower.…`, `connector._connector.…`.
- TinyLLaVA-Video, pretrain-stage layout: `language_model/`, `vision_tower/`, `connector/` subfolders (each with
  pytorch_model.bin or safetensors) whose keys lack the component prefix (`connector/` keys start `_connector.`).
- A plain Hugging Face backbone: a decoder of a known family (`tlv_jax.models.families`), SigLIP (`SiglipVisionModel`, with or
  without the `vision_model.` key prefix, or a full `SiglipModel` whose text tower is ignored).

Both TinyLLaVA layouts are presented under the published key names, so one table (`tables.tinyllava_entries`) serves
both. Expected shapes come from the model itself: `nnx.eval_shape` of the module the config builds (nothing is
allocated), so the tables say only which key fills which parameter.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from flax import nnx

from tlv_jax.config import LLMConfig, VisionConfig
from tlv_jax.convert import check, tables
from tlv_jax.convert.rules import Entry, expand
from tlv_jax.convert.safetensors_io import CheckpointError, TensorReader, open_checkpoint, read_json
from tlv_jax.models import families
from tlv_jax.models.siglip import SiglipVisionTower
from tlv_jax.models.tinyllava import TinyLlavaVideo
from tlv_jax.models.tinyllava_config import TinyLlavaConfig

Shape = tuple[int, ...]
ParamPath = tuple[str | int, ...]

#: Non-weight files a checkpoint directory carries along (tokenizer, generation and preprocessing configs).
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja",
              "chat_template.json", "preprocessor_config.json")

#: Pretrain-stage subfolder -> published key prefix of its tensors.
PRETRAIN_SUBFOLDERS = {"language_model": "language_model.", "vision_tower": "vision_tower._vision_tower.",
                       "connector": "connector."}

SIGLIP_PREFIX = "vision_model."


class RenamedReader:
    """Tensors of other readers under new names: {new name: (reader, its name)}."""

    def __init__(self, names: dict[str, tuple[TensorReader, str]]):
        self._names = names

    def keys(self) -> list[str]:
        return list(self._names)

    def shape(self, key: str) -> Shape:
        r, k = self._names[key]
        return r.shape(k)

    def dtype(self, key: str) -> np.dtype:
        r, k = self._names[key]
        return r.dtype(k)

    def get(self, key: str) -> np.ndarray:
        r, k = self._names[key]
        return r.get(k)

    def without(self, key: str) -> "RenamedReader":
        return RenamedReader({k: v for k, v in self._names.items() if k != key})


def _rename(reader: TensorReader, rename: Callable[[str], Optional[str]], where: str,
            into: Optional[dict[str, tuple[TensorReader, str]]] = None) -> dict[str, tuple[TensorReader, str]]:
    """Adds reader's tensors under rename(key) (None drops the tensor) to `into`; a name clash is an error."""
    out = {} if into is None else into
    for k in reader.keys():
        new = rename(k)
        if new is None:
            continue
        if new in out:
            raise CheckpointError(f"{where}: tensor {k!r} appears twice (as {new!r})")
        out[new] = (reader, k)
    return out


def _nested_siglip(key: str) -> str:
    """transformers >= 5 saves `SiglipVisionModel` keys without `vision_model.`; our tables use the nested form."""
    return key if key.startswith(SIGLIP_PREFIX) else SIGLIP_PREFIX + key


def untie_check(reader: RenamedReader, embed_key: str, head_key: str, where: str) -> RenamedReader:
    """A tied model: drop `head_key` if present, after checking it is bit-equal to the embeddings."""
    if head_key not in reader.keys():
        return reader
    if embed_key in reader.keys():
        a, b = reader.get(embed_key), reader.get(head_key)
        same = a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
        if not same:
            raise CheckpointError(f"{where}: tensor {head_key!r} differs from {embed_key!r} although the config "
                                  "says tie_word_embeddings=true")
    return reader.without(head_key)


# ---- TinyLLaVA-Video checkpoints ---------------------------------------------------------------------------------

def is_tinyllava_dir(directory: str | Path) -> bool:
    d = read_json(Path(directory) / "config.json")
    return d.get("model_type") == "tinyllava" or "connector_type" in d


def detect_layout(directory: str | Path) -> str:
    """'pretrain' if the directory has the pretrain-stage subfolders, else 'published'."""
    d = Path(directory)
    return "pretrain" if any((d / sub).is_dir() for sub in PRETRAIN_SUBFOLDERS) else "published"


def open_tinyllava(directory: str | Path) -> tuple[TinyLlavaConfig, TensorReader]:
    """The config and the tensors (under published key names) of a TinyLLaVA-Video directory, either layout."""
    d = Path(directory)
    try:
        cfg = TinyLlavaConfig.load(d)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from e
    if detect_layout(d) == "pretrain":
        names: dict[str, tuple[TensorReader, str]] = {}
        for sub, prefix in PRETRAIN_SUBFOLDERS.items():
            if not (d / sub).is_dir():
                raise CheckpointError(f"{d}: pretrain-stage layout without its {sub}/ subfolder "
                                      f"(it needs {', '.join(s + '/' for s in PRETRAIN_SUBFOLDERS)})")
            fix = _nested_siglip if sub == "vision_tower" else (lambda k: k)
            _rename(open_checkpoint(d / sub), lambda k, p=prefix, f=fix: p + f(k), str(d / sub), names)
        reader = RenamedReader(names)
    else:
        flat = open_checkpoint(d)
        reader = RenamedReader(_rename(flat, lambda k: k, str(d)))
    if cfg.model.llm.tie_word_embeddings:
        llm = tables.COMPONENT_PREFIXES["llm"]
        reader = untie_check(reader, llm + "model.embed_tokens.weight", llm + "lm_head.weight", str(d))
    return cfg, reader


# ---- Plain Hugging Face backbones ---------------------------------------------------------------------------------

SIGLIP_MODEL_TYPES = ("siglip", "siglip_vision_model")
SIGLIP_IGNORED = ("text_model.", "logit_scale", "logit_bias")  # the text tower of a full SiglipModel


@dataclasses.dataclass
class HFBackbone:
    """A plain HF checkpoint: `component` 'llm' or 'vision', its config, and its tensors under table keys."""

    component: str
    config: LLMConfig | VisionConfig
    raw_config: dict[str, Any]
    reader: TensorReader

    def hf_config(self) -> dict[str, Any]:
        """The config.json to keep with it (for a full SiglipModel: its vision part as a SiglipVisionModel)."""
        if self.component == "vision" and "vision_config" in self.raw_config:
            return {**self.raw_config["vision_config"], **self.config.to_hf()}
        return dict(self.raw_config)


def backbone_component(raw: dict[str, Any]) -> Optional[str]:
    """'llm' for a decoder of a known family, 'vision' for SigLIP, None otherwise."""
    if any(f.matches(raw) for f in families.FAMILIES.values()):
        return "llm"
    if raw.get("model_type", "") in SIGLIP_MODEL_TYPES or "Siglip" in " ".join(raw.get("architectures") or []):
        return "vision"
    return None


def open_hf_backbone(directory: str | Path) -> HFBackbone:
    d = Path(directory)
    raw = read_json(d / "config.json")
    component = backbone_component(raw)
    if component is None:
        raise CheckpointError(f"{d / 'config.json'}: model_type {raw.get('model_type')!r} is neither an LLM of a "
                              f"known family ({', '.join(sorted(families.FAMILIES))}) nor SigLIP")
    try:
        cfg = families.config_from_hf(raw) if component == "llm" else VisionConfig.from_hf(raw)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{d / 'config.json'}: {e}") from e
    weights = open_checkpoint(d)
    if component == "llm":
        reader = RenamedReader(_rename(weights, lambda k: k, str(d)))
        if cfg.tie_word_embeddings:
            reader = untie_check(reader, "model.embed_tokens.weight", "lm_head.weight", str(d))
    else:
        full = "vision_config" in raw
        reader = RenamedReader(_rename(
            weights, lambda k: None if full and k.startswith(SIGLIP_IGNORED) else _nested_siglip(k), str(d)))
    return HFBackbone(component, cfg, raw, reader)


# ---- What each tensor must look like -------------------------------------------------------------------------------

def param_shapes(factory: Callable[[], nnx.Module], prefix: ParamPath = ()) -> dict[ParamPath, Shape]:
    """Our shape of every parameter of the module `factory` builds, by path (from `nnx.eval_shape`: no allocation)."""
    state = nnx.state(nnx.eval_shape(factory), nnx.Param)
    return {prefix + tuple(path): tuple(var.shape) for path, var in nnx.to_flat_state(state)}


@dataclasses.dataclass(frozen=True)
class Spec:
    """Every tensor of a checkpoint: its table entries and our shape of each (by our path)."""

    entries: list[Entry]
    shapes: dict[ParamPath, Shape]

    def hf_shape(self, e: Entry) -> Shape:
        return e.transform.hf_shape(self.shapes[e.path])

    def hf_tensors(self) -> dict[str, check.Expected]:
        """What a PyTorch-side checkpoint must hold, by HF key."""
        return {e.hf: check.Expected(self.hf_shape(e), e.path_str) for e in self.entries}

    def params(self) -> dict[ParamPath, check.Expected]:
        """What our checkpoint must hold, by parameter path."""
        return {e.path: check.Expected(self.shapes[e.path], repr(e.hf)) for e in self.entries}


def _spec(entries: list[Entry], shapes: dict[ParamPath, Shape]) -> Spec:
    """Pairs a table with the model's shapes; a table that does not cover the model exactly is a bug, not bad input."""
    mapped = {e.path for e in entries}
    if mapped != set(shapes):
        odd = sorted(".".join(map(str, p)) for p in mapped ^ set(shapes))
        raise AssertionError(f"key table and model disagree on {odd[:3]}")
    return Spec(entries, shapes)


def tinyllava_spec(cfg: TinyLlavaConfig, published: bool = True) -> Spec:
    m = cfg.model
    return _spec(tables.tinyllava_entries(m, published=published),
                 param_shapes(lambda: TinyLlavaVideo(m, rngs=nnx.Rngs(0))))


def backbone_spec(component: str, cfg: LLMConfig | VisionConfig) -> Spec:
    """Keys as the backbone's own checkpoint has them ('model.…', 'vision_model.…'); our paths under `component`."""
    if component == "llm":
        rules, factory = tables.llm_rules(cfg), lambda: families.build_decoder(cfg, rngs=nnx.Rngs(0))
    else:
        rules, factory = tables.siglip_rules(cfg), lambda: SiglipVisionTower(cfg, rngs=nnx.Rngs(0))
    return _spec(expand(rules, cfg.num_layers, "", component + "."), param_shapes(factory, (component,)))


def check_tensors(reader: TensorReader, spec: Spec, where: str) -> None:
    """One CheckpointError line for the first missing, unexpected, mis-shaped or non-float tensor."""
    check.check_tensors(reader.keys(), reader.shape, spec.hf_tensors(), where, dtype_of=reader.dtype)


def copy_side_files(src: str | Path, dst: str | Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Copies the tokenizer / generation / preprocessor files that exist in `src`; returns their names."""
    copied = []
    for name in SIDE_FILES:
        if name not in skip and (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied
