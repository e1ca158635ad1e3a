"""The run directory: a local path, or a URL such as `gs://bucket/run` (anything `etils.epath` opens).

Orbax writes checkpoints to a URL natively, so `checkpoints/` lives there. Everything else a run writes with local
file operations (config.json, metrics.jsonl, TensorBoard events, the exported model) is staged in a local folder and
copied up after every checkpoint and at the end, so the bucket always holds the log up to the last saved step. A run
resumed on a fresh machine (a recreated TPU after a preemption) first copies the config and the metrics log down, so
the log continues where it was.

The staging folder is `$TLV_JAX_STAGING/<scheme>/<bucket>/<path>` (default `~/.cache/tlv_jax/runs`). Reading or
writing a bucket needs its filesystem package on the machine (`gcsfs` for gs://, which `launch/tpu_pod.sh` installs).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional, Union

from etils import epath

from tlv_jax.paths import is_url

Dir = Union[Path, epath.Path]

# What the trainer writes locally, relative to the run directory: the log (copied up after every checkpoint) and
# the export (copied up once, at the end).
LOGS = ("config.json", "metrics.jsonl", "tensorboard")
EXPORTS = ("model", "export", "adapter")  # adapter: a LoRA run's PEFT adapters
# What a resumed run needs back on a fresh machine (the model and export are rewritten at the end).
PULLED = ("config.json", "metrics.jsonl")


def staging_root() -> Path:
    return Path(os.environ.get("TLV_JAX_STAGING") or Path.home() / ".cache" / "tlv_jax" / "runs")


@dataclasses.dataclass(frozen=True)
class Workdir:
    """`local`: where files are written with local operations; `remote`: the URL they are copied up to (None for a
    local run, where `local` is the run directory itself)."""

    local: Path
    remote: Optional[epath.Path] = None

    @classmethod
    def of(cls, workdir: str | os.PathLike) -> "Workdir":
        """The run directory named by `--workdir`: an absolute local path, or a URL with its staging folder."""
        if not is_url(workdir):
            return cls(Path(workdir).absolute())
        scheme, _, rest = str(workdir).rstrip("/").partition("://")
        if not rest.strip("/"):
            raise ValueError(f"--workdir {workdir}: the URL names no bucket")
        return cls(staging_root() / scheme / rest.strip("/"), remote_path(str(workdir).rstrip("/")))

    @property
    def name(self) -> str:
        """How messages name the run directory (the URL for a remote run)."""
        return str(self.remote if self.remote is not None else self.local)

    @property
    def checkpoints(self) -> Dir:
        return (self.remote if self.remote is not None else self.local) / "checkpoints"

    def pull(self) -> None:
        """Copies the config and metrics log of an earlier attempt down when this machine has none."""
        self.local.mkdir(parents=True, exist_ok=True)
        if self.remote is None:
            return
        for name in PULLED:
            src, dst = self.remote / name, self.local / name
            if not dst.exists() and src.exists():
                _copy_file(src, dst)

    def push(self, names: tuple[str, ...] = LOGS) -> None:
        """Copies the staged `names` (those that exist) up to the URL; nothing for a local run. Files are
        rewritten whole (the log is small; the export is pushed once)."""
        if self.remote is None:
            return
        for name in names:
            for src in _files(self.local / name):
                _copy_file(src, self.remote / src.relative_to(self.local).as_posix())


def remote_path(url: str) -> epath.Path:
    """The epath of a run URL (one place, so tests can point a URL at a local folder)."""
    return epath.Path(url)


def local_only(workdir: str | os.PathLike, what: str) -> Path:
    """`workdir` as an absolute local path for `what` (the demo) that only runs locally; a URL is a ValueError."""
    if is_url(workdir):
        raise ValueError(f"--workdir {workdir}: {what} runs in a local directory; the trainer takes URLs")
    return Path(workdir).absolute()


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
    elif path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.is_file())


def _copy_file(src: Dir, dst: Dir) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as r, dst.open("wb") as w:
        shutil.copyfileobj(r, w, length=16 << 20)
