"""A TFDS (ArrayRecord) dataset of pre-sampled frames and tokenised conversations, for pod-scale training.

Decoding long videos is the slow part of the loader; `python -m tlv_jax.data.prepare` does it once. Each example holds
the sampled frames already resized to the tower's size (PIL bicubic, exactly what the loader would compute) and
stored as PNG (lossless: batches are bit-identical to the annotation path) or JPEG (smaller), plus the token ids and
labels of the template. No TensorFlow is needed: frames are bytes, text is int32 arrays, and
`tfds.builder_from_directory(...).as_data_source('train')` is a random-access source for Grain. Settings that change
the content (template, frames, size, tokenizer ids) are stored in the dataset's metadata and checked when it is read.
TFDS shuffles at write time: the i-th example is not the i-th annotation.

Each annotation file and setting is its own TFDS config (`config_name`), so one --out holds the datasets of a mix.
The examples come from `prepared_example` in a process pool or, with `beam=True`, in an Apache Beam pipeline
(`beam_prepare`) that TFDS writes with its own Beam writer; both give the same records and bad-sample report.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import io
import os
import queue
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tqdm import tqdm

from tlv_jax.convert.atomic import atomic_directory
from tlv_jax.data.bad_samples import BadSampleCounter
from tlv_jax.data.errors import DataError
from tlv_jax.data.loader_config import TrainLoaderConfig
from tlv_jax.data.prepared_example import ExampleMaker, PrepareConfig
from tlv_jax.data.records import TOKENIZER_FILES, load_annotations, load_tokenizer
from tlv_jax.data.supervised_maker import SupervisedMaker
from tlv_jax.paths import is_url

_CHECKED = ("template", "num_frames", "image_size")  # metadata that must match the loader (+ max_frames at 1 fps)


def decode_frames(encoded: Any) -> np.ndarray:
    """Stored frames (PNG or JPEG bytes) -> uint8 (F, H, W, 3)."""
    return np.stack([np.asarray(Image.open(io.BytesIO(bytes(b))).convert("RGB")) for b in encoded])


def config_name(config: PrepareConfig) -> str:
    """The TFDS config the settings write: `<annotation file stem>.<frames>.s<size>.<format>.<template>.<hash>`,
    e.g. `llava_video_178k.f16.s384.png.qwen2_base.3fa2c1d9`. The hash covers the annotation file's bytes, every
    setting that changes the content and the tokenizer's files, so another annotation file or setting gets its own
    dataset beside the others under the same --out, and the same ones are found again."""
    digest = hashlib.sha256()
    try:
        digest.update(epath.Path(config.annotation_file).read_bytes())
    except OSError as e:
        raise DataError(f"annotation file {config.annotation_file}: cannot be read ({e.strerror or e})") from None
    try:
        tokenizer_files = sorted(p for p in epath.Path(config.tokenizer_dir).iterdir()
                                 if TOKENIZER_FILES.fullmatch(p.name))
        for path in tokenizer_files:
            digest.update(path.name.encode() + path.read_bytes())
    except OSError as e:
        raise DataError(f"tokenizer folder {config.tokenizer_dir}: cannot be read ({e.strerror or e})") from None
    frames = f"f{config.num_frames}" if config.num_frames > 0 else f"fps1max{config.max_frames}"
    quality = f"q{config.jpeg_quality}" if config.frame_format == "jpeg" else ""
    settings = f"{frames}.s{config.image_size}.{config.frame_format}{quality}.{config.template}"
    digest.update(settings.encode())
    stem = re.sub(r"[^\w-]+", "_", epath.Path(config.annotation_file).stem)
    return f"{stem}.{settings}.{digest.hexdigest()[:8]}"


def _made_in_order(records: list, config: PrepareConfig,
                   factory: Callable[[PrepareConfig], ExampleMaker] = ExampleMaker) -> Iterator[dict]:
    """The examples of `records` in order, made by `config.workers` supervised child processes (a video that kills
    or hangs one costs only its entry), with at most two entries per worker in flight (bounded memory)."""
    makers: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(config.workers):
        makers.put(SupervisedMaker(config, factory))

    def make(item: tuple[int, Any]) -> dict:
        maker = makers.get()
        try:
            return maker(*item)
        finally:
            makers.put(maker)

    threads = concurrent.futures.ThreadPoolExecutor(config.workers)
    pending: collections.deque = collections.deque()
    try:
        for item in enumerate(records):
            pending.append(threads.submit(make, item))
            if len(pending) >= 2 * config.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # also when the consumer stops early (too many bad samples)
        threads.shutdown(cancel_futures=True)
        while not makers.empty():
            makers.get().close()


class TlvVideoQa(tfds.core.GeneratorBasedBuilder):
    """LLaVA-Video-style video QA, pre-sampled and tokenised (see the module docstring). `beam=True` makes the
    examples in an Apache Beam pipeline (`beam_prepare`) instead of a process pool."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Frames resized to image_size (PNG/JPEG), int32 input_ids/labels with -200."}

    def __init__(self, *, prepare: PrepareConfig, beam: bool = False, **kwargs: Any):
        self._prepare = prepare
        self._beam = beam
        self.bad_samples = BadSampleCounter(prepare.max_bad_fraction, prepare.min_samples_for_bad_check)
        config = tfds.core.BuilderConfig(name=config_name(prepare), description=f"{prepare}")
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self._prepare
        tokenizer = load_tokenizer(cfg.tokenizer_dir)
        annotation_file = cfg.annotation_file if is_url(cfg.annotation_file) else os.path.abspath(cfg.annotation_file)
        metadata = tfds.core.MetadataDict(
            template=cfg.template, num_frames=cfg.num_frames, max_frames=cfg.max_frames, image_size=cfg.image_size,
            frame_format=cfg.frame_format, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            vocab_size=len(tokenizer), annotation_file=annotation_file)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "video": tfds.features.Text(),
                "input_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "frames": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            }),
            metadata=metadata,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        if self._beam:
            from tlv_jax.data.beam_prepare import PrepareExamples

            return {"train": PrepareExamples(self._prepare, os.fspath(self._first_bad_path))}
        return {"train": self._generate_examples()}

    @property
    def _first_bad_path(self) -> epath.Path:
        """Where the Beam pipeline leaves the first bad sample of each reason (read and removed at its end)."""
        return epath.Path(self.data_dir) / "first_bad_samples.json"

    def _generate_examples(self) -> Iterator[tuple[int, dict]]:
        cfg = self._prepare
        records = load_annotations(cfg.annotation_file)
        bar = tqdm(total=len(records), desc=f"prepare {Path(cfg.annotation_file).name}", unit="video")
        for index, example in enumerate(self._examples(records)):
            bar.update(1)
            if "bad" in example:
                self.bad_samples.record(*example["bad"])
            else:
                self.bad_samples.add_good()
                yield index, example
            bar.set_postfix(skipped=self.bad_samples.bad, refresh=False)
        bar.close()
        self.info.metadata["bad_samples"] = self.bad_samples.get_state()

    def _examples(self, records: list) -> Iterator[dict]:
        cfg = self._prepare
        if cfg.workers > 0:
            yield from _made_in_order(records, cfg)
        else:
            maker = ExampleMaker(cfg)
            yield from (maker(index, record) for index, record in enumerate(records))

    def _process_pipeline_result(self, pipeline_result: Any) -> None:
        """After the Beam pipeline: its bad-sample totals, reported (and checked) as the pool path does."""
        from tlv_jax.data.beam_prepare import bad_sample_counter

        self.bad_samples = bad_sample_counter(pipeline_result, os.fspath(self._first_bad_path), self._prepare)
        self.info.metadata["bad_samples"] = self.bad_samples.get_state()


def prepare(config: PrepareConfig, out_dir: str, force: bool = False,
            beam_options: Any = None) -> tuple[epath.Path, BadSampleCounter]:
    """Writes the dataset of `config` into `out_dir` (a TFDS data_dir that may already hold others: see
    `config_name`) and returns its directory (the one to give the loader) and the bad-sample totals. With
    `beam_options` (Beam `PipelineOptions`) the examples are made by an Apache Beam pipeline.

    Locally the dataset directory is built in a temporary sibling renamed into place at the end
    (`convert.atomic`): a killed run leaves nothing the loader could mistake for a finished dataset (TFDS's own
    half-built directory holds a dataset_info.json too) and the next run removes its leftover. In a bucket (gs://...,
    no renames) TFDS's own incomplete-directory protocol does that job. An existing dataset of the same config is
    replaced only with `force`."""
    target = epath.Path(out_dir) / TlvVideoQa.name / config_name(config) / str(TlvVideoQa.VERSION)
    if is_url(out_dir):
        if target.exists() and not force:
            raise FileExistsError(f"{target}: already exists (pass --force to replace it)")
        builder = _build(config, out_dir, beam_options, tfds.download.GenerateMode.FORCE_REDOWNLOAD)
        return epath.Path(builder.data_dir), builder.bad_samples
    with atomic_directory(target, force=force) as tmp:
        builder = _build(config, str(tmp / "build"), beam_options)
        for path in Path(builder.data_dir).iterdir():
            if path.name != "downloads":  # (TFDS's empty download folder: this builder downloads nothing)
                path.rename(tmp / path.name)  # the version directory's files become the target's
        shutil.rmtree(tmp / "build")
    return target, builder.bad_samples


def _build(config: PrepareConfig, data_dir: str, beam_options: Any,
           mode: Optional[Any] = None) -> TlvVideoQa:
    builder = TlvVideoQa(prepare=config, beam=beam_options is not None, data_dir=data_dir, file_format="array_record")
    download = tfds.download.DownloadConfig(beam_options=beam_options, **({"download_mode": mode} if mode else {}))
    builder.download_and_prepare(download_config=download)
    return builder


def _is_leftover(path: epath.Path) -> bool:
    """A killed writer's directory (ours `.x.tmp-*`, TFDS's `incomplete.*`): never found by a search."""
    return path.name.startswith(".") or "incomplete." in path.name


def resolve_prepared_dir(path: str) -> epath.Path:
    """The dataset directory (holding dataset_info.json) given it or a folder up to three levels above it (prepare's
    --out: <out>/tlv_video_qa/<config>/<version>), local or in a bucket. Leftovers of killed writers are skipped."""
    root = epath.Path(path)
    if (root / "dataset_info.json").exists():
        return root
    found: list[epath.Path] = []
    level = [root]
    for _ in range(3):
        level = sorted(c for p in level if p.is_dir() for c in p.iterdir() if not _is_leftover(c))
        found = [p for p in level if (p / "dataset_info.json").exists()]
        if found:
            break
    if len(found) != 1:
        names = ", ".join(str(p) for p in found) or "none"
        raise ValueError(f"{path}: expected one prepared dataset (dataset_info.json) below it, found {len(found)} "
                         f"({names}); give the directory of the one to read")
    return found[0]


def open_prepared(path: str, config: TrainLoaderConfig, tokenizer: Any) -> Any:
    """The random-access 'train' source of a prepared dataset, after checking it matches the loader's settings."""
    directory = resolve_prepared_dir(path)
    builder = tfds.builder_from_directory(directory)
    meta = builder.info.metadata or {}
    expected = {name: getattr(config, name) for name in _CHECKED + (("max_frames",) if config.num_frames == -1 else ())}
    expected.update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, vocab_size=len(tokenizer))
    wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if wrong:
        details = ", ".join(f"{k}: prepared {a!r} vs loader {b!r}" for k, (a, b) in wrong.items())
        raise ValueError(f"{directory} was prepared with other settings ({details}); run prepare again")
    return builder.as_data_source(split="train")
