"""Grain training loader: annotated videos (or prepared TFDS datasets) -> padded, bucketed batches of numpy arrays.

Pipeline: per source `MapDataset` -> seeded shuffle (reshuffled every epoch) -> repeat -> weighted mix -> shard by
JAX process -> per-sample decode/preprocess/tokenise (a `Map` that never raises for bad input: it returns a marker
with the reason) -> batching that pads to a few fixed lengths and passes each marker on at once, as its own element
-> `mp_prefetch` worker processes -> bad-sample accounting in the main process (part of the iterator state).

Markers do not wait for a batch to fill: with nothing but bad samples no batch ever would, and the run would spin
silently. Each one reaches the counter as soon as the worker meets it, so the threshold, the per-reason counts and the
warnings see every skip at once, and an all-bad stream stops after `min_samples_for_bad_check` samples.

Batch (dict of numpy arrays), B = batch size, L = one of `text_lengths(config, num_queries)`, F = frames per sample:
  input_ids (B, L) int32 with one −200 at the video, labels (B, L) int32 (−100 = ignored), attention_mask (B, L) bool,
  pixel_values (B, F, S, S, 3) float32, frames_mask (B, F) bool, sample_index (B,) int64 (position of the sample in
  the concatenation of all sources, stable across epochs).
The model inserts `num_queries` video tokens at the −200, so a batch of width L becomes L − 1 + num_queries = one of
`config.length_buckets` long: the train step compiles once per bucket.

With `config.packing` the batching packs instead (`tlv_jax.data.packing`, `PACKED_BATCH_NDIMS`): B rows of
max(length_buckets) tokens, several samples each, one shape for the whole run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Any, Optional

import grain
import numpy as np

from tlv_jax.data.bad_samples import TOO_LONG, BadSample, BadSampleCounter
from tlv_jax.data.loader_config import TrainLoaderConfig
from tlv_jax.data.packing import ExpandVideo, pack, videos_per_row
from tlv_jax.data.preprocess import normalize_frames, resize_frames
from tlv_jax.data.records import encode_record, load_annotations, load_tokenizer, read_record_frames, sample_id
from tlv_jax.data.templates import collate

log = logging.getLogger(__name__)
_TOKENIZER_LOCK = threading.Lock()  # the read threads of a worker share one lazily loaded tokenizer


def text_lengths(config: TrainLoaderConfig, num_queries: int) -> tuple[int, ...]:
    """Widths of the (B, L) text arrays: L ids holding one −200 are L − 1 + num_queries long in the model."""
    return tuple(sorted(b - num_queries + 1 for b in config.length_buckets))


class ProcessSample(grain.transforms.Map):
    """Source element -> processed sample, or {'bad': (reason, id, detail)}. Runs in the worker processes; loads the
    tokenizer lazily there. Text is checked (and the length bound) before any video is decoded."""

    def __init__(self, config: TrainLoaderConfig, num_queries: int):
        self._config = config
        self._max_ids = max(config.length_buckets) - num_queries + 1
        self._tokenizer = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}

    def map(self, element: dict) -> dict:
        cfg, index = self._config, int(element["sample_index"])
        sid = element["id"]
        try:
            if "frames" in element:  # a prepared (TFDS) example
                input_ids, labels = np.asarray(element["input_ids"]), np.asarray(element["labels"])
                self._check_length(input_ids)
                from tlv_jax.data.tfds_builder import decode_frames  # (TFDS is imported only for prepared sources)

                frames = decode_frames(element["frames"])  # stored already resized
            else:
                encoded = encode_record(element["record"], self._get_tokenizer(), cfg.template)
                input_ids, labels = encoded.input_ids, encoded.labels
                self._check_length(input_ids)
                frames = read_record_frames(element["record"], element["video_dir"], cfg.num_frames, cfg.max_frames,
                                            cfg.decode_threads)
                frames = resize_frames(frames, cfg.image_size)
        except BadSample as e:
            return {"bad": (e.reason, sid, e.detail)}
        return {
            "input_ids": input_ids.astype(np.int32),
            "labels": labels.astype(np.int32),
            **self._pixels(frames, sid),
            "sample_index": np.int64(index),
        }

    def _get_tokenizer(self) -> Any:
        with _TOKENIZER_LOCK:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer(self._config.tokenizer_dir)
        return self._tokenizer

    def _check_length(self, input_ids: np.ndarray) -> None:
        if len(input_ids) > self._max_ids:
            raise BadSample(TOO_LONG, f"{len(input_ids)} ids > {self._max_ids} (largest length bucket after the video)")

    def _pixels(self, frames: np.ndarray, sid: str) -> dict[str, np.ndarray]:
        """Resized uint8 frames -> SigLIP-normalised float32, zero-padded to the fixed frame axis, with its mask."""
        cfg = self._config
        total = cfg.frames_per_sample
        if not 0 < len(frames) <= total:
            raise ValueError(f"sample {sid}: {len(frames)} frames, expected 1..{total}")  # a decoder bug, not bad data
        pixels = np.zeros((total, cfg.image_size, cfg.image_size, 3), np.float32)
        pixels[:len(frames)] = normalize_frames(frames)
        return {"pixel_values": pixels, "frames_mask": np.arange(total) < len(frames)}


class _BucketBatchIterator(grain.DatasetIterator):
    """Takes `batch_size` good samples and pads them to the smallest width that fits. A bad marker leaves at once as
    {'bad': (reason, id, detail)}, even with a batch half filled; at the end of a finite stream the count of leftover
    samples comes out as {'dropped_remainder': n}.

    The half-filled batch is the only thing read ahead, so the state is the parent's state before the batch's first
    sample plus how many markers were already passed on since: a restore re-reads the batch and swallows those."""

    def __init__(self, parent: grain.DatasetIterator, batch_size: int, widths: tuple[int, ...], pad_id: int, eos_id):
        super().__init__(parent)
        self._batch_size, self._widths, self._pad_id, self._eos_id = batch_size, widths, pad_id, eos_id
        self._pending: list[dict] = []
        self._start: Any = None  # the parent's state before the first pending sample
        self._passed = 0  # markers passed on since then
        self._swallow = 0  # markers to re-read without passing on (after a restore)

    def __next__(self) -> dict:
        while True:
            if not self._pending:
                self._start, self._passed = self._parent.get_state(), 0
            try:
                element = next(self._parent)
            except StopIteration:
                if self._pending:
                    dropped, self._pending = len(self._pending), []
                    return {"dropped_remainder": dropped}
                raise
            if "bad" in element:
                self._passed += 1
                if self._swallow:
                    self._swallow -= 1
                    continue
                return element
            self._pending.append(element)
            if len(self._pending) == self._batch_size:
                samples, self._pending = self._pending, []
                return self._collate(samples)

    def _collate(self, samples: list[dict]) -> dict:
        if "segment_ids" in samples[0]:  # packed rows (tlv_jax.data.packing): all one shape already
            return {k: np.stack([s[k] for s in samples]) for k in samples[0]}
        longest = max(len(s["input_ids"]) for s in samples)
        width = next(w for w in self._widths if w >= longest)
        text = collate([s["input_ids"] for s in samples], [s["labels"] for s in samples], self._pad_id, self._eos_id,
                       pad_to=width)
        return {
            **text,
            "pixel_values": np.stack([s["pixel_values"] for s in samples]),
            "frames_mask": np.stack([s["frames_mask"] for s in samples]),
            "sample_index": np.array([s["sample_index"] for s in samples], np.int64),
        }

    def get_state(self) -> dict:
        if not self._pending:  # (markers still to swallow only right after a restore, before its batch is re-read)
            return {"parent": self._parent.get_state(), "passed": self._swallow}
        return {"parent": self._start, "passed": self._passed + self._swallow}

    def set_state(self, state: dict) -> None:
        if "passed" not in state:  # saved when markers travelled with the batches: the parent's state alone
            state = {"parent": state, "passed": 0}
        self._parent.set_state(state["parent"])
        self._pending, self._swallow = [], state["passed"]


class _BucketBatchDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, batch_size: int, widths: tuple[int, ...], pad_id: int, eos_id):
        super().__init__(parent)
        self._args = (batch_size, widths, pad_id, eos_id)

    def __iter__(self) -> _BucketBatchIterator:
        return _BucketBatchIterator(self._parent.__iter__(), *self._args)


class LoaderIterator(grain.DatasetIterator):
    """The iterator the training loop holds: batches of arrays, `bad_samples` with the running totals, and a state
    (`get_state`/`set_state`, JSON-able, usable with `grain.checkpoint`) that includes those totals."""

    def __init__(self, parent: grain.DatasetIterator, bad_samples: BadSampleCounter):
        super().__init__(parent)
        self.bad_samples = bad_samples

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            element = next(self._parent)
            if "bad" in element:
                self.bad_samples.record(*element["bad"])
            elif "dropped_remainder" in element:  # end of a finite stream in one worker
                log.info("end of data: %d samples short of a full batch were not used", element["dropped_remainder"])
            else:
                self.bad_samples.add_good(int(np.count_nonzero(element["sample_index"] >= 0)))  # packed: -1 = no sample
                return element

    def get_state(self) -> dict:
        return {"pipeline": self._parent.get_state(), "bad_samples": self.bad_samples.get_state()}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["pipeline"])
        self.bad_samples.set_state(state["bad_samples"])


class _LoaderDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, config: TrainLoaderConfig):
        super().__init__(parent)
        self._config = config

    def __iter__(self) -> LoaderIterator:
        counter = BadSampleCounter(self._config.max_bad_fraction, self._config.min_samples_for_bad_check)
        return LoaderIterator(self._parent.__iter__(), counter)


@dataclasses.dataclass(frozen=True)
class _Tag:
    """Wraps a source entry with what the per-sample transform needs (picklable for spawned workers). Sample ids are
    prefixed with the source's file or folder name, so equal ids in two sources stay apart in the logs."""

    offset: int
    source: str
    video_dir: Optional[str]  # None for a prepared source

    def __call__(self, index: int, entry: Any) -> dict:
        tagged = {"sample_index": self.offset + index}
        if self.video_dir is None:  # a prepared example: already a dict of arrays
            raw_id = entry["id"].decode() if isinstance(entry["id"], bytes) else str(entry["id"])
            return {**entry, **tagged, "id": f"{self.source}:{raw_id}"}
        sid = f"{self.source}:{sample_id(entry, index)}"
        return {**tagged, "record": entry, "video_dir": self.video_dir, "id": sid}


def _sources(config: TrainLoaderConfig, tokenizer: Any) -> list[grain.MapDataset]:
    if config.annotation_files:
        entries = [(p, load_annotations(p), d) for p, d in config.annotation_sources]
    else:
        from tlv_jax.data.tfds_builder import open_prepared

        entries = [(d, open_prepared(d, config, tokenizer), None) for d in config.prepared_dirs]
    datasets, offset = [], 0
    for i, (path, source, video_dir) in enumerate(entries):
        if len(source) == 0:
            raise ValueError(f"source {path} holds no samples")
        ds = grain.MapDataset.source(source).map_with_index(_Tag(offset, os.path.basename(path.rstrip("/")), video_dir))
        datasets.append(ds.shuffle(seed=config.seed + i).repeat(config.num_epochs))
        offset += len(source)
    return datasets


def make_train_dataset(
    config: TrainLoaderConfig,
    num_queries: int,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> grain.IterDataset:
    """The whole pipeline; `iter()` of it is a `LoaderIterator`. `num_queries` = video tokens the model inserts.
    process_index/count default to this JAX process's."""
    config.validate(num_queries)
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain reads absl flags when starting workers (environment.md trap)
        flags.FLAGS.mark_as_parsed()
    tokenizer = load_tokenizer(config.tokenizer_dir)
    sources = _sources(config, tokenizer)
    ds = sources[0] if len(sources) == 1 else grain.MapDataset.mix(sources, config.weights)
    ds = ds[process_index::process_count].map(ProcessSample(config, num_queries))
    if config.packing:
        ds = ds.map(ExpandVideo(num_queries, config.video_tokens))
    read = grain.ReadOptions(num_threads=config.read_threads,
                             prefetch_buffer_size=max(config.batch_size, config.read_threads))  # about one batch ahead
    ids = ds.to_iter_dataset(read)
    if config.packing:
        length = max(config.length_buckets)
        videos = videos_per_row(length, config.video_tokens or (num_queries,), config.videos_per_row)
        ids = pack(ids, length, videos, tokenizer.pad_token_id, config.packing_bins)
    batches = _BucketBatchDataset(ids, config.batch_size, text_lengths(config, num_queries), tokenizer.pad_token_id,
                                  tokenizer.eos_token_id)
    if config.num_workers > 0:
        options = grain.MultiprocessingOptions(num_workers=config.num_workers,
                                               per_worker_buffer_size=config.worker_buffer_size)
        batches = batches.mp_prefetch(options)
    return _LoaderDataset(batches, config)


def make_train_iterator(config: TrainLoaderConfig, num_queries: int, **kwargs: Any) -> LoaderIterator:
    """`iter(make_train_dataset(...))`; call `.close()` when done if it uses worker processes."""
    return iter(make_train_dataset(config, num_queries, **kwargs))
