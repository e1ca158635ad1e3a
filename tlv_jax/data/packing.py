"""Sequence packing for the training loader: several samples per row of `max_length` model tokens.

A finetune sample (512 video tokens + a short question and answer, ~600-700 tokens) padded to a 1024 bucket is a
third padding. Packed, a row of `length` tokens holds as many samples as fit, each with its own video:

1. `ExpandVideo` (per sample, in the read threads) replaces the one `<image>` placeholder (−200) by as many
   placeholders as the model inserts video tokens for this sample, so that the text is already as long as the model's
   sequence and packing by text length is packing by model length. Video arrays get a leading slot axis of 1.
2. Grain's `FirstFitPackIterDataset` packs: `input_ids`/`labels` into `length` cells, `frames_mask` and
   `sample_index` into `videos` cells (one per sample, so a row never holds more samples than it has video slots),
   `pixel_values` travel as a per-row list (a meta feature: Grain's buffers are preallocated per bin and cell, which
   for float32 frames would be bins x slots x 28 MB). Grain writes per-sample segment ids (1, 2, ...; 0 = padding)
   and positions restarting at 0 per sample. First-fit rather than `ConcatThenSplitIterDataset`: a supervised sample
   must not be cut in two (its video and its answer would land in different rows).
3. `_PackedRows` turns each row into the batch arrays of `PACKED_BATCH_NDIMS`, the videos stacked into `videos`
   zero slots (slot v belongs to segment v + 1; empty slots have no valid frame and no segment).

Bad-sample markers (`{'bad': ...}`) leave at once, as in the bucketed loader: the packer's input raises them past the
packer, which keeps its half-filled bins, and the outer iterator passes them on. Its state is the packer's plus the
markers passed since the packer's restore point; a restore re-reads those and swallows them.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import grain
import numpy as np

from tlv_jax.data.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX

# Every packed batch holds exactly these arrays (name -> rank), B rows of L tokens with V video slots of F frames.
PACKED_BATCH_NDIMS = {"input_ids": 2, "labels": 2, "segment_ids": 2, "positions": 2, "pixel_values": 6,
                      "frames_mask": 3}
_SEQUENCE = ("input_ids", "labels")
_PER_VIDEO = ("frames_mask", "sample_index")


def videos_per_row(length: int, video_tokens: Sequence[int], configured: int = 0) -> int:
    """The video slots of a row of `length` tokens: `configured` (`data.videos_per_row`) when set, else the most a
    row can need, every sample being its video (of one of the `video_tokens` sizes) plus at least one text token.
    The model encodes every slot, filled or not, so data whose samples are longer can set fewer (docs/packing.md)."""
    return configured or max(1, length // (min(video_tokens) + 1))


def real_tokens(batch: dict[str, np.ndarray]) -> int:
    """Non-padding model tokens of a packed batch."""
    return int(np.count_nonzero(batch["segment_ids"]))


class ExpandVideo(grain.transforms.Map):
    """A processed sample -> the form the packer takes (module docstring, step 1); markers pass unchanged.
    `video_tokens[n - 1]`: the model's video tokens for a video of n frames (empty: always `num_queries`)."""

    def __init__(self, num_queries: int, video_tokens: tuple[int, ...] = ()):
        self._num_queries, self._video_tokens = num_queries, video_tokens

    def map(self, element: dict) -> dict:
        if "bad" in element:
            return element
        ids, labels, frames_mask = element["input_ids"], element["labels"], element["frames_mask"]
        frames = int(frames_mask.sum())
        tokens = self._video_tokens[frames - 1] if self._video_tokens else self._num_queries
        at = int(np.flatnonzero(ids == IMAGE_TOKEN_INDEX)[0])  # exactly one: `encode_record` checked it
        expand = lambda x, fill: np.concatenate([x[:at], np.full(tokens, fill, x.dtype), x[at + 1:]])  # noqa: E731
        return {"input_ids": expand(ids, IMAGE_TOKEN_INDEX), "labels": expand(labels, IGNORE_INDEX),
                "pixel_values": element["pixel_values"], "frames_mask": frames_mask[None],
                "sample_index": np.asarray([element["sample_index"]], np.int64)}


class _MarkerRead(Exception):
    """Carries a bad-sample marker past the packer (which only knows how to pack)."""

    def __init__(self, element: dict):
        super().__init__("bad sample")
        self.element = element


class _RaiseMarkersIterator(grain.DatasetIterator):
    def __next__(self) -> dict:
        element = next(self._parent)
        if "bad" in element:
            raise _MarkerRead(element)
        return element

    def get_state(self) -> Any:
        return self._parent.get_state()

    def set_state(self, state: Any) -> None:
        self._parent.set_state(state)


class _RaiseMarkers(grain.IterDataset):
    def __iter__(self) -> _RaiseMarkersIterator:
        return _RaiseMarkersIterator(self._parent.__iter__())


class _PackedRowsIterator(grain.DatasetIterator):
    """Packed rows as batch arrays, with the markers raised by `_RaiseMarkers` passed on as elements."""

    def __init__(self, parent: grain.DatasetIterator, videos: int):
        super().__init__(parent)
        self._videos = videos
        self._passed = 0  # markers passed on since the packer's restore point
        self._swallow = 0  # markers to re-read without passing on (after a restore)

    def __next__(self) -> dict:
        while True:
            try:
                row = next(self._parent)
            except _MarkerRead as marker:
                self._passed += 1
                if self._swallow:
                    self._swallow -= 1
                    continue
                return marker.element
            if self._parent.get_state()["next_row"] == 0:  # last row of its bins: the restore point moved past
                self._passed = 0  # every element read so far (the next bins start with the one that did not fit)
            return self._arrays(row)

    def _arrays(self, row: dict) -> dict:
        videos = row["pixel_values"]  # the list of this row's samples' frames, in segment order
        pixels = np.zeros((self._videos, *videos[0].shape), videos[0].dtype)
        pixels[:len(videos)] = np.stack(list(videos))
        return {"input_ids": row["input_ids"], "labels": row["labels"], "segment_ids": row["input_ids_segment_ids"],
                "positions": row["input_ids_positions"], "pixel_values": pixels, "frames_mask": row["frames_mask"],
                "sample_index": row["sample_index"]}

    def get_state(self) -> dict:
        return {"packer": self._parent.get_state(), "passed": self._passed + self._swallow}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["packer"])
        self._passed, self._swallow = 0, state["passed"]


class _PackedRows(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, videos: int):
        super().__init__(parent)
        self._videos = videos

    def __iter__(self) -> _PackedRowsIterator:
        return _PackedRowsIterator(self._parent.__iter__(), self._videos)


def pack(samples: grain.IterDataset, length: int, videos: int, pad_id: int, bins: int,
         seed: Optional[int] = None) -> grain.IterDataset:
    """`ExpandVideo`d samples (and markers) -> packed rows (and markers), `bins` rows packed at a time (more bins
    fill rows a little better, read further ahead and hold those samples' frames meanwhile). `seed` shuffles the
    order the bins leave in (None: as packed)."""
    packer = grain.experimental.FirstFitPackIterDataset(
        _RaiseMarkers(samples),
        length_struct={**{k: length for k in _SEQUENCE}, **{k: videos for k in _PER_VIDEO}},
        padding_struct={"input_ids": pad_id, "labels": IGNORE_INDEX, "frames_mask": False, "sample_index": -1},
        meta_features=("pixel_values",), num_packing_bins=bins, seed=seed or 0, shuffle_bins=seed is not None)
    return _PackedRows(packer, videos)
