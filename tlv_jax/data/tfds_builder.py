"""A TFDS (ArrayRecord) dataset of pre-sampled frames and tokenised conversations, for pod-scale training.

Decoding long videos is the slow part of the loader; `python -m tlv_jax.data.prepare` does it once. Each example holds
the sampled frames already resized to the tower's size (PIL bicubic, exactly what the loader would compute) and
stored as PNG (lossless: batches are bit-identical to the annotation path) or JPEG (smaller), plus the token ids and
labels of the template. No TensorFlow is needed: frames are bytes, text is int32 arrays, and
`tfds.builder_from_directory(...).as_data_source('train')` is a random-access source for Grain. Settings that change
the content (template, frames, size, tokenizer ids) are stored in the dataset's metadata and checked when it is read.
TFDS shuffles at write time: the i-th example is not the i-th annotation.
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tqdm import tqdm

from tlv_jax.convert.atomic import atomic_directory
from tlv_jax.data.bad_samples import BadSample, BadSampleCounter
from tlv_jax.data.loader_config import TrainLoaderConfig
from tlv_jax.data.preprocess import resize_frames
from tlv_jax.data.records import encode_record, load_annotations, load_tokenizer, read_record_frames, sample_id

FRAME_FORMATS = ("png", "jpeg")
_CHECKED = ("template", "num_frames", "image_size")  # metadata that must match the loader (+ max_frames at 1 fps)


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """What `prepare` reads and how it samples, resizes and stores the frames."""

    annotation_file: str
    video_dir: str
    tokenizer_dir: str
    template: str = "qwen2_base"
    num_frames: int = 16
    max_frames: Optional[int] = None
    image_size: int = 384
    frame_format: str = "png"
    jpeg_quality: int = 95
    workers: int = 0  # decoding processes (0: in this process)
    max_bad_fraction: float = 0.01
    min_samples_for_bad_check: int = 500

    def __post_init__(self):
        if self.frame_format not in FRAME_FORMATS:
            raise ValueError(f"frame_format must be one of {FRAME_FORMATS}, got {self.frame_format!r}")
        if self.num_frames == -1 and not self.max_frames:
            raise ValueError("1 fps sampling (num_frames=-1) needs max_frames: batches have a fixed frame axis")


def encode_frames(frames: np.ndarray, frame_format: str, jpeg_quality: int = 95) -> list[bytes]:
    """uint8 (F, H, W, 3) -> one PNG or JPEG file per frame."""
    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format=frame_format.upper(), **(
            {"quality": jpeg_quality, "subsampling": 0} if frame_format == "jpeg" else {"compress_level": 1}))
        out.append(buffer.getvalue())
    return out


def decode_frames(encoded: Any) -> np.ndarray:
    """Stored frames (PNG or JPEG bytes) -> uint8 (F, H, W, 3)."""
    return np.stack([np.asarray(Image.open(io.BytesIO(bytes(b))).convert("RGB")) for b in encoded])


_worker_state: dict[str, Any] = {}  # per prepare worker process: its config and tokenizer


def _init_worker(config: PrepareConfig) -> None:
    _worker_state["config"] = config
    _worker_state["tokenizer"] = load_tokenizer(config.tokenizer_dir)


def _prepare_one(item: tuple[int, Any]) -> dict:
    """One annotation entry -> an example, or {'bad': (reason, id, detail)}."""
    index, record = item
    cfg, sid = _worker_state["config"], sample_id(record, index)
    try:
        encoded = encode_record(record, _worker_state["tokenizer"], cfg.template)
        frames = read_record_frames(record, cfg.video_dir, cfg.num_frames, cfg.max_frames)
    except BadSample as e:
        return {"bad": (e.reason, sid, e.detail)}
    return {
        "id": sid,
        "video": record["video"],
        "input_ids": encoded.input_ids.astype(np.int32),
        "labels": encoded.labels.astype(np.int32),
        "frames": encode_frames(resize_frames(frames, cfg.image_size), cfg.frame_format, cfg.jpeg_quality),
    }


class TlvVideoQa(tfds.core.GeneratorBasedBuilder):
    """LLaVA-Video-style video QA, pre-sampled and tokenised (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Frames resized to image_size (PNG/JPEG), int32 input_ids/labels with -200."}

    def __init__(self, *, prepare: PrepareConfig, **kwargs: Any):
        self._prepare = prepare
        self.bad_samples = BadSampleCounter(prepare.max_bad_fraction, prepare.min_samples_for_bad_check)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self._prepare
        tokenizer = load_tokenizer(cfg.tokenizer_dir)
        metadata = tfds.core.MetadataDict(
            template=cfg.template, num_frames=cfg.num_frames, max_frames=cfg.max_frames, image_size=cfg.image_size,
            frame_format=cfg.frame_format, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            vocab_size=len(tokenizer), annotation_file=os.path.abspath(cfg.annotation_file))
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

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        return {"train": self._generate_examples()}

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
        if cfg.workers <= 0:
            _init_worker(cfg)
            yield from map(_prepare_one, enumerate(records))
            return
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg,)) as pool:
            yield from pool.imap(_prepare_one, enumerate(records), chunksize=4)


def prepare(config: PrepareConfig, out_dir: str, force: bool = False) -> tuple[Path, BadSampleCounter]:
    """Writes the dataset under `out_dir` and returns its directory (the one to give the loader) and the totals.

    TFDS writes into a temporary sibling of `out_dir` renamed to it at the end (`convert.atomic`): a killed run
    leaves no `out_dir` (TFDS's own half-built directory in it, dataset_info.json and all, would pass the loader's
    check) and the next run removes its leftover. An existing `out_dir` is replaced only with `force`, or when
    empty."""
    out = Path(out_dir)
    with atomic_directory(out, force=force or (out.is_dir() and not any(out.iterdir()))) as tmp:
        builder = TlvVideoQa(prepare=config, data_dir=str(tmp), file_format="array_record")
        builder.download_and_prepare()
        directory = out / Path(builder.data_dir).relative_to(tmp)
    return directory, builder.bad_samples


def resolve_prepared_dir(path: str) -> Path:
    """The dataset directory (holding dataset_info.json) given it or any folder above it (e.g. prepare's --out)."""
    root = Path(path)
    if (root / "dataset_info.json").is_file():
        return root
    found = sorted(p.parent for p in root.glob("**/dataset_info.json"))
    if len(found) != 1:
        raise ValueError(f"{path}: expected one prepared dataset (dataset_info.json) below it, found {len(found)}")
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
