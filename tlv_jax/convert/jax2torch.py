"""JAX -> PyTorch: our checkpoint directory becomes the published TinyLLaVA-Video layout (flat: config.json,
generation_config.json, tokenizer files, size-sharded safetensors + index, the original key names; a tied lm_head
omitted as the original's save does; plus the modeling code of `hf_remote` and the `auto_map` that lets
transformers load it with `trust_remote_code=True`) or, with layout='pretrain', the pretrain-stage subfolders.
Backbone-only checkpoints (kind 'llm' / 'vision') become a plain HF model directory.

Streaming like torch2jax: params are read in bounded batches and each tensor is written as soon as it is permuted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from tqdm import tqdm

from tlv_jax.config import VisionConfig, to_dtype
from tlv_jax.convert.atomic import atomic_directory, check_target
from tlv_jax.convert.check import check_tensors
from tlv_jax.convert.hf_remote import write_remote_code
from tlv_jax.convert.layouts import PRETRAIN_SUBFOLDERS, Spec, backbone_spec, copy_side_files, tinyllava_spec
from tlv_jax.convert.orbax_io import READ_CHUNK_BYTES, ParamsReader, dotted, read_meta
from tlv_jax.convert.safetensors_io import CheckpointError, ShardedWriter, read_json
from tlv_jax.convert.rules import Entry
from tlv_jax.generate import recorded_defaults
from tlv_jax.models import families
from tlv_jax.models.tinyllava_config import TinyLlavaConfig

LAYOUTS = ("published", "pretrain")
#: Our component -> pretrain-stage subfolder.
SUBFOLDER = {"llm": "language_model", "vision": "vision_tower", "connector": "connector"}


def open_ours(src: str | Path) -> tuple[dict[str, Any], Any, Spec, ParamsReader]:
    """(tlv_jax.json, config (TinyLlavaConfig or backbone config), spec with published keys, params reader)."""
    src = Path(src)
    meta = read_meta(src)
    kind = meta.get("kind", "tinyllava")
    if kind == "tinyllava":
        try:
            cfg: Any = TinyLlavaConfig.load(src)
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(str(e)) from e
        spec = tinyllava_spec(cfg)
    elif kind in ("llm", "vision"):
        raw = read_json(src / "config.json")
        cfg = families.config_from_hf(raw) if kind == "llm" else VisionConfig.from_hf(raw)
        spec = backbone_spec(kind, cfg)
    else:
        raise CheckpointError(f"{src}: unknown checkpoint kind {kind!r} in tlv_jax.json")
    return meta, cfg, spec, ParamsReader(src)


def parse_size(text: str) -> int:
    """'5GB' -> 5e9, '500MiB' -> 500 * 2**20, '1000' -> 1000 bytes (the units of HF's max_shard_size)."""
    t = text.strip().upper()
    units = {"KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "B": 1}
    for unit, scale in units.items():
        if t.endswith(unit):
            t, mult = t[: -len(unit)], scale
            break
    else:
        mult = 1
    try:
        value = int(float(t) * mult)
    except ValueError as e:
        raise ValueError(f"bad size {text!r} (expected e.g. 5GB, 500MB, 2GiB or a byte count)") from e
    if value <= 0:
        raise ValueError(f"bad size {text!r}: must be positive")
    return value


def _with_dtype(d: dict[str, Any], dtype: Optional[str]) -> dict[str, Any]:
    """Records the written dtype as HF's save does: top-level `torch_dtype`, and in the sub-configs that have one."""
    if dtype is not None and dtype != "mixed":
        d["dtype" if "dtype" in d else "torch_dtype"] = dtype  # transformers >= 5 names it `dtype`
        for part in (d.get("text_config"), d.get("vision_config")):
            for key in ("torch_dtype", "dtype"):
                if isinstance(part, dict) and key in part:
                    part[key] = dtype
    return d


def _write_json(path: Path, d: dict[str, Any]) -> None:
    path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def _to_torch(arr: np.ndarray) -> Any:
    import torch

    if arr.dtype.name == "bfloat16":
        return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(arr))


def convert(src: str | Path, dst: str | Path, *, dtype: Optional[str] = None, max_shard_bytes: int = 5 * 10 ** 9,
            layout: str = "published", force: bool = False, progress: bool = True,
            chunk_bytes: int = READ_CHUNK_BYTES) -> Path:
    """Writes our checkpoint SRC as a PyTorch/HF checkpoint DST; returns DST. Params are read `chunk_bytes` at a time."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    dst = check_target(dst, force)
    src = Path(src)
    meta, cfg, spec, params = open_ours(src)
    if layout == "pretrain" and not isinstance(cfg, TinyLlavaConfig):
        raise CheckpointError(f"{src}: --layout pretrain needs a TinyLLaVA-Video checkpoint, not a {meta['kind']}")
    check_tensors(params.keys(), params.shape, spec.params(), str(src), noun="parameter", name=dotted)
    out_dtype = None if dtype is None else np.dtype(to_dtype(dtype))
    by_path = {e.path: e for e in spec.entries}
    total = sum(int(np.prod(spec.shapes[e.path])) * (out_dtype or params.dtype(e.path)).itemsize
                for e in spec.entries)

    def to_hf(path: tuple, arr: np.ndarray) -> np.ndarray:  # runs in the read-ahead thread
        out = by_path[path].transform.to_hf(arr)
        return out if out_dtype is None else out.astype(out_dtype, copy=False)

    def tensors(bar: tqdm) -> Iterator[tuple[Entry, np.ndarray]]:
        for path, out in params.iter_chunks([e.path for e in spec.entries], chunk_bytes, to_hf):
            bar.update(out.nbytes)
            yield by_path[path], out

    with atomic_directory(dst, force) as tmp, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"jax2torch {src.name}",
            disable=None if progress else True) as bar:
        config = _with_dtype(cfg.to_dict() if isinstance(cfg, TinyLlavaConfig) else read_json(src / "config.json"),
                             meta.get("dtype") if out_dtype is None else out_dtype.name)
        if isinstance(cfg, TinyLlavaConfig):  # an auto_map kept from an earlier export: only published ones get code
            config.pop("auto_map", None)
        if layout == "published":
            copied = copy_side_files(src, tmp)
            if isinstance(cfg, TinyLlavaConfig):
                config["auto_map"] = _remote_code(src, tmp, cfg)
            _write_json(tmp / "config.json", config)
            if "generation_config.json" not in copied and isinstance(cfg, TinyLlavaConfig):
                _write_json(tmp / "generation_config.json", _generation_config(cfg))
            planned = [(e.hf, spec.hf_shape(e), out_dtype or params.dtype(e.path)) for e in spec.entries]
            writer = ShardedWriter(tmp, max_shard_bytes, expected=planned)  # headers first: data written once
            for e, arr in tensors(bar):
                writer.add(e.hf, arr)
            writer.close()
        else:
            _write_json(tmp / "config.json", config)
            copy_side_files(src, tmp, skip=("generation_config.json",))
            _write_pretrain(tmp, config, tensors(bar), max_shard_bytes)
    return dst


def _remote_code(src: Path, dst: Path, cfg: TinyLlavaConfig) -> dict[str, str]:
    """The PyTorch modeling code, prompted and fed frames the way `tlv_jax.generate` does for SRC; config.json's
    auto_map."""
    defaults = recorded_defaults(src)
    template = defaults["template"] or families.get(cfg.model.llm.family).chat_template
    sampling = defaults["sampling"]
    return write_remote_code(dst, template=template, num_frames=sampling.num_frames,
                             max_frames=sampling.max_frames, image_size=cfg.model.vision.image_size)


def _generation_config(cfg: TinyLlavaConfig) -> dict[str, Any]:
    """What the original's save writes: bos, eos and use_cache false."""
    return {"bos_token_id": cfg.model.llm.bos_token_id, "eos_token_id": cfg.model.llm.eos_token_id,
            "use_cache": False}


def _write_pretrain(out: Path, config: dict[str, Any], tensors: Iterator[tuple[Entry, np.ndarray]],
                    max_shard_bytes: int) -> None:
    """The pretrain-stage subfolders as the original writes them: pytorch_model.bin each (one component in memory
    at a time, like torch.save needs) when torch is installed, else streamed safetensors that our reader accepts."""
    try:
        import torch
    except ImportError:
        torch = None
    for sub in PRETRAIN_SUBFOLDERS:
        (out / sub).mkdir()
    _write_json(out / "language_model" / "config.json", config["text_config"])
    _write_json(out / "vision_tower" / "config.json", config["vision_config"])
    current: Optional[str] = None
    done: set[str] = set()
    state: dict[str, Any] = {}
    writer: Optional[ShardedWriter] = None

    def finish() -> None:
        if current is None:
            return
        if torch is not None:
            torch.save(state, out / current / "pytorch_model.bin")
            state.clear()
        else:
            writer.close()

    for e, arr in tensors:
        sub = SUBFOLDER[e.path[0]]
        if sub != current:
            assert sub not in done, "tinyllava_entries lists each component's tensors together"
            finish()
            done.add(sub)
            current = sub
            writer = None if torch is not None else ShardedWriter(out / sub, max_shard_bytes)
        key = e.hf.removeprefix(PRETRAIN_SUBFOLDERS[sub])  # vision keys keep `vision_model.`, connector `_connector.`
        if torch is not None:
            state[key] = _to_torch(arr)
        else:
            writer.add(key, arr)
    finish()
