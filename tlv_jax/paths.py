"""Local paths versus URLs (`gs://bucket/...`, anything `etils.epath` opens): the one test every module that accepts
either uses to decide whether local file operations apply."""

from __future__ import annotations

import os


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)
