"""PyTorch-side checkpoint layouts, read as one key space, and the shape every tensor must have.

- TinyLLaVA-Video, published (flat) layout: `config.json` + `model.safetensors` / sharded safetensors + index /
  `pytorch_model.bin`, keys `language_model.…`, `vision_tower._vision_tower.…`, `connector._connector.…`.
- TinyLLaVA-Video, pretrain-stage layout: `language_model/`, `vision_tower/`, `connector/` subfolders (each with
  pytorch_model.bin or safetensors) whose keys lack the component prefix (`connector/` keys start `_connector.`).
- A plain Hugging Face backbone: Qwen2/Qwen2.5 or Phi-2 (`*ForCausalLM`), SigLIP (`SiglipVisionModel`, with or
  without the `vision_model.` key prefix, or a full `SiglipModel` whose text tower is ignored).

Both TinyLLaVA layouts are presented under the published key names, so one table (`tables.tinyllava_entries`) serves
both. Expected shapes come from the configs alone (no model is built): `param_shapes` gives each parameter's shape in
our layout, keyed by its path pattern.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from tlv_jax.config import LLMConfig, VisionConfig
from tlv_jax.convert import tables
from tlv_jax.convert.safetensors_io import CheckpointError, TensorReader, open_checkpoint, read_json
from tlv_jax.models.tinyllava_config import ConnectorConfig, TinyLlavaConfig

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

LLM_MODEL_TYPES = ("qwen2", "phi")
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
    model_type = raw.get("model_type", "")
    archs = " ".join(raw.get("architectures") or [])
    if model_type in LLM_MODEL_TYPES or "Qwen2ForCausalLM" in archs or "PhiForCausalLM" in archs:
        return "llm"
    if model_type in SIGLIP_MODEL_TYPES or "Siglip" in archs:
        return "vision"
    return None


def open_hf_backbone(directory: str | Path) -> HFBackbone:
    d = Path(directory)
    raw = read_json(d / "config.json")
    component = backbone_component(raw)
    if component is None:
        raise CheckpointError(f"{d / 'config.json'}: model_type {raw.get('model_type')!r} is neither a Qwen2/Phi "
                              "LLM nor SigLIP")
    try:
        cfg = LLMConfig.from_hf(raw) if component == "llm" else VisionConfig.from_hf(raw)
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

def _dense(name: str, n_in: int, n_out: int, bias: bool = True) -> dict[str, Shape]:
    out = {f"{name}.kernel": (n_in, n_out)}
    if bias:
        out[f"{name}.bias"] = (n_out,)
    return out


def _norm(name: str, dim: int, bias: bool = True) -> dict[str, Shape]:
    out = {f"{name}.scale": (dim,)}
    if bias:
        out[f"{name}.bias"] = (dim,)
    return out


def siglip_shapes(v: VisionConfig) -> dict[str, Shape]:
    D, M, P = v.hidden_size, v.intermediate_size, v.patch_size
    s = {"patch_embed.kernel": (P, P, v.num_channels, D), "patch_embed.bias": (D,),
         "pos_embed.embedding": (v.num_patches, D),
         **_norm("layers.{i}.ln1", D), **_norm("layers.{i}.ln2", D), **_norm("post_ln", D),
         **_dense("layers.{i}.mlp.fc1", D, M), **_dense("layers.{i}.mlp.fc2", M, D)}
    for p in "qkvo":
        s.update(_dense(f"layers.{{i}}.attn.{p}", D, D))
    if v.use_head:
        s.update({"head.probe": (1, 1, D), **_dense("head.attn_in", D, 3 * D), **_dense("head.attn_out", D, D),
                  **_norm("head.ln", D), **_dense("head.mlp.fc1", D, M), **_dense("head.mlp.fc2", M, D)})
    return s


def llm_shapes(c: LLMConfig) -> dict[str, Shape]:
    H, I, q, kv = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    phi = c.family == "phi"
    s = {"embed.embedding": (c.vocab_size, H),
         **_norm("layers.{i}.input_norm", H, bias=phi), **_norm("final_norm", H, bias=phi),
         **_dense("layers.{i}.attn.q", H, q), **_dense("layers.{i}.attn.k", H, kv),
         **_dense("layers.{i}.attn.v", H, kv), **_dense("layers.{i}.attn.o", q, H, bias=phi),
         **_dense("lm_head", H, c.vocab_size, bias=phi)}
    if phi:
        s.update({**_dense("layers.{i}.mlp.fc1", H, I), **_dense("layers.{i}.mlp.fc2", I, H)})
    else:
        s.update({**_norm("layers.{i}.post_attn_norm", H, bias=False),
                  **_dense("layers.{i}.mlp.gate", H, I, bias=False), **_dense("layers.{i}.mlp.up", H, I, bias=False),
                  **_dense("layers.{i}.mlp.down", I, H, bias=False)})
    return s


def connector_shapes(c: ConnectorConfig) -> dict[str, Shape]:
    D, Dv = c.hidden_size, c.vision_hidden_size
    if c.kind == "mlp":
        return {**_dense("fc1", Dv, D), **_dense("fc2", D, D)}
    inner, F = c.heads * c.dim_head, c.ff_mult * D
    a, f = "layers.{i}.attn", "layers.{i}.ff"
    return {"latents": (c.num_latents, D), **_dense("linear", Dv, D),
            **_norm(f"{a}.norm_media", D), **_norm(f"{a}.norm_latents", D),
            **_dense(f"{a}.to_q", D, inner, bias=False), **_dense(f"{a}.to_kv", D, 2 * inner, bias=False),
            **_dense(f"{a}.to_out", inner, D, bias=False),
            **_norm(f"{f}.norm", D), **_dense(f"{f}.fc1", D, F, bias=False), **_dense(f"{f}.fc2", F, D, bias=False),
            **_norm("norm", D)}


def param_shapes(component: str, cfg: VisionConfig | LLMConfig | ConnectorConfig) -> dict[str, Shape]:
    """Our shape of every parameter of one component, keyed by path pattern ('layers.{i}.attn.q.kernel')."""
    return {"vision": siglip_shapes, "llm": llm_shapes, "connector": connector_shapes}[component](cfg)


def _pattern(path: ParamPath) -> str:
    return ".".join("{i}" if isinstance(p, int) else p for p in path)


@dataclasses.dataclass(frozen=True)
class Spec:
    """Every tensor of a checkpoint: its table entries and our shape of each (by our path)."""

    entries: list[tables.Entry]
    shapes: dict[ParamPath, Shape]

    def hf_shape(self, e: tables.Entry) -> Shape:
        return e.transform.hf_shape(self.shapes[e.path])


def _spec(entries: list[tables.Entry], configs: dict[str, Any]) -> Spec:
    by_component = {name: param_shapes(name, cfg) for name, cfg in configs.items()}
    shapes = {}
    for e in entries:
        pattern = _pattern(e.path[1:])
        try:
            shapes[e.path] = by_component[e.path[0]][pattern]
        except KeyError as err:
            raise AssertionError(f"no shape rule for {e.path_str} (pattern {pattern})") from err
    return Spec(entries, shapes)


def tinyllava_spec(cfg: TinyLlavaConfig, published: bool = True) -> Spec:
    m = cfg.model
    entries = tables.tinyllava_entries(m.vision, m.llm, m.connector.kind, m.connector.num_layers,
                                       published=published)
    return _spec(entries, {"vision": m.vision, "llm": m.llm, "connector": m.connector})


def backbone_spec(component: str, cfg: LLMConfig | VisionConfig) -> Spec:
    """Keys as the backbone's own checkpoint has them ('model.…', 'vision_model.…'); our paths under `component`."""
    rules = tables.llm_rules(cfg) if component == "llm" else tables.siglip_rules(cfg)
    return _spec(tables.expand(rules, cfg.num_layers, "", component + "."), {component: cfg})


def check_tensors(reader: TensorReader, spec: Spec, where: str) -> None:
    """One CheckpointError line for the first missing, unexpected, mis-shaped or non-float tensor."""
    present = set(reader.keys())
    for e in spec.entries:
        if e.hf not in present:
            raise CheckpointError(f"{where}: missing tensor {e.hf!r} (for {e.path_str})")
    expected = {e.hf for e in spec.entries}
    extra = sorted(present - expected)
    if extra:
        raise CheckpointError(f"{where}: unexpected tensor {extra[0]!r}"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for e in spec.entries:
        got, want = tuple(reader.shape(e.hf)), spec.hf_shape(e)
        if got != want:
            raise CheckpointError(f"{where}: tensor {e.hf!r} has shape {list(got)}, expected {list(want)}")
        if reader.dtype(e.hf).kind != "f" and reader.dtype(e.hf).name != "bfloat16":
            raise CheckpointError(f"{where}: tensor {e.hf!r} has dtype {reader.dtype(e.hf)}, expected a float type")


def copy_side_files(src: str | Path, dst: str | Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Copies the tokenizer / generation / preprocessor files that exist in `src`; returns their names."""
    copied = []
    for name in SIDE_FILES:
        if name not in skip and (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied
