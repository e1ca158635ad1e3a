"""Grain training loader: annotated videos (or prepared TFDS datasets) -> padded, bucketed batches of numpy arrays.

Pipeline: per source `MapDataset` -> seeded shuffle (reshuffled every epoch) -> repeat -> weighted mix -> shard by
JAX process -> per-sample decode/preprocess/tokenise (a `Map` that never raises for bad input: it returns a marker
with the reason) -> batching that skips and reports the markers and pads to a few fixed lengths -> `mp_prefetch` worker
processes -> bad-sample accounting in the main process (part of the iterator state).

Batch (dict of numpy arrays), B = batch size, L = one of `text_lengths(config, num_queries)`, F = frames per sample:
  input_ids (B, L) int32 with one −200 at the video, labels (B, L) int32 (−100 = ignored), attention_mask (B, L) bool,
  pixel_values (B, F, S, S, 3) float32, frames_mask (B, F) bool, sample_index (B,) int64 (position of the sample in
  the concatenation of all sources, stable across epochs).
The model inserts `num_queries` video tokens at the −200, so a batch of width L becomes L − 1 + num_queries = one of
`config.length_buckets` long: the train step compiles once per bucket.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from typing import Any, Optional

import grain
import numpy as np
from transformers import AutoTokenizer, PretrainedConfig

from tlv_jax.data.bad_samples import (
    MALFORMED,
    MISMATCH,
    MISSING_VIDEO,
    NO_IMAGE,
    TOO_LONG,
    UNDECODABLE_VIDEO,
    BadSample,
    BadSampleCounter,
)
from tlv_jax.data.frames import VideoDecodeError, read_frames
from tlv_jax.data.preprocess import normalize_frames, resize_frames
from tlv_jax.data.templates import IMAGE_TOKEN_INDEX, EncodedText, MalformedConversation, collate, encode_conversation

log = logging.getLogger(__name__)
_TOKENIZER_LOCK = threading.Lock()  # the read threads of a worker share one lazily loaded tokenizer


@dataclasses.dataclass(frozen=True)
class TrainLoaderConfig:
    """Everything the training loader needs. Give either `annotation_files` (+ `video_dirs`: one folder for all files
    or one per file) or `prepared_dirs` (written by `python -m tlv_jax.data.prepare`); `weights` mixes the sources."""

    annotation_files: tuple[str, ...] = ()
    video_dirs: tuple[str, ...] = ()
    prepared_dirs: tuple[str, ...] = ()
    weights: Optional[tuple[float, ...]] = None
    tokenizer_dir: str = ""
    template: str = "qwen2_base"
    num_frames: int = 16  # uniform frames per video; -1 = 1 fps capped at max_frames (then padded + frames_mask)
    max_frames: Optional[int] = None
    image_size: int = 384
    length_buckets: tuple[int, ...] = (1024, 2048, 3072)  # sequence lengths after the video tokens are inserted
    batch_size: int = 8  # per JAX process
    seed: int = 42
    num_epochs: Optional[int] = None  # None: repeat forever (training runs by steps)
    num_workers: int = 0  # mp_prefetch worker processes (0: decode in the main process)
    worker_buffer_size: int = 1  # batches buffered per worker
    read_threads: int = 2  # threads per process, each processing one sample at a time
    decode_threads: int = 1  # decoder threads per video (0: the decoder's choice)
    max_bad_fraction: float = 0.01
    min_samples_for_bad_check: int = 500

    @property
    def frames_per_sample(self) -> int:
        return self.num_frames if self.num_frames > 0 else int(self.max_frames or 0)

    def validate(self, num_queries: int) -> None:
        if bool(self.annotation_files) == bool(self.prepared_dirs):
            raise ValueError("give either annotation_files (with video_dirs) or prepared_dirs, not both or neither")
        if self.annotation_files and len(self.video_dirs) not in (1, len(self.annotation_files)):
            raise ValueError(f"video_dirs needs 1 folder or one per annotation file, got {len(self.video_dirs)}")
        sources = self.annotation_files or self.prepared_dirs
        if self.weights is not None and (len(self.weights) != len(sources) or min(self.weights) <= 0):
            raise ValueError(f"weights {self.weights} must be positive, one per source ({len(sources)})")
        if self.num_frames == 0 or self.num_frames < -1:
            raise ValueError(f"num_frames must be > 0 or -1 (1 fps), got {self.num_frames}")
        if self.num_frames == -1 and not self.max_frames:
            raise ValueError("1 fps sampling (num_frames=-1) needs max_frames: batches have a fixed frame axis")
        if not self.length_buckets or min(self.length_buckets) <= num_queries:
            raise ValueError(f"length_buckets {self.length_buckets} must be longer than num_queries={num_queries}")
        if not self.tokenizer_dir:
            raise ValueError("tokenizer_dir is required (pad/eos ids, and tokenisation of annotation files)")


def text_lengths(config: TrainLoaderConfig, num_queries: int) -> tuple[int, ...]:
    """Widths of the (B, L) text arrays: L ids holding one −200 are L − 1 + num_queries long in the model."""
    return tuple(sorted(b - num_queries + 1 for b in config.length_buckets))


def load_tokenizer(tokenizer_dir: str) -> Any:
    """The Hugging Face tokenizer of the LLM (transformers 5 gives the same ids for the original's use_fast=False).
    An empty config stops transformers from reading the directory's config.json, whose `tinyllava` model type it
    does not know (it warns on every load); the class comes from tokenizer_config.json."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=False, config=PretrainedConfig())
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer in {tokenizer_dir} has no pad token; the original set pad = eos for Qwen/phi")
    return tokenizer


def load_annotations(path: str) -> list[Any]:
    """A LLaVA-Video-178K style JSON list of {'id', 'video', 'conversations'} (entries are checked per sample)."""
    with open(path) as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(records).__name__}")
    return records


def sample_id(record: Any, index: int) -> str:
    return str(record.get("id", f"#{index}")) if isinstance(record, dict) else f"#{index}"


def encode_record(record: Any, tokenizer: Any, template: str) -> EncodedText:
    """Tokenised text of one annotation entry; raises `BadSample` for no/several '<image>', bad structure, mismatch."""
    if not isinstance(record, dict) or "conversations" not in record:
        raise BadSample(MALFORMED, "not a mapping with 'conversations'")
    try:
        encoded = encode_conversation(record["conversations"], tokenizer, template)
    except MalformedConversation as e:
        raise BadSample(MALFORMED, str(e)) from None
    placeholders = int(np.sum(encoded.input_ids == IMAGE_TOKEN_INDEX))
    if placeholders == 0:
        raise BadSample(NO_IMAGE, "no '<image>' in the conversation")
    if placeholders > 1:
        raise BadSample(MALFORMED, f"{placeholders} '<image>' placeholders for one video")
    if encoded.mismatch:
        raise BadSample(MISMATCH, f"label rounds do not add up to the tokenised prompt ...{encoded.prompt[-160:]!r}")
    return encoded


def read_record_frames(record: dict, video_dir: str, num_frames: int, max_frames: Optional[int],
                       decode_threads: int = 0) -> np.ndarray:
    """Sampled uint8 (F, H, W, 3) frames of the entry's video; raises `BadSample` for missing or undecodable files."""
    if not isinstance(record.get("video"), str):
        raise BadSample(MISSING_VIDEO, "no 'video' path in the entry")
    path = os.path.join(video_dir, record["video"])
    if not os.path.isfile(path):
        raise BadSample(MISSING_VIDEO, f"{path} does not exist")
    try:
        return read_frames(path, num_frames=num_frames, max_frames=max_frames, num_threads=decode_threads)
    except VideoDecodeError as e:
        raise BadSample(UNDECODABLE_VIDEO, str(e)) from None


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
    """Takes `batch_size` good samples (collecting the bad markers on the way) and pads them to the smallest width
    that fits. At the end of a finite stream, the leftover markers (and the count of dropped leftover samples) come
    out as a final element without arrays so that they are still counted."""

    def __init__(self, parent: grain.DatasetIterator, batch_size: int, widths: tuple[int, ...], pad_id: int, eos_id):
        super().__init__(parent)
        self._batch_size, self._widths, self._pad_id, self._eos_id = batch_size, widths, pad_id, eos_id

    def __next__(self) -> dict:
        samples: list[dict] = []
        bad: list[tuple] = []
        while len(samples) < self._batch_size:
            try:
                element = next(self._parent)
            except StopIteration:
                if samples or bad:
                    return {"bad": bad, "dropped_remainder": len(samples)}
                raise
            if "bad" in element:
                bad.append(element["bad"])
            else:
                samples.append(element)
        longest = max(len(s["input_ids"]) for s in samples)
        width = next(w for w in self._widths if w >= longest)
        text = collate([s["input_ids"] for s in samples], [s["labels"] for s in samples], self._pad_id, self._eos_id,
                       pad_to=width)
        return {
            **text,
            "pixel_values": np.stack([s["pixel_values"] for s in samples]),
            "frames_mask": np.stack([s["frames_mask"] for s in samples]),
            "sample_index": np.array([s["sample_index"] for s in samples], np.int64),
            "bad": bad,
        }

    def get_state(self) -> dict:
        return self._parent.get_state()  # nothing is read ahead: the parent's position is ours

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


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
            batch = next(self._parent)
            for reason, sid, detail in batch.pop("bad"):
                self.bad_samples.record(reason, sid, detail)
            if "input_ids" in batch:
                self.bad_samples.add_good(len(batch["sample_index"]))
                return batch
            if batch["dropped_remainder"]:  # end of a finite stream in one worker
                log.info("end of data: %d samples short of a full batch were not used", batch["dropped_remainder"])

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
        dirs = config.video_dirs * len(config.annotation_files) if len(config.video_dirs) == 1 else config.video_dirs
        entries = [(p, load_annotations(p), d) for p, d in zip(config.annotation_files, dirs)]
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
    read = grain.ReadOptions(num_threads=config.read_threads,
                             prefetch_buffer_size=max(config.batch_size, config.read_threads))  # about one batch ahead
    ids = ds.to_iter_dataset(read)
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
