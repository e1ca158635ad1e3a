"""Streaming readers and writers for Hugging Face checkpoint files, with no torch needed for safetensors.

Readers expose `keys()`, `shape(key)`, `dtype(key)` and `get(key)` (one tensor at a time, memory-mapped), over a
single `model.safetensors`, a sharded `*.safetensors` + index, or a `pytorch_model.bin` (that last one needs torch).
`ShardedWriter` writes tensors one by one into size-bounded shards plus `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, Optional, Protocol

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


class TensorReader(Protocol):
    def keys(self) -> list[str]: ...
    def shape(self, key: str) -> tuple[int, ...]: ...
    def dtype(self, key: str) -> np.dtype: ...
    def get(self, key: str) -> np.ndarray: ...


class SafetensorsFile:
    """One .safetensors file, parsed from its JSON header and memory-mapped."""

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
        self._mmap: Optional[np.memmap] = None

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
        if key not in self._header:
            raise CheckpointError(f"{self.path}: no tensor {key!r}")
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        start, end = self._header[key]["data_offsets"]
        raw = self._mmap[self._data_start + start:self._data_start + end]
        return np.frombuffer(raw, dtype=self.dtype(key)).reshape(self.shape(key))


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

    Each shard is written when it fills, so peak memory is one shard's worth of tensors. Shard names get their
    final `-of-N` only at `close()` (N is unknown until then); a single shard is named `model.safetensors`.
    """

    def __init__(self, directory: str | os.PathLike, max_shard_bytes: int = 5 * 1024 ** 3, prefix: str = "model",
                 metadata: Optional[dict[str, str]] = None):
        self.dir = Path(directory)
        self.max_bytes = max_shard_bytes
        self.prefix = prefix
        self.metadata = metadata or {"format": "pt"}
        self._pending: list[tuple[str, np.ndarray]] = []
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self._total = 0

    def add(self, key: str, array: np.ndarray) -> None:
        if self._pending and self._pending_bytes + array.nbytes > self.max_bytes:
            self._flush()
        self._pending.append((key, np.ascontiguousarray(array)))
        self._pending_bytes += array.nbytes
        self._total += array.nbytes

    def _flush(self) -> None:
        idx = len(self._shards)
        write_safetensors(self.dir / f".shard-{idx}.tmp", self._pending, self.metadata)
        self._shards.append([k for k, _ in self._pending])
        self._pending, self._pending_bytes = [], 0

    def close(self) -> list[str]:
        if self._pending or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            names = [f"{self.prefix}.safetensors"]
        else:
            names = [f"{self.prefix}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, name in enumerate(names):
            os.replace(self.dir / f".shard-{i}.tmp", self.dir / name)
        if n > 1:
            weight_map = {k: name for keys, name in zip(self._shards, names) for k in keys}
            index = {"metadata": {"total_size": self._total}, "weight_map": dict(sorted(weight_map.items()))}
            (self.dir / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return names


def write_safetensors(path: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]],
                      metadata: Optional[dict[str, str]] = None) -> None:
    """Writes a safetensors file (header, then each tensor's bytes in order)."""
    tensors = list(tensors)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for key, arr in tensors:
        if arr.dtype not in ST_NAMES:
            raise CheckpointError(f"{path}: cannot store tensor {key!r} of dtype {arr.dtype}")
        header[key] = {"dtype": ST_NAMES[arr.dtype], "shape": list(arr.shape),
                       "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, arr in tensors:
            f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
