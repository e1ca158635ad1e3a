"""SigLIP frame preprocessing, equal to transformers' `SiglipImageProcessor`.

The original squashes each frame to size x size with PIL bicubic on uint8 (uint8 out), then computes
`(x / 255 - mean) / std` in float32. The resize must be PIL's (not `jax.image.resize`) to match pixel for pixel.
The processor rescales in float64 and casts to float32; a float32 division by 255 is correctly rounded and gives the
same float32 for all 256 values (the tests check it), so we stay in float32 and the output is bit-identical.

Split in two so the loader can resize in its workers and normalise wherever it likes: `resize_frames` (uint8) and
`normalize_frames` (float32); `siglip_preprocess` does both.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
from PIL import Image

Aspect = Literal["square", "pad"]


def expand_to_square(frame: np.ndarray, fill: Sequence[int]) -> np.ndarray:
    """The original's `expand2square`: centre the frame on a square canvas of its longer side filled with `fill`."""
    h, w = frame.shape[:2]
    side = max(h, w)
    out = np.empty((side, side, 3), np.uint8)
    out[...] = np.asarray(fill, np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = frame
    return out


def _as_uint8_frames(frames: np.ndarray | Sequence[Image.Image]) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
        return list(frames)
    out = []
    for i, img in enumerate(frames):
        if not isinstance(img, Image.Image):
            raise ValueError(f"frame {i}: expected a PIL image or a uint8 (F, H, W, 3) array, got {type(img).__name__}")
        out.append(np.asarray(img.convert("RGB")))
    if not out:
        raise ValueError("no frames")
    return out


@lru_cache(maxsize=4)
def _pool(num_threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(num_threads, thread_name_prefix="siglip-resize")


def resize_frames(frames: np.ndarray | Sequence[Image.Image], size: int = 384, aspect: Aspect = "square",
                  fill: Sequence[int] = (127, 127, 127), num_threads: int = 1) -> np.ndarray:
    """PIL bicubic resize of every frame to (size, size), uint8 (F, size, size, 3). `aspect='pad'` first centres the
    frame on a square of `fill` (the original uses `int(mean * 255)`). PIL releases the GIL while resampling, so
    `num_threads > 1` resizes frames in parallel threads."""
    return _resize(_as_uint8_frames(frames), size, aspect, fill, num_threads)


def _resize(arrays: list[np.ndarray], size: int, aspect: Aspect, fill: Sequence[int], num_threads: int) -> np.ndarray:
    if aspect not in ("square", "pad"):
        raise ValueError(f"aspect must be 'square' or 'pad', got {aspect!r}")

    def one(frame: np.ndarray) -> np.ndarray:
        if aspect == "pad":
            frame = expand_to_square(frame, fill)
        return np.asarray(Image.fromarray(frame).resize((size, size), resample=Image.Resampling.BICUBIC))

    resized = _pool(num_threads).map(one, arrays) if num_threads > 1 and len(arrays) > 1 else map(one, arrays)
    return np.stack(list(resized))


def normalize_frames(frames: np.ndarray, mean: Sequence[float] = (0.5, 0.5, 0.5),
                     std: Sequence[float] = (0.5, 0.5, 0.5), rescale: np.ndarray | bool = True) -> np.ndarray:
    """uint8 (F, H, W, 3) -> float32 `(x / 255 - mean) / std`. `rescale` may be a per-frame bool array (F,) for the
    original's dark-frame quirk (see `siglip_preprocess`)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    out = frames.astype(np.float32)
    flags = np.broadcast_to(np.asarray(rescale, bool), (frames.shape[0],))
    if flags.all():
        out /= np.float32(255)
    elif flags.any():
        out[flags] /= np.float32(255)
    out -= np.asarray(mean, np.float32)
    out /= np.asarray(std, np.float32)
    return out


def siglip_preprocess(frames: np.ndarray | Sequence[Image.Image], size: int = 384,
                      mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                      aspect: Aspect = "square", *, dark_frame_quirk: bool = False,
                      num_threads: int = 1) -> np.ndarray:
    """Frames (uint8 (F, H, W, 3) or PIL images) -> float32 (F, size, size, 3), as `SiglipImageProcessor`.

    `dark_frame_quirk=True` reproduces the original's decord/tensor path (`VideoPreprocess`): a frame whose maximum
    is <= 1 is processed with `do_rescale=False`, i.e. `(x - mean) / std` without the /255, so its value-1 pixels
    become +1.0 instead of -0.992. Off by default (it is a bug); the PIL path (Video-MME/MLVU readers) never has it.
    """
    arrays = _as_uint8_frames(frames)
    fill = tuple(int(m * 255) for m in mean)
    resized = _resize(arrays, size, aspect, fill, num_threads)
    rescale = np.array([f.max() > 1 for f in arrays]) if dark_frame_quirk else True
    return normalize_frames(resized, mean, std, rescale)
