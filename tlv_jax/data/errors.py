"""The one error type for data a run cannot use at all, so the command line can print it as one line and stop."""

from __future__ import annotations


class DataError(ValueError):
    """The configured data cannot work (a missing folder, an unparsable annotation file, no usable sample); the
    message is one line naming the file or folder."""
