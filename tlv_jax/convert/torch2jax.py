"""PyTorch -> JAX: a TinyLLaVA-Video checkpoint (published or pretrain-stage layout) or a plain HF backbone
(a decoder of a known family, or SigLIP) becomes our checkpoint directory (format in `orbax_io`).

Table-driven and streaming: no model is allocated (shapes come from `nnx.eval_shape`); tensors are read, permuted and
written one at a time. The whole key set
and every shape are checked before anything is written, and the output appears only when complete (`atomic`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from tqdm import tqdm

from tlv_jax.config import to_dtype
from tlv_jax.convert.atomic import atomic_directory, check_target
from tlv_jax.convert.layouts import (HFBackbone, Spec, backbone_component, backbone_spec, check_tensors,
                                     copy_side_files, detect_layout, is_tinyllava_dir, open_hf_backbone,
                                     open_tinyllava, tinyllava_spec)
from tlv_jax.convert.orbax_io import DEFAULT_CHUNK_BYTES, ParamPath, inference_defaults, save_params, write_meta
from tlv_jax.convert.safetensors_io import CheckpointError, TensorReader, read_json
from tlv_jax.models import families
from tlv_jax.models.tinyllava_config import TinyLlavaConfig


@dataclasses.dataclass
class Source:
    """What is converted: `kind` 'tinyllava', 'llm' or 'vision'; tensors under the keys of `spec`."""

    path: Path
    kind: str
    layout: str
    reader: TensorReader
    spec: Spec
    config_json: Optional[dict[str, Any]]  # None: copy the source's config.json verbatim
    config: TinyLlavaConfig | HFBackbone


def open_source(src: str | Path, component: Optional[str] = None) -> Source:
    """Opens SRC as TinyLLaVA-Video (either layout) or as an HF backbone; `component` must agree when given."""
    src = Path(src)
    if not src.is_dir():
        raise CheckpointError(f"{src}: not a directory")
    if is_tinyllava_dir(src):
        if component is not None:
            raise CheckpointError(f"{src}: a TinyLLaVA-Video checkpoint; --component is only for plain HF backbones")
        cfg, reader = open_tinyllava(src)
        return Source(src, "tinyllava", detect_layout(src), reader, tinyllava_spec(cfg), None, cfg)
    found = backbone_component(read_json(src / "config.json"))
    if component is not None and found is not None and found != component:
        raise CheckpointError(f"{src}: --component {component} given, but config.json describes a {found} model")
    bb = open_hf_backbone(src)
    return Source(src, bb.component, "hf", bb.reader, backbone_spec(bb.component, bb.config), bb.hf_config(), bb)


def default_settings(cfg: TinyLlavaConfig, name: str, num_frames: Optional[int] = None) -> dict[str, Any]:
    """Frame sampling and template the published models were evaluated with: 16 uniform frames, or 1 fps
    (num_frames=-1) capped at 64 for the '1fps' model, and the family's chat template; `name` is the checkpoint's
    directory name."""
    if num_frames is None:
        num_frames = -1 if "1fps" in name.lower() else 16
    return inference_defaults(families.get(cfg.model.llm.family).chat_template, num_frames, 64)


def _dtype_name(dtypes: set[np.dtype]) -> str:
    return next(iter(dtypes)).name if len(dtypes) == 1 else "mixed"


def convert(src: str | Path, dst: str | Path, *, component: Optional[str] = None, dtype: Optional[str] = None,
            num_frames: Optional[int] = None, force: bool = False, progress: bool = True,
            chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Path:
    """Converts SRC into our directory DST; returns DST. Raises CheckpointError (one line) on a bad source."""
    dst = check_target(dst, force)
    source = open_source(src, component)
    check_tensors(source.reader, source.spec, str(source.path))
    out_dtype = None if dtype is None else np.dtype(to_dtype(dtype))
    total = sum(int(np.prod(source.reader.shape(e.hf))) * (out_dtype or source.reader.dtype(e.hf)).itemsize
                for e in source.spec.entries)
    stored: set[np.dtype] = set()

    def tensors(bar: tqdm) -> Iterator[tuple[ParamPath, np.ndarray]]:
        for e in source.spec.entries:
            arr = e.transform.to_ours(source.reader.get(e.hf))
            if out_dtype is not None:
                arr = arr.astype(out_dtype, copy=False)
            stored.add(arr.dtype)
            bar.update(arr.nbytes)
            yield e.path, arr

    with atomic_directory(dst, force) as tmp:
        if source.config_json is None:
            shutil.copyfile(source.path / "config.json", tmp / "config.json")
        else:
            (tmp / "config.json").write_text(json.dumps(source.config_json, indent=2, sort_keys=True) + "\n")
        copy_side_files(source.path, tmp)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"torch2jax {source.path.name}",
                  disable=None if progress else True) as bar:
            save_params(tmp, tensors(bar), chunk_bytes)
        meta: dict[str, Any] = {
            "kind": source.kind, "dtype": _dtype_name(stored), "num_params": len(source.spec.entries),
            "source": {"path": str(source.path.resolve()), "layout": source.layout},
        }
        if isinstance(source.config, TinyLlavaConfig):
            meta["defaults"] = default_settings(source.config, source.path.resolve().name, num_frames)
        write_meta(tmp, meta)
    return dst
