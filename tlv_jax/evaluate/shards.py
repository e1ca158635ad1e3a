"""Predictions split over processes: each process appends only to its own shard file, readers merge every shard.

One process writes `predictions.jsonl`; process i of n writes `predictions-0000i-of-0000n.jsonl`. A rerun reads all
shards in the folder, whatever process count wrote them, so it resumes after a crash of any process and with another
process count. Videos are given to processes by their position in the full question list (never by what is left to
do), so every process agrees on the split without talking to the others.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence, TypeVar

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
T = TypeVar("T")


def shard_path(out: Path, index: int, count: int) -> Path:
    """The file process `index` of `count` appends its records to."""
    return out / PREDICTIONS if count == 1 else out / f"predictions-{index:05d}-of-{count:05d}.jsonl"


def shard_files(out: Path) -> list[Path]:
    """Every predictions shard in `out`, in name order."""
    return sorted(p for p in out.glob("predictions*.jsonl") if p.is_file())


def mine(items: Sequence[T], index: int, count: int) -> list[T]:
    """Process `index`'s share of `items` (round robin, so long and short videos spread evenly)."""
    return list(items[index::count])


def read_predictions(path: Path, repair: bool = True) -> dict[str, dict]:
    """Records of one shard, by id (a later line wins). A last line cut short by a crash is ignored, and cut from
    the file when `repair` (only a shard's own writer repairs it: another process may be appending to it)."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        log.warning("%s: %s an incomplete last line", path, "dropping" if repair else "ignoring")
        if repair:
            path.write_bytes(complete)
    records = {}
    for number, line in enumerate(complete.decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON line ({err})") from None
            records[record["id"]] = record
    return records


def read_all(out: Path, own: Path | None = None) -> dict[str, dict]:
    """Every shard's records merged by id: an answered record ("ok") beats a failure from another shard (a video
    that failed in one run and was answered in a rerun by another process); `own` is repaired, the others only read.
    """
    merged: dict[str, dict] = {}
    for path in shard_files(out):
        for qid, record in read_predictions(path, repair=path == own).items():
            if merged.get(qid, {}).get("status") != "ok" or record["status"] == "ok":
                merged[qid] = record
    return merged
