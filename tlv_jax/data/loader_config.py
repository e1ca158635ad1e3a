"""The training loader's settings: its sources, sampling, lengths and batching, checked before anything is read.

Its own module so that the TFDS preparer can check a prepared dataset against the loader without importing it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional


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
    min_samples_for_bad_check: int = 500  # samples seen before max_bad_fraction applies
    # Sequence packing (tlv_jax.data.packing): rows of max(length_buckets) tokens holding several samples, each with
    # one of `videos_per_row` video slots (0: as many as the shortest video could need); `batch_size` counts rows.
    packing: bool = False
    videos_per_row: int = 0
    packing_bins: int = 16  # rows packed at a time (first fit): more fill rows better and read further ahead
    video_tokens: tuple[int, ...] = ()  # the model's video tokens for 1, 2, ... frames (empty: num_queries always)

    @property
    def frames_per_sample(self) -> int:
        return self.num_frames if self.num_frames > 0 else int(self.max_frames or 0)

    @property
    def annotation_sources(self) -> tuple[tuple[str, str], ...]:
        """(annotation file, the video folder its paths are relative to) for each file."""
        dirs = self.video_dirs * len(self.annotation_files) if len(self.video_dirs) == 1 else self.video_dirs
        return tuple(zip(self.annotation_files, dirs))

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
