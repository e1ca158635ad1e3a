"""Start-up checks of a run's data, so that data which cannot work stops the run in one line before anything compiles.

A wrong folder or a broken annotation file would otherwise show up only as skipped samples, after the model is built.
Checked: every annotation file parses as a JSON list, every video folder exists, and the first `samples` entries of
each file name readable files (stat only, nothing decoded); a prepared dataset folder holds a dataset. What is checked
here is checked again, sample by sample, while training: this only refuses what cannot work at all.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Optional, Sequence

from etils import epath

from tlv_jax.data.bad_samples import BadSample
from tlv_jax.data.errors import DataError
from tlv_jax.data.loader_config import TrainLoaderConfig
from tlv_jax.data.records import check_record_video, load_annotations

log = logging.getLogger(__name__)


def check_data(config: TrainLoaderConfig, samples: int = 64) -> Optional[int]:
    """Raises `DataError` (one line naming the file or folder) when the sources cannot work. Returns the number of
    annotated samples (None for prepared datasets), so that the files need not be parsed again to count them."""
    if config.prepared_dirs:
        for path in config.prepared_dirs:
            _check_prepared(path)
        return None
    total = 0
    for path, video_dir in config.annotation_sources:
        records = load_annotations(path)
        if not records:
            raise DataError(f"annotation file {path} holds no samples")
        if not os.path.isdir(video_dir):
            what = "is not a folder" if os.path.lexists(video_dir) else "does not exist"
            raise DataError(f"video folder {video_dir} (for {path}) {what}")
        _check_videos(path, records[:samples], video_dir)
        total += len(records)
    return total


def _check_videos(path: str, records: Sequence, video_dir: str) -> None:
    """Half or more of the checked entries without a readable video: a wrong folder or paths, not a few bad files."""
    reasons: collections.Counter[str] = collections.Counter()
    example = ""
    for record in records:
        try:
            check_record_video(record, video_dir)
        except BadSample as e:
            reasons[e.reason] += 1
            example = example or e.detail
    bad = sum(reasons.values())
    if not bad:
        return
    counts = ", ".join(f"{r}={n}" for r, n in reasons.items())
    message = (f"{bad} of the first {len(records)} videos of {path} cannot be read under {video_dir} ({counts}), "
               f"e.g. {example}")
    if 2 * bad >= len(records):
        raise DataError(message)
    log.warning("%s; they will be skipped and counted", message)


def _check_prepared(path: str) -> None:
    if not epath.Path(path).is_dir():  # a gs:// bucket on a pod, like the loader reads it
        raise DataError(f"prepared dataset folder {path} does not exist")
    from tlv_jax.data.tfds_builder import resolve_prepared_dir  # (TFDS is imported only for prepared sources)

    try:
        directory = resolve_prepared_dir(path)
    except ValueError as e:
        raise DataError(str(e)) from None
    if not any(epath.Path(directory).glob("*-train.array_record*")):
        raise DataError(f"prepared dataset {directory} has no train split files (*-train.array_record*): "
                        "was `python -m tlv_jax.data.prepare` interrupted?")
