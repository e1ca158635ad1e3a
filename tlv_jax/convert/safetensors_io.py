"""Streaming readers and writers for Hugging Face checkpoint files, with no torch needed for safetensors.

Readers expose `keys()`, `shape(key)`, `dtype(key)` and `get(key)` (one tensor at a time), over a
single `model.safetensors`, a sharded `*.safetensors` + index, or a `pytorch_model.bin` (that last one needs torch).
`ShardedWriter` streams tensors one by one into size-bounded shards plus `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Optional, Protocol, Sequence

import ml_dtypes
import numpy as np

ST_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model; the message names the file or key."""


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file of a checkpoint; a missing or malformed file is a one-line CheckpointError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e


class TensorReader(Protocol):
    def keys(self) -> list[str]: ...
    def shape(self, key: str) -> tuple[int, ...]: ...
    def dtype(self, key: str) -> np.dtype: ...
    def get(self, key: str) -> np.ndarray: ...


class SafetensorsFile:
    """One .safetensors file, parsed from its JSON header; tensors are read one at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({e})") from e
        self.metadata = header.pop("__metadata__", None) or {}
        self._header = header
        self._data_start = 8 + n
        try:
            needed = self._data_start + max((v["data_offsets"][1] for v in header.values()), default=0)
        except (KeyError, IndexError, TypeError) as e:
            raise CheckpointError(f"{self.path}: malformed safetensors header ({e!r})") from e
        size = self.path.stat().st_size
        if size < needed:
            raise CheckpointError(f"{self.path}: truncated safetensors file ({size} bytes, its header needs {needed})")

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._header[key]["shape"])

    def dtype(self, key: str) -> np.dtype:
        name = self._header[key]["dtype"]
        if name not in ST_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {key!r} has unsupported dtype {name}")
        return ST_DTYPES[name]

    def get(self, key: str) -> np.ndarray:
        """Reads one tensor into a fresh array (not a memory map: mapped pages would stay in the process's
        resident set until the file is closed, so a streaming conversion would grow to the checkpoint's size)."""
        if key not in self._header:
            raise CheckpointError(f"{self.path}: no tensor {key!r}")
        start, end = self._header[key]["data_offsets"]
        dtype, shape = self.dtype(key), self.shape(key)
        count = (end - start) // dtype.itemsize
        arr = np.fromfile(self.path, dtype=dtype, count=count, offset=self._data_start + start)
        if arr.size != count or count != int(np.prod(shape)):
            raise CheckpointError(f"{self.path}: tensor {key!r} is truncated or its header is inconsistent")
        return arr.reshape(shape)


class MultiFileReader:
    """Several files (shards) seen as one key space."""

    def __init__(self, files: list[TensorReader], names: list[str]):
        self._owner: dict[str, TensorReader] = {}
        for f, name in zip(files, names):
            for k in f.keys():
                if k in self._owner:
                    raise CheckpointError(f"{name}: tensor {k!r} appears in more than one shard")
                self._owner[k] = f

    def keys(self) -> list[str]:
        return list(self._owner)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._owner[key].shape(key)

    def dtype(self, key: str) -> np.dtype:
        return self._owner[key].dtype(key)

    def get(self, key: str) -> np.ndarray:
        return self._owner[key].get(key)


class TorchBinFile:
    """A `pytorch_model.bin` (the pretrain-stage layout); loaded lazily with mmap, needs torch."""

    def __init__(self, path: str | os.PathLike):
        try:
            import torch
        except ImportError as e:
            raise CheckpointError(f"{path}: reading pytorch_model.bin needs torch (pip install 'tlv_jax[torch]')") from e
        self.path = Path(path)
        try:
            self._sd = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # torch raises many types for a corrupt file
            raise CheckpointError(f"{self.path}: not a readable PyTorch checkpoint ({e})") from e

    def keys(self) -> list[str]:
        return list(self._sd)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._sd[key].shape)

    def dtype(self, key: str) -> np.dtype:
        import torch
        t = self._sd[key]
        return np.dtype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy().dtype

    def get(self, key: str) -> np.ndarray:
        import torch
        t = self._sd[key]
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()


def open_checkpoint(directory: str | os.PathLike) -> TensorReader:
    """Opens the weights of one HF model directory: sharded or single safetensors, else pytorch_model.bin."""
    d = Path(directory)
    index = d / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (d / n).exists()]
        if missing:
            raise CheckpointError(f"{index}: shard file {missing[0]} is missing")
        return MultiFileReader([SafetensorsFile(d / n) for n in names], names)
    singles = sorted(d.glob("*.safetensors"))
    if singles:
        return MultiFileReader([SafetensorsFile(p) for p in singles], [str(p) for p in singles])
    bins = sorted(d.glob("pytorch_model*.bin"))
    if bins:
        return MultiFileReader([TorchBinFile(p) for p in bins], [str(p) for p in bins])
    raise CheckpointError(f"{d}: no model.safetensors, sharded safetensors or pytorch_model.bin found")


class ShardedWriter:
    """Writes tensors one at a time into `prefix-0000k-of-0000n.safetensors` shards of at most `max_shard_bytes`.

    Each tensor's bytes go to disk as soon as it is added (peak memory: one tensor). With `expected`, the (key, shape,
    dtype) of every tensor in the order they will be added, each shard's header is written first and the data go
    straight behind it. Without it a shard's header is known only when the shard is full: its data go to a scratch
    file first and are copied behind the header (twice the disk writes). Shard names get their final `-of-N` only at
    `close()`; a single shard is named `model.safetensors`.
    """

    def __init__(self, directory: str | os.PathLike, max_shard_bytes: int = 5 * 1024 ** 3, prefix: str = "model",
                 metadata: Optional[dict[str, str]] = None,
                 expected: Optional[Iterable[tuple[str, Sequence[int], np.dtype]]] = None):
        self.dir = Path(directory)
        self.max_bytes = max_shard_bytes
        self.prefix = prefix
        self.metadata = metadata or {"format": "pt"}
        self._plan = None if expected is None else _plan_shards(expected, max_shard_bytes, self.dir)
        self._header: dict[str, dict] = {}
        self._out: Optional[BinaryIO] = None
        self._body_bytes = 0
        self._shards: list[list[str]] = []
        self._total = 0

    def add(self, key: str, array: np.ndarray) -> None:
        if array.dtype not in ST_NAMES:
            raise CheckpointError(f"{self.dir}: cannot store tensor {key!r} of dtype {array.dtype}")
        if self._header and self._body_bytes + array.nbytes > self.max_bytes:
            self._flush()
        entry = {"dtype": ST_NAMES[array.dtype], "shape": list(array.shape),
                 "data_offsets": [self._body_bytes, self._body_bytes + array.nbytes]}
        if self._plan is not None:
            idx = len(self._shards)
            if idx >= len(self._plan) or self._plan[idx].get(key) != entry:
                raise CheckpointError(f"{self.dir}: tensor {key!r} {entry['dtype']}{entry['shape']} was not expected "
                                      "at this point")
        if self._out is None:
            self._open()
        self._header[key] = entry
        self._out.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        self._body_bytes += array.nbytes
        self._total += array.nbytes

    def _path(self, idx: int, suffix: str = "") -> Path:
        return self.dir / f".shard-{idx}{suffix}.tmp"

    def _open(self) -> None:
        idx = len(self._shards)
        if self._plan is None:
            self._out = open(self._path(idx, ".body"), "wb")
        else:
            self._out = open(self._path(idx), "wb")
            self._out.write(_encode_header(self._plan[idx], self.metadata))

    def _flush(self) -> None:
        idx = len(self._shards)
        if self._out is None:  # an empty checkpoint still gets one (empty) shard
            self._open()
        self._out.close()
        if self._plan is None:
            body = self._path(idx, ".body")
            with open(self._path(idx), "wb") as out, open(body, "rb") as src:
                out.write(_encode_header(self._header, self.metadata))
                _copy_file(src, out, self._body_bytes)
            body.unlink()
        elif list(self._header) != list(self._plan[idx]):
            missing = next(k for k in self._plan[idx] if k not in self._header)
            raise CheckpointError(f"{self.dir}: expected tensor {missing!r} was never added")
        self._shards.append(list(self._header))
        self._header, self._out, self._body_bytes = {}, None, 0

    def close(self) -> list[str]:
        if self._header or not self._shards:
            self._flush()
        if self._plan is not None and len(self._shards) < len(self._plan):
            raise CheckpointError(f"{self.dir}: expected tensor {next(iter(self._plan[len(self._shards)]))!r} "
                                  "was never added")
        n = len(self._shards)
        if n == 1:
            names = [f"{self.prefix}.safetensors"]
        else:
            names = [f"{self.prefix}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, name in enumerate(names):
            os.replace(self._path(i), self.dir / name)
        if n > 1:
            weight_map = {k: name for keys, name in zip(self._shards, names) for k in keys}
            index = {"metadata": {"total_size": self._total}, "weight_map": dict(sorted(weight_map.items()))}
            (self.dir / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return names


def _plan_shards(expected: Iterable[tuple[str, Sequence[int], np.dtype]], max_bytes: int, where: Path
                 ) -> list[dict[str, dict]]:
    """Each shard's header, cut exactly where `ShardedWriter.add` will cut."""
    shards: list[dict[str, dict]] = [{}]
    size = 0
    for key, shape, dtype in expected:
        dtype = np.dtype(dtype)
        if dtype not in ST_NAMES:
            raise CheckpointError(f"{where}: cannot store tensor {key!r} of dtype {dtype}")
        n = int(np.prod(shape)) * dtype.itemsize
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [size, size + n]}
        size += n
    return shards


def _encode_header(header: dict[str, dict], metadata: Optional[dict[str, str]]) -> bytes:
    """The 8-byte length and the JSON header, padded with spaces to a multiple of 8 (as the format allows)."""
    full = {"__metadata__": metadata, **header} if metadata else header
    blob = json.dumps(full, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob


def _copy_file(src: BinaryIO, dst: BinaryIO, nbytes: int) -> None:
    """Copies `nbytes` from src to dst inside the kernel where possible (no user-space buffer)."""
    src.flush()
    dst.flush()
    done = 0
    try:
        while done < nbytes:
            n = os.copy_file_range(src.fileno(), dst.fileno(), nbytes - done)
            if n == 0:
                break
            done += n
    except (AttributeError, OSError):
        pass
    if done < nbytes:  # no copy_file_range (or it stopped early): copy the rest in 64 MiB pieces
        src.seek(done)
        dst.seek(0, os.SEEK_END)
        while done < nbytes:
            chunk = src.read(min(64 << 20, nbytes - done))
            if not chunk:
                raise CheckpointError(f"{src.name}: ended after {done} of {nbytes} bytes")
            dst.write(chunk)
            done += len(chunk)


def write_safetensors(path: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]],
                      metadata: Optional[dict[str, str]] = None) -> None:
    """Writes a safetensors file (header, then each tensor's bytes in order)."""
    tensors = list(tensors)
    header: dict[str, dict] = {}
    offset = 0
    for key, arr in tensors:
        if arr.dtype not in ST_NAMES:
            raise CheckpointError(f"{path}: cannot store tensor {key!r} of dtype {arr.dtype}")
        header[key] = {"dtype": ST_NAMES[arr.dtype], "shape": list(arr.shape),
                       "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    with open(path, "wb") as f:
        f.write(_encode_header(header, metadata))
        for _, arr in tensors:
            f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
