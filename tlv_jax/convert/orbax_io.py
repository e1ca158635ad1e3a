"""Our checkpoint directory: what `convert_weights.py torch2jax` writes and `tlv_jax.load` / training read.

Layout (format version 1)::

    DIR/config.json        the original TinyLlavaConfig JSON (for a backbone-only checkpoint: its HF config.json)
    DIR/tlv_jax.json       {"format": "tlv_jax", "format_version": 1, "kind": "tinyllava" | "llm" | "vision",
                            "dtype": "bfloat16" | "float32" | ... | "mixed", "num_params": N,
                            "source": {"path": ..., "layout": ...}, "defaults": {"template", "num_frames", ...}}
    DIR/params/            an Orbax checkpoint (v1 layout, OCDBT, uncompressed zarr3, chunks <= 32 MiB) of ONE dict:
                           our parameter paths, list indices as string keys, e.g.
                           params["llm"]["layers"]["0"]["attn"]["q"]["kernel"], each a numpy array in the stored
                           dtype (bf16 stays bf16) and our layout (Linear kernels (in, out), conv (kh, kw, in, out))
    DIR/generation_config.json, tokenizer files (vocab.json, merges.txt, tokenizer.json, tokenizer_config.json,
                           special_tokens_map.json, added_tokens.json, ...), copied from the source

`params/` loads with plain Orbax too (`orbax.checkpoint.experimental.v1.load(DIR / "params")` gives the nested dict),
but `ParamsReader` reads it one tensor (or one bounded batch) at a time, and `save_params` writes it without ever
holding more than two batches of it: each batch is an Orbax *partial save* into the same checkpoint, finalized at the
end. `load_params_into(model, DIR)` fills an NNX model (also one made by `nnx.eval_shape`) from it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from tlv_jax.convert.check import Expected, check_tensors
from tlv_jax.convert.safetensors_io import CheckpointError, read_json

FORMAT = "tlv_jax"
FORMAT_VERSION = 1
META_FILE = "tlv_jax.json"
PARAMS_DIR = "params"
DEFAULT_CHUNK_BYTES = 256 * 1024 ** 2  # per partial save
#: Per partial load: reading costs about twice the batch (tensorstore decodes each stored chunk into the result).
READ_CHUNK_BYTES = 64 * 1024 ** 2
#: Arrays are stored in zarr chunks of at most this size: reading one back then needs one chunk of scratch memory,
#: not a second copy of the whole array (a 600 MB embedding would otherwise cost 1.2 GB to read).
STORAGE_CHUNK_BYTES = 32 * 1024 ** 2

ParamPath = tuple[str | int, ...]


def _ocp() -> Any:
    import orbax.checkpoint.experimental.v1 as ocp  # imported lazily: slow, and `--help` should be instant

    return ocp


def dotted(path: ParamPath) -> str:
    return ".".join(str(p) for p in path)


def _from_keys(keys: tuple[str, ...]) -> ParamPath:
    return tuple(int(k) if k.isdigit() else k for k in keys)


# ---- tlv_jax.json ------------------------------------------------------------------------------------------------

def is_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / META_FILE).is_file()


def inference_defaults(template: str, num_frames: int, max_frames: int) -> dict[str, Any]:
    """The `defaults` entry of tlv_jax.json: how generation and evaluation read this model's videos and prompts
    (`num_frames` uniform frames, or -1 for 1 fps capped at `max_frames`), unless a caller overrides them."""
    if num_frames == -1 and max_frames < 1:
        raise ValueError("1 fps sampling (num_frames=-1) needs max_frames >= 1")
    return {"template": template, "num_frames": num_frames,
            "max_frames": max_frames if num_frames == -1 else num_frames}


def write_meta(directory: str | Path, meta: dict[str, Any]) -> None:
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    (Path(directory) / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a tlv_jax checkpoint (no {META_FILE})")
    meta = read_json(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta['format_version']} is newer than this code "
                              f"({FORMAT_VERSION}); update tlv_jax")
    return meta


# ---- params/ ------------------------------------------------------------------------------------------------------

def save_params(directory: str | Path, items: Iterable[tuple[ParamPath, Any]],
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Streams (path, array) pairs into `directory/params`; returns the bytes written.

    Arrays are gathered into batches of at most `chunk_bytes` (or one larger array), each written by one Orbax
    partial save in the background while the next batch is prepared: peak memory is two batches whatever the model
    size. Until the final commit the data live in `params.partial_save/`; callers wanting all-or-nothing write into a
    temporary directory (see atomic.py).
    """
    ocp = _ocp()
    target = Path(directory) / PARAMS_DIR
    ctx = ocp.Context()
    ctx.array.saving.use_compression = False  # zstd costs 3x the time for ~10% on bf16 weights
    ctx.memory.deepcopy_host_arrays = False  # the arrays are ours and never modified: no defensive copy
    ctx.array.saving.storage_options.chunk_byte_size = STORAGE_CHUNK_BYTES
    leaves: set[tuple[str, ...]] = set()
    inner: set[tuple[str, ...]] = set()
    tree: dict[str, Any] = {}
    pending = total = 0
    inflight: Any = None

    def flush() -> None:
        nonlocal tree, pending, inflight
        if inflight is not None:
            inflight.result()
        inflight = ocp.partial.save_async(target, tree)
        tree, pending = {}, 0

    try:
        with ctx:
            for path, value in items:
                keys = tuple(str(p) for p in path)
                if keys in leaves or keys in inner or any(keys[:i] in leaves for i in range(1, len(keys))):
                    raise CheckpointError(f"{target}: parameter {dotted(path)} given twice or inside another one")
                leaves.add(keys)
                inner.update(keys[:i] for i in range(1, len(keys)))
                arr = np.asarray(value)
                if pending and pending + arr.nbytes > chunk_bytes:  # a big array goes alone, not on top of a batch
                    flush()
                node = tree
                for k in keys[:-1]:
                    node = node.setdefault(k, {})
                node[keys[-1]] = arr
                pending += arr.nbytes
                total += arr.nbytes
                if pending >= chunk_bytes:
                    flush()
            if not leaves:
                raise CheckpointError(f"{target}: no parameters to save")
            if tree:
                flush()
            inflight.result()
            inflight = None
            ocp.partial.finalize(target)
    finally:
        if inflight is not None:  # failing: let the background write end before the caller deletes its directory
            with contextlib.suppress(Exception):
                inflight.result()
    return total


def _params_path(directory: str | Path) -> Path:
    d = Path(directory)
    return d / PARAMS_DIR if (d / PARAMS_DIR).is_dir() else d


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (str(k),))
    else:
        yield prefix, tree


class ParamsReader:
    """Reads `directory/params` (or an Orbax params checkpoint given directly) a tensor or a batch at a time."""

    def __init__(self, directory: str | Path):
        self.path = _params_path(directory)
        ocp = _ocp()
        if not (self.path / "_CHECKPOINT_METADATA").is_file():
            raise CheckpointError(f"{directory}: no Orbax checkpoint at {self.path}")
        try:
            tree = ocp.metadata(self.path).metadata
        except Exception as e:  # orbax raises many types for a damaged checkpoint
            raise CheckpointError(f"{self.path}: unreadable Orbax checkpoint ({e})") from e
        self._meta = {_from_keys(keys): leaf for keys, leaf in _flatten(tree)}

    def keys(self) -> list[ParamPath]:
        return list(self._meta)

    def _leaf(self, path: ParamPath) -> Any:
        try:
            return self._meta[tuple(path)]
        except KeyError as e:
            raise CheckpointError(f"{self.path}: no parameter {dotted(path)}") from e

    def shape(self, path: ParamPath) -> tuple[int, ...]:
        return tuple(self._leaf(path).shape)

    def dtype(self, path: ParamPath) -> np.dtype:
        return np.dtype(self._leaf(path).dtype)

    def nbytes(self, path: ParamPath) -> int:
        return int(np.prod(self.shape(path))) * self.dtype(path).itemsize

    def get(self, path: ParamPath) -> np.ndarray:
        return self.get_many([path])[tuple(path)]

    def get_many(self, paths: Iterable[ParamPath]) -> dict[ParamPath, np.ndarray]:
        """One Orbax partial load for all `paths` (much cheaper than one load each)."""
        ocp = _ocp()
        paths = [tuple(p) for p in paths]
        abstract: dict[str, Any] = {}
        for p in paths:
            node = abstract
            for k in p[:-1]:
                node = node.setdefault(str(k), {})
            node[str(p[-1])] = self._leaf(p)
        ctx = ocp.Context()
        ctx.pytree.loading.partial_load = True
        with ctx:
            try:
                tree = ocp.load(self.path, abstract)
            except Exception as e:
                raise CheckpointError(f"{self.path}: cannot read {dotted(paths[0])}... ({e})") from e
        return {_from_keys(k): np.asarray(v) for k, v in _flatten(tree)}

    def iter_chunks(self, paths: Iterable[ParamPath], chunk_bytes: int = READ_CHUNK_BYTES,
                    transform: Optional[Callable[[ParamPath, np.ndarray], np.ndarray]] = None
                    ) -> Iterator[tuple[ParamPath, np.ndarray]]:
        """Yields (path, transform(path, array)) in the given order, reading about `chunk_bytes` per Orbax load.
        The next batch is read (and transformed) in the background while the consumer works on the current one."""
        batches: list[list[ParamPath]] = [[]]
        size = 0
        for p in paths:
            if batches[-1] and size + self.nbytes(p) > chunk_bytes:
                batches.append([])
                size = 0
            batches[-1].append(tuple(p))
            size += self.nbytes(p)
        if not batches[0]:
            return

        def load(batch: list[ParamPath]) -> dict[ParamPath, np.ndarray]:
            arrays = self.get_many(batch)
            if transform is not None:
                for p in batch:
                    arrays[p] = transform(p, arrays[p])
            return arrays

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(load, batches[0])
            for i, batch in enumerate(batches):
                arrays = ahead.result()
                if i + 1 < len(batches):
                    ahead = pool.submit(load, batches[i + 1])
                for p in batch:
                    yield p, arrays.pop(p)  # drop our reference as soon as the consumer has it


# ---- NNX models --------------------------------------------------------------------------------------------------

def iter_model_params(model: Any) -> Iterator[tuple[ParamPath, np.ndarray]]:
    """(path, host array) for every `nnx.Param` of a model, one at a time: `save_params(dir, iter_model_params(m))`."""
    import jax
    from flax import nnx

    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        yield tuple(path), np.asarray(jax.device_get(var[...]))


def load_params_into(model: Any, directory: str | Path, prefix: ParamPath = (),
                     sharding_for: Optional[Callable[[ParamPath], Any]] = None,
                     chunk_bytes: int = READ_CHUNK_BYTES) -> None:
    """Fills every `nnx.Param` of `model` (concrete or from `nnx.eval_shape`) from a checkpoint's params.

    `prefix` selects a subtree (e.g. ('llm',) to fill a bare decoder from a TinyLLaVA checkpoint). The key set and
    every shape are checked before anything is assigned; values are cast to each parameter's dtype and, when
    `sharding_for(path)` is given, placed with that sharding.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from tlv_jax.convert.apply import get_variable

    reader = ParamsReader(directory)
    prefix = tuple(prefix)
    n = len(prefix)
    stored = {p[n:]: p for p in reader.keys() if p[:n] == prefix}
    wanted = {tuple(path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    where = f"{directory}" + (f" (under {dotted(prefix)})" if prefix else "")
    check_tensors(stored, lambda p: reader.shape(stored[p]), {p: Expected(tuple(v.shape)) for p, v in wanted.items()},
                  where, noun="parameter", name=dotted)
    for full, arr in reader.iter_chunks([stored[p] for p in wanted], chunk_bytes):
        path = full[n:]
        var = get_variable(model, path)
        arr = arr.astype(var.dtype, copy=False)
        var.set_value(jnp.asarray(arr) if sharding_for is None else jax.device_put(arr, sharding_for(path)))
