"""The run directory. The trainer writes its config, per-process logs, metrics and the final export with local file
operations, so a URL such as `gs://bucket/run` is refused with one line instead of silently becoming a local folder
named `gs:` (lost with the machine). A bucket mounted with gcsfuse is a local path and works."""

from __future__ import annotations

from pathlib import Path


def local_workdir(workdir: str | Path) -> Path:
    """`workdir` as an absolute local path; a URL is a ValueError naming it."""
    if "://" in str(workdir):
        raise ValueError(f"--workdir {workdir}: URLs are not supported as run directories yet (the config, logs, "
                         "metrics and export are written with local file operations); use a local path or a "
                         "gcsfuse mount of the bucket")
    return Path(workdir).absolute()
