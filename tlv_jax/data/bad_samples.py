"""Accounting of skipped training samples: counted by reason, logged once per sample id, fatal above a fraction.

Workers never raise for bad input: they turn it into a `BadSample` marker that leaves the worker as its own element,
as soon as it is met, for the main process, where one `BadSampleCounter` (part of the iterator state) counts it.
Nothing is dropped silently, and a stream of nothing but bad samples stops after `min_samples` of them.

The video reasons are also the `code` of `frames.VideoDecodeError`, so a reader's diagnosis becomes the reason as is.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

from tlv_jax.data.errors import DataError

log = logging.getLogger(__name__)

MISSING_VIDEO = "missing_video"  # no such file (or the entry names no video)
NOT_A_FILE = "not_a_regular_file"  # e.g. a directory named x.mp4
UNRESOLVABLE_PATH = "unresolvable_path"  # a symlink loop, a file where a folder should be, a folder we may not enter
UNREADABLE_CONTAINER = "unreadable_container"  # there, but no reader opens it as a video: empty, noise, index lost
NO_VIDEO_STREAM = "no_video_stream"  # a valid container without video (e.g. audio only)
UNSUPPORTED_CODEC = "unsupported_codec"  # a video stream no decoder here can decode
DECODE_ERROR = "decode_error"  # opens, but its frames do not decode (truncated or corrupt data)
VIDEO_REASONS = (MISSING_VIDEO, NOT_A_FILE, UNRESOLVABLE_PATH, UNREADABLE_CONTAINER, NO_VIDEO_STREAM,
                 UNSUPPORTED_CODEC, DECODE_ERROR)
NO_IMAGE = "no_image"  # no '<image>' placeholder in the conversation
MALFORMED = "malformed_conversation"
TOO_LONG = "too_long"  # longer than the largest length bucket once the video tokens are inserted
MISMATCH = "tokenization_mismatch"  # the original label algorithm would have masked the whole sample
REASONS = (*VIDEO_REASONS, NO_IMAGE, MALFORMED, TOO_LONG, MISMATCH)


class BadSample(Exception):
    """Raised inside sample processing for unusable input; caught and turned into a marker before leaving a worker."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown bad-sample reason {reason!r}; expected one of {REASONS}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TooManyBadSamples(DataError):
    """The fraction of skipped samples exceeded the configured limit: the data (or the paths) are wrong."""


@dataclasses.dataclass
class BadSampleCounter:
    """Counts good and bad samples; `record` logs a sample id the first time it is seen bad and raises
    `TooManyBadSamples` once at least `min_samples` were seen and the bad fraction exceeds `max_fraction`. The
    error is one line: the totals by reason and the first example of each (a log may hide the warnings)."""

    max_fraction: float = 0.01
    min_samples: int = 500
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    good: int = 0
    _logged: set[str] = dataclasses.field(default_factory=set, repr=False)
    _examples: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    @property
    def seen(self) -> int:
        return self.good + self.bad

    def record(self, reason: str, sample_id: str, detail: str = "") -> None:
        if reason not in self.counts:
            raise ValueError(f"unknown bad-sample reason {reason!r}; expected one of {REASONS}")
        self.counts[reason] += 1
        self._examples.setdefault(reason, " ".join(f"{sample_id}: {detail}".split()))
        if sample_id not in self._logged:
            self._logged.add(sample_id)
            log.warning("skipping sample %s (%s): %s", sample_id, reason, detail)
        self._check()

    def add_good(self, n: int = 1) -> None:
        self.good += n
        self._check()

    def _check(self) -> None:
        if self.seen >= self.min_samples and self.bad > self.max_fraction * self.seen:
            examples = "; ".join(f"{r}: {e}" for r, e in self._examples.items())
            raise TooManyBadSamples(
                f"{self.bad} of {self.seen} samples were unusable ({self.bad / self.seen:.2%} > "
                f"{self.max_fraction:.2%}): {self.summary()}. Check the annotation files and video folders "
                f"(first of each: {examples or 'none'})")

    def summary(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in self.counts.items() if n) or "none"
        return f"{self.good} good, {self.bad} skipped ({reasons})"

    def get_state(self) -> dict[str, Any]:
        """JSON-able totals, saved with the data iterator state."""
        return {"good": self.good, **{f"bad_{r}": n for r, n in self.counts.items()}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Totals from `get_state`; a reason the state does not know (saved before it existed) starts at 0."""
        self.good = int(state["good"])
        self.counts = {r: int(state.get(f"bad_{r}", 0)) for r in REASONS}

    def merge(self, other: "BadSampleCounter") -> None:
        """Adds another counter's totals (e.g. from another process or a `prepare` run)."""
        self.good += other.good
        for reason, n in other.counts.items():
            self.counts[reason] += n
        self._check()
